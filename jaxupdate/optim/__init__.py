"""torch.optim's optimizers, one module each, as optax transformations."""

from jaxupdate.optim.adadelta import adadelta
from jaxupdate.optim.adagrad import adagrad
from jaxupdate.optim.adam import adam, adamw
from jaxupdate.optim.adamax import adamax
from jaxupdate.optim.asgd import asgd
from jaxupdate.optim.nadam import nadam
from jaxupdate.optim.radam import radam
from jaxupdate.optim.rmsprop import rmsprop
from jaxupdate.optim.rprop import rprop
from jaxupdate.optim.sgd import sgd

__all__ = [
    "adadelta",
    "adagrad",
    "adam",
    "adamax",
    "adamw",
    "asgd",
    "nadam",
    "radam",
    "rmsprop",
    "rprop",
    "sgd",
]

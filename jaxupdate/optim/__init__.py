"""torch.optim's optimizers, one module each, as optax transformations."""

from jaxupdate.optim.adadelta import adadelta
from jaxupdate.optim.adafactor import adafactor
from jaxupdate.optim.adagrad import adagrad
from jaxupdate.optim.adam import adam, adamw
from jaxupdate.optim.adamax import adamax
from jaxupdate.optim.asgd import asgd
from jaxupdate.optim.lbfgs import lbfgs
from jaxupdate.optim.muon import muon
from jaxupdate.optim.nadam import nadam
from jaxupdate.optim.radam import radam
from jaxupdate.optim.rmsprop import rmsprop
from jaxupdate.optim.rprop import rprop
from jaxupdate.optim.sgd import sgd
from jaxupdate.optim.sparse_adam import sparse_adam

__all__ = [
    "adadelta",
    "adafactor",
    "adagrad",
    "adam",
    "adamax",
    "adamw",
    "asgd",
    "lbfgs",
    "muon",
    "nadam",
    "radam",
    "rmsprop",
    "rprop",
    "sgd",
    "sparse_adam",
]

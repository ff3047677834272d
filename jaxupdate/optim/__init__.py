"""torch.optim's optimizers, one module each, as optax transformations."""

from jaxupdate.optim.adam import adam, adamw
from jaxupdate.optim.rmsprop import rmsprop
from jaxupdate.optim.sgd import sgd

__all__ = ["adam", "adamw", "rmsprop", "sgd"]

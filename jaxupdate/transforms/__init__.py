"""Reusable building blocks (optax ``GradientTransformation``s) that the optimizers chain."""

from jaxupdate.transforms.common import (
    CountState,
    add_weight_decay,
    complex_as_real,
    decoupled_weight_decay,
    maximize,
    scale_by_learning_rate,
)
from jaxupdate.transforms.moments import (
    TorchAdamState,
    TorchRMSState,
    ema_square,
    lerp,
    scale_by_torch_adam,
    scale_by_torch_rms,
)
from jaxupdate.transforms.momentum import TorchMomentumState, torch_momentum

__all__ = [
    "CountState",
    "TorchAdamState",
    "TorchMomentumState",
    "TorchRMSState",
    "add_weight_decay",
    "complex_as_real",
    "decoupled_weight_decay",
    "ema_square",
    "lerp",
    "maximize",
    "scale_by_learning_rate",
    "scale_by_torch_adam",
    "scale_by_torch_rms",
    "torch_momentum",
]

"""Reusable building blocks (optax ``GradientTransformation``s) that the optimizers chain."""

from jaxupdate.transforms.adafactor import (
    TorchAdafactorState,
    scale_by_torch_adafactor_step,
    scale_by_torch_factored_rms,
)
from jaxupdate.transforms.adaptive import (
    TorchAdadeltaState,
    TorchAdagradState,
    TorchAdamaxState,
    TorchRpropState,
    addcmul,
    scale_by_torch_adadelta,
    torch_adagrad,
    torch_adamax,
    torch_rprop,
)
from jaxupdate.transforms.asgd import TorchASGDState, torch_asgd
from jaxupdate.transforms.checks import reject_complex, require_matrices
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
from jaxupdate.transforms.muon import (
    TorchMuonState,
    scale_by_muon_lr,
    scale_by_torch_muon,
    zeropower_via_newtonschulz,
)
from jaxupdate.transforms.nadam_radam import (
    TorchNAdamState,
    TorchRAdamState,
    radam_rho,
    scale_by_torch_nadam,
    scale_by_torch_radam,
)

__all__ = [
    "TorchAdafactorState",
    "TorchMuonState",
    "reject_complex",
    "require_matrices",
    "scale_by_muon_lr",
    "scale_by_torch_adafactor_step",
    "scale_by_torch_factored_rms",
    "scale_by_torch_muon",
    "zeropower_via_newtonschulz",
    "TorchASGDState",
    "TorchNAdamState",
    "TorchRAdamState",
    "radam_rho",
    "scale_by_torch_nadam",
    "scale_by_torch_radam",
    "torch_asgd",
    "TorchAdadeltaState",
    "TorchAdagradState",
    "TorchAdamaxState",
    "TorchRpropState",
    "addcmul",
    "scale_by_torch_adadelta",
    "torch_adagrad",
    "torch_adamax",
    "torch_rprop",
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

"""Reusable building blocks (optax ``GradientTransformation``s) that the optimizers chain.

Names say what a block returns:

- ``scale_by_torch_<name>``: a direction, without the learning rate (``scale_by_torch_adam``,
  ``scale_by_torch_rms``, ``scale_by_torch_momentum``, ``scale_by_torch_adadelta``, ...).
  Follow it with ``scale_by_learning_rate(lr)`` (or an update block that takes a direction).
- ``torch_<name>_update``: the update itself, ``-lr`` (and decoupled decay, where torch
  applies it inside the step) included, for ``apply_updates`` to add (``torch_adam_update``,
  ``torch_nadam_update``, ``torch_adagrad_update``, ...). These exist where torch folds
  ``lr`` into its last kernel (``addcdiv_(..., value=-lr / bc1)``), whose rounding a direction
  scaled afterwards cannot reproduce.
- gradient and update modifiers keep optax's names: ``maximize``, ``add_weight_decay`` (on
  the gradient), ``scale_by_learning_rate`` (direction to update), ``decoupled_weight_decay``
  (on the update).

One step count per optimizer: :func:`counted_chain` (what every optimizer is built with)
keeps torch's ``step`` as the last element of its state and passes it to each block as
``update(..., count=)``; the blocks keep no count of their own. A block used alone in an
``optax.chain`` keeps one only when it needs it (a schedule, a bias correction), as optax's
``scale_by_learning_rate`` does. Read it with :func:`step_count`.

The old names ``scale_by_torch_nadam``, ``scale_by_torch_radam``, ``torch_adagrad``,
``torch_adamax``, ``torch_rprop``, ``torch_asgd``, ``torch_momentum``, ``scale_by_muon_lr`` and
``scale_by_torch_adafactor_step`` remain as deprecated aliases (a ``DeprecationWarning``).
"""

import functools as _functools

from jaxupdate.transforms.adafactor import (
    TorchAdafactorState,
    scale_by_torch_factored_rms,
    torch_adafactor_update,
)
from jaxupdate.transforms.adaptive import (
    TorchAdadeltaState,
    TorchAdagradState,
    TorchAdamaxState,
    TorchRpropState,
    addcmul,
    scale_by_torch_adadelta,
    torch_adagrad_update,
    torch_adamax_update,
    torch_rprop_update,
)
from jaxupdate.transforms.asgd import TorchASGDState, torch_asgd_update
from jaxupdate.transforms.checks import reject_complex, require_matrices
from jaxupdate.transforms.common import (
    CountState,
    add_weight_decay,
    complex_as_real,
    counted_chain,
    decoupled_weight_decay,
    maximize,
    scale_by_learning_rate,
    step_count,
    uncounted,
    with_step_count,
)
from jaxupdate.transforms.common import warn_deprecated as _warn_deprecated
from jaxupdate.transforms.moments import (
    TorchAdamState,
    TorchRMSState,
    ema_square,
    lerp,
    scale_by_torch_adam,
    scale_by_torch_rms,
    torch_adam_update,
    torch_rmsprop_update,
)
from jaxupdate.transforms.momentum import TorchMomentumState, scale_by_torch_momentum
from jaxupdate.transforms.muon import (
    TorchMuonState,
    scale_by_torch_muon,
    torch_muon_update,
    zeropower_via_newtonschulz,
)
from jaxupdate.transforms.nadam_radam import (
    TorchNAdamState,
    TorchRAdamState,
    radam_rho,
    torch_nadam_update,
    torch_radam_update,
)


def _renamed(new, old: str):
    """``new`` under its old name, warning once per call that the name is deprecated."""

    @_functools.wraps(new)
    def alias(*args, **kwargs):
        _warn_deprecated(f"jaxupdate.transforms.{old}", new.__name__)
        return new(*args, **kwargs)

    alias.__name__ = alias.__qualname__ = old
    return alias


# deprecated names (see the module docstring): each now says what it returns
scale_by_torch_nadam = _renamed(torch_nadam_update, "scale_by_torch_nadam")
scale_by_torch_radam = _renamed(torch_radam_update, "scale_by_torch_radam")
torch_adagrad = _renamed(torch_adagrad_update, "torch_adagrad")
torch_adamax = _renamed(torch_adamax_update, "torch_adamax")
torch_rprop = _renamed(torch_rprop_update, "torch_rprop")
torch_asgd = _renamed(torch_asgd_update, "torch_asgd")
torch_momentum = _renamed(scale_by_torch_momentum, "torch_momentum")
scale_by_muon_lr = _renamed(torch_muon_update, "scale_by_muon_lr")
scale_by_torch_adafactor_step = _renamed(torch_adafactor_update, "scale_by_torch_adafactor_step")

__all__ = [
    # states
    "CountState",
    "TorchASGDState",
    "TorchAdadeltaState",
    "TorchAdafactorState",
    "TorchAdagradState",
    "TorchAdamState",
    "TorchAdamaxState",
    "TorchMomentumState",
    "TorchMuonState",
    "TorchNAdamState",
    "TorchRAdamState",
    "TorchRMSState",
    "TorchRpropState",
    # gradient / update modifiers
    "add_weight_decay",
    "complex_as_real",
    "counted_chain",
    "decoupled_weight_decay",
    "maximize",
    "reject_complex",
    "require_matrices",
    "scale_by_learning_rate",
    "step_count",
    "uncounted",
    "with_step_count",
    # directions (no lr)
    "scale_by_torch_adadelta",
    "scale_by_torch_adam",
    "scale_by_torch_factored_rms",
    "scale_by_torch_momentum",
    "scale_by_torch_muon",
    "scale_by_torch_rms",
    # updates (lr included)
    "torch_adafactor_update",
    "torch_adagrad_update",
    "torch_adam_update",
    "torch_adamax_update",
    "torch_asgd_update",
    "torch_muon_update",
    "torch_nadam_update",
    "torch_radam_update",
    "torch_rmsprop_update",
    "torch_rprop_update",
    # numerics
    "addcmul",
    "ema_square",
    "lerp",
    "radam_rho",
    "zeropower_via_newtonschulz",
    # deprecated aliases
    "scale_by_muon_lr",
    "scale_by_torch_adafactor_step",
    "scale_by_torch_nadam",
    "scale_by_torch_radam",
    "torch_adagrad",
    "torch_adamax",
    "torch_asgd",
    "torch_momentum",
    "torch_rprop",
]

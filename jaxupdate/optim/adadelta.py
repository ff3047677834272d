"""Adadelta with torch's eps inside both square roots, lr, weight decay and maximize."""

from __future__ import annotations

import optax

from jaxupdate import transforms as T
from jaxupdate._described import torch_optimizer
from jaxupdate._hparams import is_static_zero, normalize
from jaxupdate.optim._base import assemble, check, check_lr, check_nonneg
from jaxupdate.transforms.adaptive import scale_by_torch_adadelta


@torch_optimizer(
    "Adadelta", ("step", "square_avg", "acc_delta"), state=T.TorchAdadeltaState
)
def adadelta(
    lr=1.0,
    rho=0.9,
    eps=1e-6,
    weight_decay=0,
    *,
    maximize: bool = False,
) -> optax.GradientTransformationExtraArgs:
    r"""torch.optim.Adadelta as a pure transformation.

    Algorithm (torch's ``_single_tensor_adadelta``), for each step::

        initialize: square_avg = 0, acc_delta = 0
        g = -grad if maximize else grad
        if weight_decay != 0: g = g + weight_decay * param
        square_avg = rho * square_avg + (1 - rho) * g * g
        delta = sqrt(acc_delta + eps) / sqrt(square_avg + eps) * g
        acc_delta = rho * acc_delta + (1 - rho) * delta * delta
        param = param - lr * delta

    Complex parameters are treated as pairs of reals (torch's ``view_as_real``).

    Args (torch's names, order and defaults; ``params``, ``foreach``, ``capturable`` and
    ``differentiable`` do not apply); each float may be a 1-element array or a schedule of
    ``count`` (updates already applied):
      lr: scale of the delta, default ``1.0``.
      rho: decay of both running averages, in ``[0, 1]``, default ``0.9``.
      eps: added inside both square roots, default ``1e-6``.
      weight_decay: coupled L2 penalty added to the gradient, default ``0``.
      maximize: maximize the objective, default ``False``.

    Example::

        >>> import jax.numpy as jnp
        >>> from jaxupdate.optim.adadelta import adadelta
        >>> tx = adadelta(lr=1.0, rho=0.9)
        >>> state = tx.init({"w": jnp.ones(2)})
    """
    lr = check_lr(lr)
    rho_n = normalize(rho, "rho")
    check(rho_n, lambda v: 0.0 <= v <= 1.0, f"Invalid rho value: {rho}")
    eps = check_nonneg(eps, "eps", "epsilon")
    weight_decay = check_nonneg(weight_decay, "weight_decay", "weight_decay")
    return assemble(
        T.maximize() if maximize else None,
        None if is_static_zero(weight_decay) else T.add_weight_decay(weight_decay),
        scale_by_torch_adadelta(rho_n, eps),
        T.scale_by_learning_rate(lr),
    )

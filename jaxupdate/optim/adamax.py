"""Adamax (Adam with the infinity norm) with torch's eps placement, weight decay and maximize."""

from __future__ import annotations

import optax

from jaxupdate import transforms as T
from jaxupdate._described import torch_optimizer
from jaxupdate._hparams import is_static_zero
from jaxupdate.optim._base import assemble, check_betas, check_lr, check_nonneg
from jaxupdate.transforms.adaptive import torch_adamax_update


@torch_optimizer("Adamax", ("step", "exp_avg", "exp_inf"), state=T.TorchAdamaxState)
def adamax(
    lr=2e-3,
    betas=(0.9, 0.999),
    eps=1e-8,
    weight_decay=0,
    *,
    maximize: bool = False,
) -> optax.GradientTransformationExtraArgs:
    r"""torch.optim.Adamax as a pure transformation.

    Algorithm (torch's ``_single_tensor_adamax``), for each step ``t = 1, 2, ...``::

        initialize: exp_avg = 0, exp_inf = 0
        g = -grad if maximize else grad
        if weight_decay != 0: g = g + weight_decay * param
        exp_avg = lerp(exp_avg, g, 1 - beta1)              # exp_avg + (1 - beta1) * (g - exp_avg)
        exp_inf = max(beta2 * exp_inf, |g| + eps)          # eps inside the max
        param = param - lr / (1 - beta1**t) * exp_avg / exp_inf

    Complex parameters are treated as pairs of reals (torch 2.13's ``view_as_real``): ``|g|``
    and the maximum act on the real and imaginary parts separately, not on the modulus.

    Args (torch's names, order and defaults; ``params``, ``foreach``, ``capturable`` and
    ``differentiable`` do not apply); each float may be a 1-element array or a schedule of
    ``count`` (updates already applied):
      lr: learning rate, default ``2e-3``.
      betas: ``(beta1, beta2)``, each in ``[0, 1)``, default ``(0.9, 0.999)``.
      eps: added to ``|g|`` inside the maximum, default ``1e-8``.
      weight_decay: coupled L2 penalty added to the gradient, default ``0``.
      maximize: maximize the objective, default ``False``.

    Example::

        >>> import jax.numpy as jnp
        >>> from jaxupdate.optim.adamax import adamax
        >>> tx = adamax(lr=2e-3)
        >>> state = tx.init({"w": jnp.ones(2)})
    """
    lr = check_lr(lr)
    eps = check_nonneg(eps, "eps", "epsilon")
    betas_n = check_betas(betas, same_kind=False)  # torch's Adamax accepts float + tensor
    weight_decay = check_nonneg(weight_decay, "weight_decay", "weight_decay")
    return assemble(
        T.maximize() if maximize else None,
        None if is_static_zero(weight_decay) else T.add_weight_decay(weight_decay),
        torch_adamax_update(lr, betas_n, eps),
    )

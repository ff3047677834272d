"""RMSprop with torch's eps outside the square root, centering, momentum and weight decay."""

from __future__ import annotations

import optax

from jaxupdate import transforms as T
from jaxupdate._described import torch_optimizer
from jaxupdate._hparams import is_static_zero
from jaxupdate.fused._specs import rmsprop_spec, with_fused
from jaxupdate.optim._base import assemble, check_lr, check_nonneg


@torch_optimizer(
    "RMSprop", ("step", "square_avg", "momentum_buffer", "grad_avg"), state=T.TorchRMSState
)
def rmsprop(
    lr=1e-2,
    alpha=0.99,
    eps=1e-8,
    weight_decay=0,
    momentum=0,
    centered: bool = False,
    maximize: bool = False,
    *,
    fused: bool = False,
) -> optax.GradientTransformationExtraArgs:
    r"""torch.optim.RMSprop as a pure transformation.

    Algorithm (torch's ``_single_tensor_rmsprop``), for each step::

        g = -grad if maximize else grad
        if weight_decay != 0: g = g + weight_decay * param
        v = alpha * v + (1 - alpha) * g * g
        if centered:
            m = lerp(m, g, 1 - alpha)
            avg = sqrt(v - m * m) + eps
        else:
            avg = sqrt(v) + eps                      # eps outside the sqrt (optax: inside)
        if momentum > 0:
            buf = momentum * buf + g / avg           # buf starts at zero
            param = param - lr * buf
        else:
            param = param - lr * g / avg

    Args (torch's names, order and defaults; ``params``, ``foreach``, ``capturable`` and
    ``differentiable`` do not apply): ``lr=1e-2``, ``alpha=0.99``, ``eps=1e-8``,
    ``weight_decay=0``, ``momentum=0``, ``centered=False``, ``maximize=False``.
    Each float may also be a 1-element array or a schedule. Keyword ``fused=False``: torch's
    switch; the same transformation, run by :func:`jaxupdate.step` as one in-place pass over
    every leaf on CPU (numba kernel; ``pip install 'jaxupdate[fused]'``), XLA's fusion on GPU.

    Example::

        >>> import jax.numpy as jnp, jaxupdate as ju
        >>> tx = ju.rmsprop(lr=1e-2, momentum=0.9, centered=True)
        >>> state = tx.init({"w": jnp.ones(2)})
    """
    lr = check_lr(lr)
    eps = check_nonneg(eps, "eps", "epsilon")
    momentum = check_nonneg(momentum, "momentum", "momentum")
    weight_decay = check_nonneg(weight_decay, "weight_decay", "weight_decay")
    alpha = check_nonneg(alpha, "alpha", "alpha")
    tx = assemble(
        T.maximize() if maximize else None,
        None if is_static_zero(weight_decay) else T.add_weight_decay(weight_decay),
        # without momentum torch ends with param.addcdiv_(grad, avg, value=-lr): lr goes inside
        T.torch_rmsprop_update(lr, alpha, eps, centered) if is_static_zero(momentum)
        else T.scale_by_torch_rms(alpha, eps, centered),
        # torch: `if momentum > 0` with a zero-initialised buffer, no first-step copy
        None if is_static_zero(momentum)
        else T.scale_by_torch_momentum(momentum, first_step_copies=False),
        None if is_static_zero(momentum) else T.scale_by_learning_rate(lr),
    )
    spec = rmsprop_spec(lr, alpha, eps, weight_decay, momentum, centered, maximize)
    return with_fused(fused, spec, tx)

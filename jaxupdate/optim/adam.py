"""Adam (and AdamW) with torch's amsgrad, coupled/decoupled weight decay and maximize."""

from __future__ import annotations

import optax

from jaxupdate import transforms as T
from jaxupdate._described import torch_optimizer
from jaxupdate._hparams import is_static_zero
from jaxupdate.fused._specs import adam_spec, with_fused
from jaxupdate.optim._base import assemble, check_adam_hparams

# torch's Adam and AdamW keep the same per-parameter state
_ADAM_KEYS = ("step", "exp_avg", "exp_avg_sq", "max_exp_avg_sq")


def _adam_chain(lr, betas, eps, weight_decay, amsgrad, maximize, decoupled_weight_decay, fused):
    spec = adam_spec(lr, betas, eps, weight_decay, amsgrad, maximize, decoupled_weight_decay)
    lr, betas, eps, weight_decay = check_adam_hparams(lr, betas, eps, weight_decay)
    decay = not is_static_zero(weight_decay)
    return with_fused(fused, spec, assemble(
        T.maximize() if maximize else None,
        T.add_weight_decay(weight_decay) if decay and not decoupled_weight_decay else None,
        T.torch_adam_update(lr, betas, eps, amsgrad),
        T.decoupled_weight_decay(lr, weight_decay) if decay and decoupled_weight_decay else None,
    ))


@torch_optimizer("Adam", _ADAM_KEYS, state=T.TorchAdamState)
def adam(
    lr=1e-3,
    betas=(0.9, 0.999),
    eps=1e-8,
    weight_decay=0,
    amsgrad: bool = False,
    *,
    maximize: bool = False,
    decoupled_weight_decay: bool = False,
    fused: bool = False,
) -> optax.GradientTransformationExtraArgs:
    r"""torch.optim.Adam as a pure transformation.

    Algorithm (torch's ``_single_tensor_adam``), for each step ``t = 1, 2, ...``::

        g = -grad if maximize else grad
        if weight_decay != 0:
            if decoupled_weight_decay: param = param * (1 - lr * weight_decay)
            else:                      g = g + weight_decay * param
        m = lerp(m, g, 1 - beta1)                       # m + (1 - beta1) * (g - m)
        v = beta2 * v + (1 - beta2) * g * g
        if amsgrad: v_max = max(v_max, v)               # max of the raw v, as torch
        denom = sqrt(v_max if amsgrad else v) / sqrt(1 - beta2**t) + eps
        param = param - lr / (1 - beta1**t) * m / denom

    Differs from ``optax.amsgrad``, which takes the maximum after bias correction.

    Args (torch's names, order and defaults; ``params``, ``foreach``, ``capturable`` and
    ``differentiable`` do not apply):
      lr: learning rate, default ``1e-3``; a float, 1-element array or schedule.
      betas: ``(beta1, beta2)``, default ``(0.9, 0.999)``; both numbers or both arrays
        (schedules allowed).
      eps: added to the denominator, outside the square root, default ``1e-8``.
      weight_decay: default ``0``; L2 added to the gradient unless ``decoupled_weight_decay``.
      amsgrad: use the running maximum of the second moment, default ``False``.
      maximize: maximize the objective, default ``False``.
      decoupled_weight_decay: AdamW-style decay ``param *= 1 - lr * weight_decay``.
      fused: torch's switch: the same transformation, run by :func:`jaxupdate.step` as one
        in-place pass over every leaf on CPU (numba kernel; ``pip install 'jaxupdate[fused]'``),
        XLA's own fusion on GPU. Same numbers; not differentiable through ``ju.step``.

    Example::

        >>> import jax, jax.numpy as jnp, jaxupdate as ju
        >>> params = {"w": jnp.ones(3)}
        >>> tx = ju.adam(lr=1e-3)
        >>> state = tx.init(params)
        >>> grads = jax.grad(lambda p: jnp.sum(p["w"] ** 2))(params)
        >>> updates, state = tx.update(grads, state, params)
        >>> params = ju.apply_updates(params, updates)   # each entry 1 - 1e-3
    """
    return _adam_chain(
        lr, betas, eps, weight_decay, amsgrad, maximize, decoupled_weight_decay, fused
    )


@torch_optimizer("AdamW", _ADAM_KEYS, state=T.TorchAdamState)
def adamw(
    lr=1e-3,
    betas=(0.9, 0.999),
    eps=1e-8,
    weight_decay=1e-2,
    amsgrad: bool = False,
    *,
    maximize: bool = False,
    fused: bool = False,
) -> optax.GradientTransformationExtraArgs:
    r"""torch.optim.AdamW: Adam with decoupled weight decay (torch's default ``1e-2``).

    Algorithm: as :func:`adam` with ``decoupled_weight_decay=True``::

        param = param * (1 - lr * weight_decay)
        ... Adam step ...

    Mind the default: torch's AdamW decays by ``1e-2``, optax's ``adamw`` by ``1e-4``.

    Args: ``lr=1e-3``, ``betas=(0.9, 0.999)``, ``eps=1e-8``, ``weight_decay=1e-2``,
    ``amsgrad=False``, keyword ``maximize=False``, as in torch; ``fused=False`` as in
    :func:`adam`.

    Example::

        >>> import jax.numpy as jnp, jaxupdate as ju
        >>> tx = ju.adamw(lr=1e-3, weight_decay=0.01)
        >>> state = tx.init({"w": jnp.ones(2)})
    """
    return _adam_chain(lr, betas, eps, weight_decay, amsgrad, maximize, True, fused)

"""NAdam (and NAdamW) with torch's momentum_decay schedule, weight decay and maximize."""

from __future__ import annotations

import optax

from jaxupdate import transforms as T
from jaxupdate._described import torch_optimizer
from jaxupdate._hparams import is_static_zero
from jaxupdate.optim._base import assemble, check_adam_hparams, check_nonneg
from jaxupdate.transforms.nadam_radam import torch_nadam_update


@torch_optimizer(
    "NAdam",
    ("step", "mu_product", "exp_avg", "exp_avg_sq"),
    state=T.TorchNAdamState,
    scalar_keys=("mu_product",),
)
def nadam(
    lr=2e-3,
    betas=(0.9, 0.999),
    eps=1e-8,
    weight_decay=0,
    momentum_decay=4e-3,
    decoupled_weight_decay: bool = False,
    *,
    maximize: bool = False,
) -> optax.GradientTransformationExtraArgs:
    r"""torch.optim.NAdam as a pure transformation.

    Algorithm (torch's ``_single_tensor_nadam``), for each step ``t = 1, 2, ...``
    (``mu_product`` starts at 1 and is a float32 scalar, as torch's state tensor)::

        g = -grad if maximize else grad
        if weight_decay != 0:
            if decoupled_weight_decay: param = param * (1 - lr * weight_decay)
            else:                      g = g + weight_decay * param
        mu      = beta1 * (1 - 0.5 * 0.96 ** (t * momentum_decay))
        mu_next = beta1 * (1 - 0.5 * 0.96 ** ((t + 1) * momentum_decay))
        mu_product = mu_product * mu
        m = lerp(m, g, 1 - beta1)                        # m + (1 - beta1) * (g - m)
        v = beta2 * v + (1 - beta2) * g * g
        denom = sqrt(v / (1 - beta2 ** t)) + eps
        param = param - lr * (1 - mu) / (1 - mu_product) * g / denom
        param = param - lr * mu_next / (1 - mu_product * mu_next) * m / denom

    optax's ``nadam`` has no ``momentum_decay`` schedule (it uses a fixed ``beta1``), so
    its numbers differ from torch's by several percent.

    Args (torch's names, order and defaults; ``params``, ``foreach``, ``capturable`` and
    ``differentiable`` do not apply):
      lr: learning rate, default ``2e-3``; a float, 1-element array or schedule
        ``count -> lr`` (``count`` = updates already applied), as every float below.
      betas: ``(beta1, beta2)``, default ``(0.9, 0.999)``.
      eps: added to the denominator, outside the square root, default ``1e-8``.
      weight_decay: default ``0``; L2 added to the gradient unless ``decoupled_weight_decay``.
      momentum_decay: ``psi`` in ``mu_t``, default ``4e-3``.
      decoupled_weight_decay: NAdamW, ``param *= 1 - lr * weight_decay``, default ``False``.
      maximize: maximize the objective, default ``False``.

    Returns:
      An ``optax.GradientTransformationExtraArgs``; ``update`` needs ``params`` when
      ``weight_decay`` is not a literal ``0`` (and gives torch's exact rounding with them).

    Example::

        >>> import jax, jax.numpy as jnp
        >>> from jaxupdate.optim.nadam import nadam
        >>> params = {"w": jnp.ones(3)}
        >>> tx = nadam(lr=2e-3)
        >>> state = tx.init(params)
        >>> grads = jax.grad(lambda p: jnp.sum(p["w"] ** 2))(params)
        >>> updates, state = tx.update(grads, state, params)
        >>> params = jax.tree.map(jnp.add, params, updates)
    """
    # torch's NAdam (unlike Adam) accepts a float beside a tensor beta
    lr, betas, eps, weight_decay = check_adam_hparams(
        lr, betas, eps, weight_decay, same_kind=False
    )
    momentum_decay = check_nonneg(momentum_decay, "momentum_decay", "momentum_decay")
    decay = not is_static_zero(weight_decay)
    return assemble(
        T.maximize() if maximize else None,
        T.add_weight_decay(weight_decay) if decay and not decoupled_weight_decay else None,
        torch_nadam_update(
            lr,
            betas,
            eps,
            momentum_decay,
            weight_decay if decay and decoupled_weight_decay else None,
        ),
    )

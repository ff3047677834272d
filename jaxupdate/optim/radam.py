"""RAdam (and RAdamW) with torch's variance rectification, weight decay and maximize."""

from __future__ import annotations

import optax

from jaxupdate import transforms as T
from jaxupdate._described import torch_optimizer
from jaxupdate._hparams import is_static_zero
from jaxupdate.optim._base import assemble, check_adam_hparams
from jaxupdate.transforms.nadam_radam import torch_radam_update


@torch_optimizer("RAdam", ("step", "exp_avg", "exp_avg_sq"), state=T.TorchRAdamState)
def radam(
    lr=1e-3,
    betas=(0.9, 0.999),
    eps=1e-8,
    weight_decay=0,
    decoupled_weight_decay: bool = False,
    *,
    maximize: bool = False,
) -> optax.GradientTransformationExtraArgs:
    r"""torch.optim.RAdam as a pure transformation.

    Algorithm (torch's ``_single_tensor_radam``), for each step ``t = 1, 2, ...``::

        g = -grad if maximize else grad
        if weight_decay != 0:
            if decoupled_weight_decay: param = param * (1 - lr * weight_decay)
            else:                      g = g + weight_decay * param
        m = lerp(m, g, 1 - beta1)                        # m + (1 - beta1) * (g - m)
        v = beta2 * v + (1 - beta2) * g * g
        m_hat = m / (1 - beta1 ** t)
        rho_inf = 2 / (1 - beta2) - 1
        rho_t = rho_inf - 2 t beta2 ** t / (1 - beta2 ** t)
        if rho_t > 5:                                    # variance is tractable: rectify
            rect = sqrt((rho_t - 4) (rho_t - 2) rho_inf / ((rho_inf - 4) (rho_inf - 2) rho_t))
            param = param - m_hat * lr * sqrt(1 - beta2 ** t) / (sqrt(v) + eps) * rect
        else:                                            # SGD with momentum
            param = param - m_hat * lr

    The switch is taken on device (``jnp.where``), so it survives ``jit``. optax's ``radam``
    places eps differently relative to the bias correction (about 1e-9 apart in float64).

    Args (torch's names, order and defaults; ``params``, ``foreach``, ``capturable`` and
    ``differentiable`` do not apply):
      lr: learning rate, default ``1e-3``; a float, 1-element array or schedule
        ``count -> lr`` (``count`` = updates already applied), as every float below.
      betas: ``(beta1, beta2)``, default ``(0.9, 0.999)``.
      eps: added to ``sqrt(v)``, default ``1e-8``.
      weight_decay: default ``0``; L2 added to the gradient unless ``decoupled_weight_decay``.
      decoupled_weight_decay: RAdamW, ``param *= 1 - lr * weight_decay``, default ``False``.
      maximize: maximize the objective, default ``False``.

    Returns:
      An ``optax.GradientTransformationExtraArgs``; ``update`` needs ``params`` when
      ``weight_decay`` is not a literal ``0`` (and gives torch's exact rounding with them).

    Example::

        >>> import jax, jax.numpy as jnp
        >>> from jaxupdate.optim.radam import radam
        >>> params = {"w": jnp.ones(3)}
        >>> tx = radam(lr=1e-3, weight_decay=1e-2, decoupled_weight_decay=True)
        >>> state = tx.init(params)
        >>> grads = jax.grad(lambda p: jnp.sum(p["w"] ** 2))(params)
        >>> updates, state = tx.update(grads, state, params)
        >>> params = jax.tree.map(jnp.add, params, updates)   # rho_1 = 1: 1 - 1e-5 - 1e-3 * 2
    """
    # torch's RAdam (unlike Adam) accepts a float beside a tensor beta
    lr, betas, eps, weight_decay = check_adam_hparams(
        lr, betas, eps, weight_decay, same_kind=False
    )
    decay = not is_static_zero(weight_decay)
    return assemble(
        T.maximize() if maximize else None,
        T.add_weight_decay(weight_decay) if decay and not decoupled_weight_decay else None,
        torch_radam_update(
            lr, betas, eps, weight_decay if decay and decoupled_weight_decay else None
        ),
    )

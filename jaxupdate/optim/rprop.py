"""Rprop (resilient backpropagation) with torch's sign-change rule, step-size bounds, maximize."""

from __future__ import annotations

import optax

from jaxupdate import transforms as T
from jaxupdate._described import torch_optimizer
from jaxupdate._hparams import concrete, normalize
from jaxupdate.optim._base import assemble, check_lr
from jaxupdate.transforms.adaptive import torch_rprop_update


@torch_optimizer("Rprop", ("step", "prev", "step_size"), state=T.TorchRpropState)
def rprop(
    lr=1e-2,
    etas=(0.5, 1.2),
    step_sizes=(1e-6, 50),
    *,
    maximize: bool = False,
) -> optax.GradientTransformationExtraArgs:
    r"""torch.optim.Rprop as a pure transformation.

    Algorithm (torch's ``_single_tensor_rprop``), for each step::

        initialize: prev = 0, step_size = lr               # lr is read once, at the first step
        g = -grad if maximize else grad
        s = sign(g * prev)
        step_size = clamp(step_size * (etaplus if s > 0 else etaminus if s < 0 else 1),
                          step_size_min, step_size_max)
        if s < 0: g = 0                                     # sign changed: no move this step
        param = param - sign(g) * step_size
        prev = g

    lr only seeds ``step_size``: a schedule is read at ``count = 0``, like torch, whose
    scheduler changes to the group's lr after the first step have no effect. Differs from
    ``optax.rprop`` in the handling of sign changes and step sizes. Complex parameters are
    treated as pairs of reals (torch's ``view_as_real``), each part with its own step size.

    Args (torch's names, order and defaults; ``params``, ``foreach``, ``capturable`` and
    ``differentiable`` do not apply); each float may be a 1-element array or a schedule of
    ``count`` (updates already applied):
      lr: initial step size, default ``1e-2``.
      etas: ``(etaminus, etaplus)``, multiplicative decrease and increase factors,
        ``0 < etaminus < 1 < etaplus``, default ``(0.5, 1.2)``.
      step_sizes: ``(min, max)`` allowed step sizes, default ``(1e-6, 50)``.
      maximize: maximize the objective, default ``False``.

    Example::

        >>> import jax.numpy as jnp, jaxupdate as ju
        >>> from jaxupdate.optim.rprop import rprop
        >>> tx = rprop(lr=0.01)
        >>> params = {"w": jnp.array([1.0, 2.0])}
        >>> state = tx.init(params)
        >>> updates, state = tx.update({"w": jnp.array([3.0, -4.0])}, state, params)
        >>> ju.apply_updates(params, updates)["w"]
        Array([0.99, 2.01], dtype=float32)
    """
    lr = check_lr(lr)
    if len(etas) != 2:
        raise ValueError(f"etas must be a pair (etaminus, etaplus), got {etas!r}")
    if len(step_sizes) != 2:
        raise ValueError(f"step_sizes must be a pair (min, max), got {step_sizes!r}")
    etas_n = (normalize(etas[0], "etas[0]"), normalize(etas[1], "etas[1]"))
    em, ep = concrete(etas_n[0]), concrete(etas_n[1])
    # torch: `if not 0.0 < etas[0] < 1.0 < etas[1]` (parts only known later are not checked)
    if (em is not None and not 0.0 < em < 1.0) or (ep is not None and not 1.0 < ep):
        raise ValueError(f"Invalid eta values: {etas[0]}, {etas[1]}")
    sizes_n = (normalize(step_sizes[0], "step_sizes[0]"), normalize(step_sizes[1], "step_sizes[1]"))
    return assemble(
        T.maximize() if maximize else None,
        torch_rprop_update(lr, etas_n, sizes_n),
    )

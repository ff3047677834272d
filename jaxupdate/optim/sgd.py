"""Stochastic gradient descent with torch's momentum, dampening, Nesterov and weight decay."""

from __future__ import annotations

import optax

from jaxupdate import transforms as T
from jaxupdate._described import torch_optimizer
from jaxupdate._hparams import concrete, is_static_zero, normalize
from jaxupdate.fused._specs import sgd_spec, with_fused
from jaxupdate.optim._base import assemble, check_lr, check_nonneg


@torch_optimizer(
    "SGD",
    ("momentum_buffer",),
    state=T.TorchMomentumState,
    # SGD keeps a state block only with momentum
    state_name="SGD with momentum",
)
def sgd(
    lr=1e-3,
    momentum=0,
    dampening=0,
    weight_decay=0,
    nesterov: bool = False,
    *,
    maximize: bool = False,
    fused: bool = False,
) -> optax.GradientTransformationExtraArgs:
    r"""torch.optim.SGD as a pure transformation.

    Algorithm (torch's ``_single_tensor_sgd``), for each step ``t = 1, 2, ...``::

        g = -grad if maximize else grad
        if weight_decay != 0: g = g + weight_decay * param
        if momentum != 0:
            buf = g                                          if t == 1
            buf = momentum * buf + (1 - dampening) * g       otherwise
            g = g + momentum * buf if nesterov else buf
        param = param - lr * g

    Args (torch's names, order and defaults; ``params``, ``foreach`` and ``differentiable``
    do not apply):
      lr: learning rate, default ``1e-3``. A float, a 1-element array or a schedule
        ``count -> lr`` (``count`` = updates already applied).
      momentum: momentum factor, default ``0``.
      dampening: dampening for momentum, default ``0``.
      weight_decay: coupled L2 penalty added to the gradient, default ``0``.
      nesterov: Nesterov momentum (needs ``momentum > 0`` and ``dampening == 0``).
      maximize: maximize the objective instead of minimizing it.
      fused: torch's switch: the same transformation, run by :func:`jaxupdate.step` as one
        in-place pass over every leaf on CPU (numba kernel; ``pip install 'jaxupdate[fused]'``),
        XLA's own fusion on GPU. Same numbers; not differentiable through ``ju.step``.

    Returns:
      An ``optax.GradientTransformationExtraArgs``; ``update`` needs ``params`` when
      ``weight_decay`` is not a literal ``0``.

    Example::

        >>> import jax.numpy as jnp, jaxupdate as ju
        >>> tx = ju.sgd(lr=0.1, momentum=0.9)
        >>> params = {"w": jnp.array([1.0, 2.0])}
        >>> state = tx.init(params)
        >>> updates, state = tx.update({"w": jnp.array([1.0, 1.0])}, state, params)
        >>> ju.apply_updates(params, updates)["w"]
        Array([0.9, 1.9], dtype=float32)
    """
    lr = check_lr(lr)
    momentum_n = check_nonneg(momentum, "momentum", "momentum")
    weight_decay_n = check_nonneg(weight_decay, "weight_decay", "weight_decay")
    dampening_n = normalize(dampening, "dampening")
    if nesterov:
        mom, damp = concrete(momentum_n), concrete(dampening_n)
        if (mom is not None and mom <= 0) or (damp is not None and damp != 0):
            raise ValueError("Nesterov momentum requires a momentum and zero dampening")
    tx = assemble(
        T.maximize() if maximize else None,
        None if is_static_zero(weight_decay_n) else T.add_weight_decay(weight_decay_n),
        None if is_static_zero(momentum_n)
        else T.scale_by_torch_momentum(momentum_n, dampening_n, nesterov),
        T.scale_by_learning_rate(lr),
    )
    spec = sgd_spec(lr, momentum_n, dampening_n, weight_decay_n, nesterov, maximize)
    return with_fused(fused, spec, tx)

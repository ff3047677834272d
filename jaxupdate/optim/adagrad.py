"""Adagrad with torch's lr_decay, initial_accumulator_value, eps outside the sqrt and maximize."""

from __future__ import annotations

import optax

from jaxupdate import transforms as T
from jaxupdate._described import torch_optimizer
from jaxupdate._hparams import is_static_zero
from jaxupdate.fused._specs import adagrad_spec, with_fused
from jaxupdate.optim._base import assemble, check_lr, check_nonneg
from jaxupdate.transforms.adaptive import torch_adagrad_update


@torch_optimizer(
    "Adagrad",
    ("step", "sum"),
    state=T.TorchAdagradState,
    # torch fills state["sum"] in its constructor, so a fresh Adagrad already has state
    eager=True,
    # ... from the constructor's initial_accumulator_value: a param group's own value is kept
    # in the group but never used (param_groups builds every group's state from the defaults')
    constructor_only=("initial_accumulator_value",),
)
def adagrad(
    lr=1e-2,
    lr_decay=0,
    weight_decay=0,
    initial_accumulator_value=0,
    eps=1e-10,
    *,
    maximize: bool = False,
    fused: bool = False,
) -> optax.GradientTransformationExtraArgs:
    r"""torch.optim.Adagrad as a pure transformation.

    Algorithm (torch's ``_single_tensor_adagrad``), for each step ``t = 1, 2, ...``::

        initialize: sum = initial_accumulator_value     # not 0: torch's state["sum"]
        g = -grad if maximize else grad
        if weight_decay != 0: g = g + weight_decay * param
        clr = lr / (1 + (t - 1) * lr_decay)
        sum = sum + g * g
        param = param - clr * g / (sqrt(sum) + eps)     # eps outside the sqrt

    Differs from ``optax.adagrad``: optax puts eps inside the square root, starts the sum at
    0.1 and has no ``lr_decay`` or ``weight_decay``. Complex parameters are treated as pairs
    of reals (torch's ``view_as_real``); their ``sum`` starts at ``initial_accumulator_value``
    in both parts. Sparse gradients (torch's sparse branch) do not apply.

    Args (torch's names, order and defaults; ``params``, ``foreach`` and ``differentiable``
    do not apply); each float may be a 1-element array or a schedule of ``count``
    (updates already applied):
      lr: learning rate, default ``1e-2``.
      lr_decay: learning-rate decay, default ``0``.
      weight_decay: coupled L2 penalty added to the gradient, default ``0``.
      initial_accumulator_value: starting value of ``sum``, default ``0`` (a schedule is read
        at ``count = 0``).
      eps: added to ``sqrt(sum)``, default ``1e-10``.
      maximize: maximize the objective, default ``False``.
      fused: torch's switch: the same transformation, run by :func:`jaxupdate.step` as one
        in-place pass over every leaf on CPU (numba kernel; ``pip install 'jaxupdate[fused]'``),
        XLA's own fusion on GPU. Same numbers; not differentiable through ``ju.step``.

    Returns:
      An ``optax.GradientTransformationExtraArgs``; ``update`` needs ``params`` when
      ``weight_decay`` is not a literal ``0``.

    Example::

        >>> import jax.numpy as jnp, jaxupdate as ju
        >>> from jaxupdate.optim.adagrad import adagrad
        >>> tx = adagrad(lr=0.1)
        >>> params = {"w": jnp.array([1.0, 2.0])}
        >>> state = tx.init(params)
        >>> updates, state = tx.update({"w": jnp.array([3.0, -4.0])}, state, params)
        >>> ju.apply_updates(params, updates)["w"]              # param - lr * sign(g)
        Array([0.9, 2.1], dtype=float32)
    """
    lr = check_lr(lr)
    lr_decay = check_nonneg(lr_decay, "lr_decay", "lr_decay")
    weight_decay = check_nonneg(weight_decay, "weight_decay", "weight_decay")
    initial_accumulator_value = check_nonneg(
        initial_accumulator_value, "initial_accumulator_value", "initial_accumulator_value"
    )
    eps = check_nonneg(eps, "eps", "epsilon")
    tx = assemble(
        T.maximize() if maximize else None,
        None if is_static_zero(weight_decay) else T.add_weight_decay(weight_decay),
        torch_adagrad_update(lr, lr_decay, eps, initial_accumulator_value),
    )
    return with_fused(fused, adagrad_spec(lr, lr_decay, weight_decay, eps, maximize), tx)

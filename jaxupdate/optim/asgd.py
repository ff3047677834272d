"""Averaged SGD with torch's eta / mu schedules and its averaged parameters ``ax``."""

from __future__ import annotations

import jax
import optax

from jaxupdate import transforms as T
from jaxupdate._described import torch_optimizer
from jaxupdate._hparams import is_static_zero, normalize
from jaxupdate.optim._base import check_lr, check_nonneg
from jaxupdate.transforms.asgd import TorchASGDState, torch_asgd_update
from jaxupdate.transforms.validate import validate_inputs


@torch_optimizer(
    "ASGD", ("step", "eta", "mu", "ax"), state=TorchASGDState, scalar_keys=("eta", "mu")
)
def asgd(
    lr=1e-2,
    lambd=1e-4,
    alpha=0.75,
    t0=1e6,
    weight_decay=0,
    maximize: bool = False,
) -> optax.GradientTransformationExtraArgs:
    r"""torch.optim.ASGD as a pure transformation; :func:`averaged_params` reads the average.

    Algorithm (torch's ``_single_tensor_asgd``), for each step ``t = 1, 2, ...``, with
    ``eta = lr``, ``mu = 1`` and ``ax = 0`` at the start (``eta`` and ``mu`` are float32
    scalars, as torch's state tensors)::

        g = -grad if maximize else grad
        if weight_decay != 0: g = g + weight_decay * param
        param = param * (1 - lambd * eta) - eta * g
        ax = param if mu == 1 else ax + mu * (param - ax)
        eta = lr / (1 + lambd * lr * t) ** alpha
        mu = 1 / max(1, t - t0)

    Averaging starts once ``t > t0 + 1``; until then ``ax`` is a copy of the parameters.

    Args (torch's names, order and defaults; ``params``, ``foreach``, ``capturable`` and
    ``differentiable`` do not apply):
      lr: learning rate, default ``1e-2``; a float, 1-element array or schedule
        ``count -> lr`` (``count`` = updates already applied), as every float below.
      lambd: decay term, default ``1e-4``.
      alpha: power for the eta update, default ``0.75``.
      t0: the step at which averaging starts, default ``1e6``.
      weight_decay: coupled L2 penalty added to the gradient, default ``0``.
      maximize: maximize the objective, default ``False``.

    Returns:
      An ``optax.GradientTransformationExtraArgs``; ``update`` always needs ``params``.

    Example::

        >>> import jax, jax.numpy as jnp
        >>> from jaxupdate.optim.asgd import asgd, averaged_params
        >>> params = {"w": jnp.ones(3)}
        >>> tx = asgd(lr=0.1, t0=0)
        >>> state = tx.init(params)
        >>> for _ in range(3):
        ...     grads = jax.grad(lambda p: jnp.sum(p["w"] ** 2))(params)
        ...     updates, state = tx.update(grads, state, params)
        ...     params = jax.tree.map(jnp.add, params, updates)
        >>> polyak = averaged_params(state)    # torch's optimizer.state[p]["ax"]
    """
    lr = check_lr(lr)
    weight_decay = check_nonneg(weight_decay, "weight_decay", "weight_decay")
    lambd = normalize(lambd, "lambd")
    alpha = normalize(alpha, "alpha")
    t0 = normalize(t0, "t0")
    on_grads = [
        T.maximize() if maximize else None,
        None if is_static_zero(weight_decay) else T.add_weight_decay(weight_decay),
    ]
    # one step count for the whole chain: the gradient blocks read the chain's count
    on_grads = [T.uncounted(b) for b in on_grads if b is not None]
    return validate_inputs(T.counted_chain(
        T.complex_as_real(optax.chain(*on_grads)) if on_grads else optax.identity(),
        # outside complex_as_real: ax keeps the parameters' dtype (complex stays complex)
        torch_asgd_update(lr, lambd, alpha, t0),
    ))


def averaged_params(opt_state) -> optax.Params:
    """The averaged parameters of an :func:`asgd` state (torch's ``optimizer.state[p]['ax']``).

    A pytree shaped like the parameters, in their dtypes. Before the first update it holds
    zeros, as torch's freshly created state; while ``t <= t0 + 1`` it equals the parameters.
    Works on any state that holds exactly one ASGD state (e.g. inside ``optax.chain``).
    """
    found = [
        s
        for s in jax.tree.leaves(opt_state, is_leaf=lambda x: isinstance(x, TorchASGDState))
        if isinstance(s, TorchASGDState)
    ]
    if len(found) != 1:
        raise ValueError(
            f"expected the state of exactly one asgd() transformation, found {len(found)}"
        )
    return found[0].ax

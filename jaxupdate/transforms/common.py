"""Building blocks shared by every optimizer: complex views, maximize, weight decay, lr scaling.

Each block is an optax ``GradientTransformationExtraArgs`` closing over its hyperparameters,
with its state a NamedTuple of arrays. Hyperparameters may be Python numbers, 1-element arrays
or schedules (functions of the number of updates already applied), see ``jaxupdate._hparams``.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from jaxupdate._hparams import resolve
from jaxupdate.numerics import add_scaled, cast, delta, leaf_map, scale, wide_updates


class CountState(NamedTuple):
    """Number of updates applied so far; blocks use it to evaluate scheduled hyperparameters."""

    count: jax.Array


def init_count():
    return jnp.zeros([], jnp.int32)


def require_params(params, what: str):
    if params is None:
        raise ValueError(
            f"{what} needs the current parameters: call tx.update(grads, opt_state, params)"
        )


def _view_as_real(x):
    return jnp.stack([jnp.real(x), jnp.imag(x)], axis=-1) if jnp.iscomplexobj(x) else x


def _view_as_complex(x):
    return jax.lax.complex(x[..., 0], x[..., 1])


def complex_as_real(inner: optax.GradientTransformation) -> optax.GradientTransformationExtraArgs:
    """Runs ``inner`` on complex leaves viewed as pairs of reals, as torch's ``view_as_real``.

    torch optimizers treat a complex parameter as a real tensor with a trailing dimension of 2
    (``torch.view_as_real``): squares, square roots and divisions act on the real and imaginary
    parts separately. State of complex leaves is kept in that real view (trailing axis of 2).
    Real leaves pass through untouched, and trees without complex leaves cost nothing.
    """

    def init_fn(params):
        return inner.init(jax.tree.map(_view_as_real, params))

    def update_fn(updates, state, params=None, **extra_args):
        leaves = jax.tree.leaves(updates)
        if not any(jnp.iscomplexobj(x) for x in leaves):
            return inner.update(updates, state, params, **extra_args)
        is_complex = jax.tree.map(jnp.iscomplexobj, updates)
        real_updates = jax.tree.map(_view_as_real, updates)
        real_params = None if params is None else jax.tree.map(_view_as_real, params)
        new_updates, state = inner.update(real_updates, state, real_params, **extra_args)
        new_updates = jax.tree.map(
            lambda c, u: _view_as_complex(u) if c else u, is_complex, new_updates
        )
        return new_updates, state

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def maximize() -> optax.GradientTransformationExtraArgs:
    """Negates the gradients (torch's ``grad = -grad`` when ``maximize=True``), first of all."""

    def init_fn(params):
        del params
        return optax.EmptyState()

    def update_fn(updates, state, params=None, **extra_args):
        del params, extra_args
        return leaf_map(jnp.negative, updates), state

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def add_weight_decay(weight_decay) -> optax.GradientTransformationExtraArgs:
    """Coupled (L2) weight decay, torch's ``grad = grad.add(param, alpha=weight_decay)``."""

    def init_fn(params):
        del params
        return CountState(init_count())

    def update_fn(updates, state, params=None, **extra_args):
        del extra_args
        require_params(params, "weight_decay")
        wd = resolve(weight_decay, state.count)
        updates = leaf_map(lambda g, p: add_scaled(g, wd, p), updates, params)
        return updates, CountState(optax.safe_increment(state.count))

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def scale_by_learning_rate(lr, *, applied: bool = False) -> optax.GradientTransformationExtraArgs:
    """Turns a direction into an update: ``-lr * direction`` (torch's ``param.add_(d, alpha=-lr)``).

    torch's ``add_`` with ``alpha`` rounds once (see ``numerics.add_scaled``). Given
    ``params``, the update is returned as ``add_scaled(param, -lr, d) - param``: the
    subtraction is exact whenever the step is smaller than the parameter (Sterbenz), and
    ``apply_updates`` then lands on torch's rounding of the new parameter (always, with
    ``tx.update(..., wide_updates=True)``: see ``numerics.delta``).

    ``applied=True``: the previous block already applied ``lr`` the way torch does (the
    ``value`` of a final ``addcdiv_``, which must multiply before dividing); updates pass
    through and only the count advances, so the state keeps its layout.
    """

    def init_fn(params):
        del params
        return CountState(init_count())

    def update_fn(updates, state, params=None, **extra_args):
        if applied:
            return updates, CountState(optax.safe_increment(state.count))
        neg_lr = -resolve(lr, state.count)
        wide = wide_updates(extra_args)
        if params is None:
            updates = leaf_map(lambda d: cast(neg_lr, d) * d, updates)
        else:
            updates = leaf_map(
                lambda d, p: delta(add_scaled(p, neg_lr, d), p, wide), updates, params
            )
        return updates, CountState(optax.safe_increment(state.count))

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def decoupled_weight_decay(lr, weight_decay) -> optax.GradientTransformationExtraArgs:
    """Decoupled weight decay, torch's ``param.mul_(1 - lr * weight_decay)`` before the step.

    Placed after the lr-scaled update ``u`` of the optimizer, it returns
    ``(param * (1 - lr * wd) + u) - param``: torch's new parameter minus the old one. That
    difference is exact whenever the step is smaller than the parameter (Sterbenz), so
    ``apply_updates`` lands on torch's rounding of ``param * (1 - lr * wd) + u``.
    """

    def init_fn(params):
        del params
        return CountState(init_count())

    def update_fn(updates, state, params=None, **extra_args):
        require_params(params, "decoupled weight_decay")
        wide = wide_updates(extra_args)
        factor = 1.0 - resolve(lr, state.count) * resolve(weight_decay, state.count)
        # torch: param.mul_(factor) rounds before the step is added (no fused multiply-add)
        updates = leaf_map(lambda u, p: delta(scale(p, factor) + u, p, wide), updates, params)
        return updates, CountState(optax.safe_increment(state.count))

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)

"""Building blocks shared by every optimizer: complex views, maximize, weight decay, lr scaling.

Each block is an optax ``GradientTransformationExtraArgs`` closing over its hyperparameters,
with its state a NamedTuple of arrays. Hyperparameters may be Python numbers, 1-element arrays
or schedules (functions of the number of updates already applied), see ``jaxupdate._hparams``.
The number of updates comes from the chain (:func:`counted_chain`, ``update(..., count=)``):
one count per optimizer, as torch keeps one ``step``.
"""

from __future__ import annotations

import warnings
from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from jaxupdate._hparams import is_schedule, resolve
from jaxupdate.numerics import add_scaled, cast, delta, leaf_map, scale, wide_updates


class CountState(NamedTuple):
    """torch's ``step``: the number of updates applied so far, one per optimizer.

    The last element of a :func:`counted_chain`'s state (every jaxupdate optimizer is one):
    the chain passes it to each block as ``update(..., count=...)`` (the value before this
    update, what schedules and bias corrections read) and increments it once per update.
    Read it with :func:`step_count`, set it with :func:`with_step_count`.
    """

    count: jax.Array
    # marks a state node holding an optimizer's one step count (see step_count)
    holds_step_count = True


def warn_deprecated(old: str, new: str, stacklevel: int = 3) -> None:
    """``DeprecationWarning("{old} is deprecated: use {new}")`` pointing at the caller's
    caller (the user code that called the deprecated name)."""
    warnings.warn(f"{old} is deprecated: use {new}", DeprecationWarning, stacklevel=stacklevel)


def init_count():
    return jnp.zeros([], jnp.int32)


_BLOCKS = "_jaxupdate_counted_blocks"


def counted_chain(*blocks) -> optax.GradientTransformationExtraArgs:
    """``optax.chain`` of the blocks that are not None, owning one step count for all of them.

    The state is ``(*block_states, CountState(count))``. Each update passes ``count`` (updates
    applied before this one) to every block as the keyword ``count=``, then increments it
    once: one count per optimizer, as torch keeps one ``step`` (not one per block, as a plain
    ``optax.chain`` of counting blocks would). A block that is itself a counted chain (a
    block that needs a count and was built to be used alone, e.g. ``scale_by_torch_adam()``)
    gives its blocks, so the chain keeps its single count.

    Example::

        >>> import jax.numpy as jnp
        >>> from jaxupdate import transforms as T
        >>> tx = T.counted_chain(T.scale_by_torch_adam(), T.scale_by_learning_rate(1e-3))
        >>> state = tx.init({"w": jnp.ones(2)})
        >>> type(state[0]).__name__, int(T.step_count(state))
        ('TorchAdamState', 0)
    """
    flat = []
    for b in blocks:
        if b is not None:
            flat.extend(counted_blocks(b))
    txs = [optax.with_extra_args_support(b) for b in flat]

    def init_fn(params):
        return (*(b.init(params) for b in txs), CountState(init_count()))

    def update_fn(updates, state, params=None, **extra_args):
        count = state[-1].count
        extra_args = {**extra_args, "count": count}
        new_state = []
        for b, s in zip(txs, state[:-1]):
            updates, s = b.update(updates, s, params, **extra_args)
            new_state.append(s)
        return updates, (*new_state, CountState(optax.safe_increment(count)))

    setattr(update_fn, _BLOCKS, tuple(flat))
    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def counted_blocks(tx) -> tuple:
    """The blocks of a :func:`counted_chain` (which read its count), else ``(tx,)``."""
    return getattr(tx.update, _BLOCKS, (tx,))


def uncounted(tx) -> optax.GradientTransformationExtraArgs:
    """``tx`` without a count of its own: a counted chain's blocks in an ``optax.chain``, for
    use inside another transformation that an enclosing :func:`counted_chain` passes
    ``count=`` through (such as ``complex_as_real``)."""
    blocks = counted_blocks(tx)
    return blocks[0] if len(blocks) == 1 else optax.chain(*blocks)


def block(init_fn, update_fn, needs_count: bool) -> optax.GradientTransformationExtraArgs:
    """A block whose ``update_fn`` reads the chain's ``count=``. Used alone, a block that
    ``needs_count`` (scheduled hyperparameters, bias corrections, first-step rules) is a
    :func:`counted_chain` of itself; one that does not keeps no count (as optax's
    ``scale_by_learning_rate`` with a constant rate)."""
    tx = optax.GradientTransformationExtraArgs(init_fn, update_fn)
    return counted_chain(tx) if needs_count else tx


def schedules_in(*hparams) -> bool:
    """Whether any hyperparameter (pairs such as ``betas`` included) is a schedule."""
    return any(
        schedules_in(*h) if isinstance(h, (tuple, list)) else is_schedule(h) for h in hparams
    )


def chain_count(count, what: str):
    """The ``count=`` a block received, or an error naming the block when it got none."""
    if count is None:
        raise ValueError(
            f"{what} reads the optimizer's step count: use it alone or in "
            "jaxupdate.transforms.counted_chain, which passes count= to its blocks"
        )
    return count


def _count_holders(state) -> list:
    return [x for x in jax.tree.leaves(state, is_leaf=_holds_count) if _holds_count(x)]


def _holds_count(x) -> bool:
    return getattr(type(x), "holds_step_count", False) and hasattr(x, "count")


def step_count(opt_state) -> jax.Array:
    """The optimizer's step count: updates applied so far (torch's ``step``).

    Found by type (:class:`CountState`, or the state of a one-block optimizer such as LBFGS
    and SparseAdam that holds its count itself), through any wrapper (``inject_hyperparams``,
    ``skip_nonfinite``, ``accumulate_grads``). A
    ``param_groups`` state holds one count per group: pass one group's state.

    Example::

        >>> import jax.numpy as jnp, jaxupdate as ju
        >>> tx = ju.adamw(lr=1e-3)
        >>> params = {"w": jnp.ones(2)}
        >>> state = tx.init(params)
        >>> _, state = tx.update({"w": jnp.ones(2)}, state, params)
        >>> int(ju.transforms.step_count(state))
        1
    """
    holders = _count_holders(opt_state)
    if len(holders) != 1:
        raise ValueError(
            f"the state holds {len(holders)} optimizer step counts, expected one "
            "(a param_groups state holds one per group: pass one group's state)"
        )
    return holders[0].count


def with_step_count(opt_state, count):
    """``opt_state`` with every optimizer step count set to ``count`` (in the count's dtype).

    Example: ``with_step_count(tx.init(params), 10)`` is a state that has taken 10 updates
    (what a checkpoint or torch's ``step`` restores).
    """
    return jax.tree.map(
        lambda x: x._replace(count=jnp.asarray(count, jnp.asarray(x.count).dtype))
        if _holds_count(x) else x,
        opt_state,
        is_leaf=_holds_count,
    )


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
        return optax.EmptyState()

    def update_fn(updates, state, params=None, count=None, **extra_args):
        del extra_args
        require_params(params, "weight_decay")
        wd = resolve(weight_decay, count)
        updates = leaf_map(lambda g, p: add_scaled(g, wd, p), updates, params)
        return updates, state

    return block(init_fn, update_fn, needs_count=schedules_in(weight_decay))


def scale_by_learning_rate(lr) -> optax.GradientTransformationExtraArgs:
    """Turns a direction into an update: ``-lr * direction`` (torch's ``param.add_(d, alpha=-lr)``).

    torch's ``add_`` with ``alpha`` rounds once (see ``numerics.add_scaled``). Given
    ``params``, the update is returned as ``add_scaled(param, -lr, d) - param``: the
    subtraction is exact whenever the step is smaller than the parameter (Sterbenz), and
    ``apply_updates`` then lands on torch's rounding of the new parameter (always, with
    ``tx.update(..., wide_updates=True)``: see ``numerics.delta``). Keeps no state; used alone
    with a scheduled ``lr``, it counts its updates (``counted_chain``).

    Example: ``optax.chain(scale_by_torch_rms(), scale_by_learning_rate(1e-2))``.
    """

    def init_fn(params):
        del params
        return optax.EmptyState()

    def update_fn(updates, state, params=None, count=None, **extra_args):
        neg_lr = -resolve(lr, count)
        wide = wide_updates(extra_args)
        if params is None:
            updates = leaf_map(lambda d: cast(neg_lr, d) * d, updates)
        else:
            updates = leaf_map(
                lambda d, p: delta(add_scaled(p, neg_lr, d), p, wide), updates, params
            )
        return updates, state

    return block(init_fn, update_fn, needs_count=schedules_in(lr))


def decoupled_weight_decay(lr, weight_decay) -> optax.GradientTransformationExtraArgs:
    """Decoupled weight decay, torch's ``param.mul_(1 - lr * weight_decay)`` before the step.

    Placed after the lr-scaled update ``u`` of the optimizer, it returns
    ``(param * (1 - lr * wd) + u) - param``: torch's new parameter minus the old one. That
    difference is exact whenever the step is smaller than the parameter (Sterbenz), so
    ``apply_updates`` lands on torch's rounding of ``param * (1 - lr * wd) + u``.
    """

    def init_fn(params):
        del params
        return optax.EmptyState()

    def update_fn(updates, state, params=None, count=None, **extra_args):
        require_params(params, "decoupled weight_decay")
        wide = wide_updates(extra_args)
        factor = 1.0 - resolve(lr, count) * resolve(weight_decay, count)
        # torch: param.mul_(factor) rounds before the step is added (no fused multiply-add)
        updates = leaf_map(lambda u, p: delta(scale(p, factor) + u, p, wide), updates, params)
        return updates, state

    return block(init_fn, update_fn, needs_count=schedules_in(lr, weight_decay))

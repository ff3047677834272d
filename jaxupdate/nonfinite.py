"""Non-finite gradients: torch's default (propagate per leaf) and an opt-in step skipper.

By default a jaxupdate optimizer does what torch's does with a NaN or inf in a gradient: the
arithmetic runs as written, so the non-finite values spread through that parameter's state and
update (Adam: ``m``, ``v`` and the parameter become NaN where the gradient was NaN or inf), and
every other parameter is updated exactly as if nothing had happened. Nothing is skipped and
no error is raised -- the same numbers as torch, NaNs included.

:func:`skip_nonfinite` is the opt-in alternative, the step-skipping of
``torch.amp.GradScaler.step`` (which skips ``optimizer.step()`` when the unscaled gradients hold
an inf or NaN) and of ``optax.apply_if_finite``: a step whose gradients are not all finite
returns zero updates and leaves the inner optimizer's state (its step count included)
untouched, and the skip is counted.
"""

from __future__ import annotations

from typing import Any, NamedTuple, Optional

import jax
import jax.numpy as jnp
import optax

__all__ = ["SkipNonfiniteState", "all_finite", "skip_nonfinite"]


class SkipNonfiniteState(NamedTuple):
    """``notfinite_count``: consecutive steps with non-finite gradients (0 after a finite one);
    ``last_finite``: whether the last step's gradients were finite; ``total_notfinite``: all
    steps with non-finite gradients; ``inner_state``: the wrapped optimizer's state. Field
    names as in ``optax.ApplyIfFiniteState``. Without ``max_consecutive`` every non-finite
    step is skipped, so the two counts are the consecutive and total skipped steps."""

    notfinite_count: jax.Array
    last_finite: jax.Array
    total_notfinite: jax.Array
    inner_state: Any


def all_finite(tree) -> jax.Array:
    """``True`` (a 0-d bool array) when every element of every leaf is finite (no NaN, no inf).

    Complex leaves are finite when both parts are. An empty tree is finite.
    """
    leaves = jax.tree.leaves(tree)
    if not leaves:
        return jnp.array(True)
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in leaves]))


def skip_nonfinite(
    tx: optax.GradientTransformation, max_consecutive: Optional[int] = None
) -> optax.GradientTransformationExtraArgs:
    r"""Skips every step whose gradients hold a NaN or an inf, as ``torch.amp.GradScaler``.

    Each ``update(grads, state, params)``::

        if all elements of grads are finite (or max_consecutive is reached, see below):
            updates, inner_state = tx.update(grads, inner_state, params)
            notfinite_count = 0
        else:                              # GradScaler: optimizer.step() is not called
            updates = zeros                # parameters unchanged
            inner_state unchanged          # moments, step count, everything
            notfinite_count += 1; total_notfinite += 1

    So a run with skipped steps equals the run on the gradient sequence with those steps
    removed (tested against torch with ``GradScaler``). Only the incoming gradients are
    checked, as ``GradScaler`` checks the unscaled ``.grad``; wrap clipping *inside*
    (``skip_nonfinite(optax.chain(ju.clip_grad_norm(1.0), ju.adam()))``), as
    ``clip_grad_norm_`` of a non-finite gradient is itself non-finite. GradScaler's loss
    scaling (multiplying the loss, halving the scale on overflow) is a float16 training
    concern outside the optimizer and is not done here.

    Args:
      tx: the optimizer (any optax transformation).
      max_consecutive: ``None`` (default): skip every non-finite step, forever, like
        ``GradScaler``. An ``int >= 0``: after that many consecutive skipped steps, the next
        non-finite step is applied anyway, as ``optax.apply_if_finite(tx,
        max_consecutive_errors)`` does: the NaNs then reach the parameters, so a run whose
        gradients stay broken fails visibly instead of silently standing still.

    Returns:
      A ``GradientTransformationExtraArgs`` with state :class:`SkipNonfiniteState`.

    Example::

        >>> import jax.numpy as jnp, jaxupdate as ju
        >>> from jaxupdate.nonfinite import skip_nonfinite
        >>> tx = skip_nonfinite(ju.adam(lr=0.1))
        >>> params = {"w": jnp.ones(2)}
        >>> state = tx.init(params)
        >>> updates, state = tx.update({"w": jnp.array([1.0, jnp.nan])}, state, params)
        >>> updates["w"], int(state.total_notfinite), int(ju.transforms.step_count(state))
        (Array([0., 0.], dtype=float32), 1, 0)
    """
    if max_consecutive is not None and (
        isinstance(max_consecutive, bool) or not isinstance(max_consecutive, int)
        or max_consecutive < 0
    ):
        raise ValueError(f"max_consecutive must be None or an int >= 0, got {max_consecutive!r}")
    inner = optax.with_extra_args_support(tx)

    def init_fn(params):
        return SkipNonfiniteState(
            notfinite_count=jnp.zeros([], jnp.int32),
            last_finite=jnp.array(True),
            total_notfinite=jnp.zeros([], jnp.int32),
            inner_state=inner.init(params),
        )

    def update_fn(updates, state, params=None, **extra_args):
        finite = all_finite(updates)
        apply = finite
        if max_consecutive is not None:
            apply = finite | (state.notfinite_count >= max_consecutive)

        def step(_):
            return inner.update(updates, state.inner_state, params, **extra_args)

        def skip(_):
            # zeros shaped like what ``step`` returns (its dtypes may differ from the grads')
            out_shape = jax.eval_shape(step, None)[0]
            zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), out_shape)
            return zeros, state.inner_state

        # lax.cond, as optax.apply_if_finite: a skipped step runs nothing of the optimizer,
        # and no NaN of it can leak into gradients taken through the update
        new_updates, inner_state = jax.lax.cond(apply, step, skip, None)
        notfinite = jnp.where(finite, 0, optax.safe_increment(state.notfinite_count))
        total = jnp.where(finite, state.total_notfinite,
                          optax.safe_increment(state.total_notfinite))
        return new_updates, SkipNonfiniteState(
            notfinite_count=notfinite.astype(jnp.int32),
            last_finite=finite,
            total_notfinite=total.astype(jnp.int32),
            inner_state=inner_state,
        )

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)

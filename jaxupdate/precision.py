"""Low-precision parameters: torch's default, float32 master weights, Kahan-compensated updates.

By default a jaxupdate optimizer treats bfloat16 / float16 parameters as torch does: its state
(``exp_avg``, ``momentum_buffer``, ...) has the parameter dtype and every step is rounded to
it. That loses small updates: an Adam step of ``lr = 1e-3`` moves a bfloat16 weight of
magnitude 1 by less than half its spacing (``2**-7``), so it is rounded away and training
stalls. Two opt-in wrappers fix it:

* :func:`master_weights` keeps a float32 master copy of the low-precision parameters and runs
  the optimizer on it (state in float32 too); the low-precision parameters are set to the
  rounded master after every step (mixed-precision training's classic recipe, as apex /
  ``torch.amp`` users do by hand). Memory per bfloat16 parameter: 2 (bf16) + 4 (master) +
  the optimizer's state in float32.
* :func:`kahan_summation` keeps no master copy: the optimizer runs in float32 on the upcast
  parameters, and each low-precision parameter carries a compensation of its own dtype
  holding what rounding dropped from it (Kahan summation), added back on the next step.
  Memory per bfloat16 parameter: 2 + 2 + the state in float32; precision close to the master's.

Leaves already at least as precise as ``dtype`` (float32 / float64 / complex) pass through
both wrappers untouched (no copy, no compensation).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from jaxupdate.numerics import delta

__all__ = [
    "KahanSummationState",
    "MasterWeightsState",
    "kahan_summation",
    "master_params",
    "master_weights",
]

_MASKED = optax.MaskedNode()


def _is_masked(x) -> bool:
    return isinstance(x, optax.MaskedNode)


def _promoted(x, dtype) -> bool:
    """A real floating leaf less precise than ``dtype`` (bfloat16 / float16 under float32)."""
    dt = jnp.asarray(x).dtype if not hasattr(x, "dtype") else x.dtype
    return jnp.issubdtype(dt, jnp.floating) and jnp.finfo(dt).bits < jnp.finfo(dtype).bits


def _upcast(params, dtype):
    """``params`` with each low-precision leaf in ``dtype`` (exact: a widening conversion)."""
    return jax.tree.map(lambda p: p.astype(dtype) if _promoted(p, dtype) else p, params)


def _require(params, what):
    if params is None:
        raise ValueError(
            f"{what} needs the current parameters: call tx.update(grads, state, params)"
        )


class MasterWeightsState(NamedTuple):
    """``master``: shaped like the parameters, the float32 copy of each low-precision leaf
    (``optax.MaskedNode()`` where the parameter is already precise enough);
    ``inner_state``: the wrapped optimizer's state, built on the master parameters."""

    master: Any
    inner_state: Any


def master_weights(
    tx: optax.GradientTransformation, dtype=jnp.float32
) -> optax.GradientTransformationExtraArgs:
    r"""Runs ``tx`` on a ``dtype`` (float32) master copy of low-precision parameters.

    With ``P`` the master parameters (the float32 copy where a parameter is bfloat16 or
    float16, the parameter itself elsewhere), each ``update(grads, state, params)``::

        u, inner_state = tx.update(float32(grads), inner_state, P)   # state in float32
        P = P + u                                                   # float32 accumulation
        updates = round_to_param_dtype(P) - params                  # params lands on round(P)

    so ``optax.apply_updates(params, updates)`` gives the master rounded to the parameter
    dtype. The update is taken relative to the parameters passed in, so a rounding slip in
    ``round(P) - params`` (possible only when a step moves a weight by more than half its
    magnitude) is undone by the next step, never accumulated. The master copy is the
    authority: when the parameters are changed outside the optimizer (loading weights),
    re-``init`` the state. :func:`master_params` reads the master copy (e.g. to evaluate or
    checkpoint in float32).

    Args:
      tx: the optimizer (any optax transformation; jaxupdate's see float32 grads and params).
      dtype: the master dtype, default ``float32``; leaves at least this precise are left alone.

    Returns:
      A ``GradientTransformationExtraArgs`` with state :class:`MasterWeightsState`; it needs
      ``params`` in ``update``.

    Example::

        >>> import jax.numpy as jnp, jaxupdate as ju
        >>> from jaxupdate.precision import master_weights, master_params
        >>> params = {"w": jnp.ones(3, jnp.bfloat16)}
        >>> tx = master_weights(ju.sgd(lr=1e-3))
        >>> state = tx.init(params)
        >>> for _ in range(3):      # each step (1e-3) is below bfloat16's spacing at 1
        ...     updates, state = tx.update({"w": jnp.ones(3, jnp.bfloat16)}, state, params)
        ...     params = ju.apply_updates(params, updates)
        >>> round(float(master_params(state, params)["w"][0]), 6)  # the float32 master moved
        0.997
        >>> float(params["w"][0])    # round(0.997) in bfloat16; plain ju.sgd would give 1.0
        0.99609375
    """
    inner = optax.with_extra_args_support(tx)

    def full(params, master):
        return jax.tree.map(lambda p, m: p if _is_masked(m) else m, params, master)

    def init_fn(params):
        master = jax.tree.map(
            lambda p: p.astype(dtype) if _promoted(p, dtype) else _MASKED, params
        )
        return MasterWeightsState(master, inner.init(full(params, master)))

    def update_fn(updates, state, params=None, **extra_args):
        _require(params, "master_weights")
        grads = jax.tree.map(
            lambda g, m: g if _is_masked(m) else g.astype(m.dtype), updates, state.master
        )
        master_p = full(params, state.master)
        inner_updates, inner_state = inner.update(grads, state.inner_state, master_p,
                                                  **extra_args)
        new_p = optax.apply_updates(master_p, inner_updates)
        new_master = jax.tree.map(
            lambda n, m: _MASKED if _is_masked(m) else n, new_p, state.master,
            is_leaf=_is_masked,
        )
        out = jax.tree.map(
            lambda u, n, p, m: u if _is_masked(m) else delta(n.astype(p.dtype), p),
            inner_updates, new_p, params, state.master, is_leaf=_is_masked,
        )
        return out, MasterWeightsState(new_master, inner_state)

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def master_params(opt_state, params=None):
    """The master parameters held by the one :class:`MasterWeightsState` in ``opt_state``.

    With ``params``, a full tree: the master copy where one is kept, the parameter elsewhere.
    Without, the master tree itself (``optax.MaskedNode()`` where no copy is kept).
    """
    found = [
        s
        for s in jax.tree.leaves(opt_state, is_leaf=lambda x: isinstance(x, MasterWeightsState))
        if isinstance(s, MasterWeightsState)
    ]
    if len(found) != 1:
        raise ValueError(f"expected one MasterWeightsState in opt_state, found {len(found)}")
    master = found[0].master
    if params is None:
        return master
    return jax.tree.map(lambda p, m: p if _is_masked(m) else m, params, master)


class _Pair:
    """Two results for one leaf (a plain object: a leaf to ``jax.tree``, unlike a tuple)."""

    __slots__ = ("update", "compensation")

    def __init__(self, update, compensation):
        self.update, self.compensation = update, compensation


class KahanSummationState(NamedTuple):
    """``compensation``: shaped like the parameters, in each low-precision parameter's dtype,
    the part of the accumulated updates that rounding has not yet let into the parameter
    (``optax.MaskedNode()`` for leaves already precise enough); ``inner_state``: the wrapped
    optimizer's state, built on the parameters upcast to ``dtype``."""

    compensation: Any
    inner_state: Any


def kahan_summation(
    tx: optax.GradientTransformation, dtype=jnp.float32
) -> optax.GradientTransformationExtraArgs:
    r"""Runs ``tx`` in ``dtype`` on upcast parameters and applies its updates with Kahan
    compensation to the low-precision parameters (no master copy).

    For each bfloat16 / float16 parameter ``p`` with compensation ``c`` (same dtype, starts
    at 0), each ``update(grads, state, params)``::

        u, inner_state = tx.update(float32(grads), inner_state, float32(params))
        y = u + float32(c)                 # this step plus what earlier roundings dropped
        t = round_to_param_dtype(float32(p) + y)
        c = round_to_param_dtype((float32(p) + y) - float32(t))   # what this rounding drops
        updates = t - p                    # exact: t and p are neighbours in the dtype

    Small steps are not lost: they accumulate in ``c`` until they move ``p`` by a whole
    spacing. The optimizer's state is in ``dtype`` (float32), built on the upcast parameters.
    Parameters are precise to about twice their dtype's bits, at half the memory of a float32
    master copy (:func:`master_weights`).

    Args:
      tx: the optimizer (jaxupdate's see float32 grads and params).
      dtype: the dtype of the optimizer's arithmetic and state, default ``float32``.

    Returns:
      A ``GradientTransformationExtraArgs`` with state :class:`KahanSummationState`; it needs
      ``params`` in ``update``.

    Example::

        >>> import jax.numpy as jnp, jaxupdate as ju
        >>> from jaxupdate.precision import kahan_summation
        >>> params = {"w": jnp.ones(3, jnp.bfloat16)}
        >>> tx = kahan_summation(ju.sgd(lr=1e-3))
        >>> state = tx.init(params)
        >>> for _ in range(5):
        ...     updates, state = tx.update({"w": jnp.ones(3, jnp.bfloat16)}, state, params)
        ...     params = ju.apply_updates(params, updates)
        >>> p, c = float(params["w"][0]), float(state.compensation["w"][0])
        >>> p, round(p + c, 5)       # bfloat16 nearest to 0.995; p + c: 1 - 5 * 1e-3
        (0.99609375, 0.995)
    """
    inner = optax.with_extra_args_support(tx)

    def init_fn(params):
        comp = jax.tree.map(lambda p: jnp.zeros_like(p) if _promoted(p, dtype) else _MASKED,
                            params)
        return KahanSummationState(comp, inner.init(_upcast(params, dtype)))

    def update_fn(updates, state, params=None, **extra_args):
        _require(params, "kahan_summation")
        comp = state.compensation
        grads = jax.tree.map(
            lambda g, c: g if _is_masked(c) else g.astype(dtype), updates, comp
        )
        inner_updates, inner_state = inner.update(grads, state.inner_state,
                                                  _upcast(params, dtype), **extra_args)

        def one(u, p, c):
            if _is_masked(c):
                return _Pair(u, c)
            p_wide = p.astype(dtype)
            exact = p_wide + (u.astype(dtype) + c.astype(dtype))
            t = exact.astype(p.dtype)
            new_c = (exact - t.astype(dtype)).astype(p.dtype)
            return _Pair(delta(t, p), new_c)

        pairs = jax.tree.map(one, inner_updates, params, comp)
        out = jax.tree.map(lambda pr: pr.update, pairs)
        new_comp = jax.tree.map(lambda pr: pr.compensation, pairs)
        return out, KahanSummationState(new_comp, inner_state)

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)

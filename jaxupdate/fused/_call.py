"""The fused step's calls: leaves grouped by dtype, in chunks, through ``jax.ffi.ffi_call``.

Layout (why chunks): XLA's compile time grows faster than linearly with the number of
``input_output_aliases`` pairs on one custom call (measured, jaxlib 0.10.2, 2-core CPU: 100
aliased buffers 0.03 s, 1,000 3.7 s, 2,000 39 s), so one call per dtype holding every leaf does
not scale. Calls of at most ``CHUNK`` aliased buffers keep that cost linear (1,000 leaves of
100 aliases each: 0.27 s), and each call still walks many leaves in one pass. Each call passes
the parameters and gradients of its leaves and the whole flat state buffers of their dtype
(``jaxupdate.fused._flat``) with the offset of its first leaf in them; the buffers go from one
call to the next. Empty leaves are not passed at all (nothing to update). Outside ``jit``,
``jaxupdate.step`` jits each chunk on its own (:func:`call_chunk`), since XLA's cost also grows
with the buffers of one computation.

The grouping is a :class:`Plan`, computed once per tree layout (``jaxupdate.step`` caches it):
a steady-state step then only slices its leaf lists, with no per-leaf Python.
"""

from __future__ import annotations

import math
from operator import itemgetter
from typing import Callable, NamedTuple, Optional

import jax
import numpy as np

# aliased buffers per call (parameters and the flat state buffers): inside a jitted step (one
# computation holding every call, compiled at once) CHUNK; eager steps, which jit each call on
# its own, EAGER_CHUNK: a call costs about 75 us of dispatch whatever it holds, so fewer, larger
# calls are faster (10M-parameter Adam on the 2-core test machine: 1,000 leaves 18.0 vs 19.1 ms,
# 10,000 leaves 77.5 vs 83.5 ms), while their compile time still fits the first-call budget
# (0.7 s at 1,000 leaves, 1.3 s at 10,000; jit(ju.step) of 1,000 leaves, benchmarks.fused_routes:
# 0.84 s with 96 per call, 1.14 s with 384, on an unloaded machine)
CHUNK = 96
EAGER_CHUNK = 384

_registered: dict = {}


def target(name: str, handler) -> str:
    """Registers ``handler`` (a numba cfunc) with XLA's CPU FFI registry once; returns the name."""
    full = f"jaxupdate_fused_{name}"
    if full not in _registered:
        jax.ffi.register_ffi_target(full, jax.ffi.pycapsule(handler.address), platform="cpu")
        _registered[full] = handler  # keeps the compiled code alive
    return full


class LayoutError(ValueError):
    """A chunk's leaves disagree with its scalars' dtype or with each other (raised while
    tracing the chunk, before its kernel exists): ``jaxupdate.step`` checks layouts before
    calling, so this only guards the kernel against reading out of bounds."""


class Plan(NamedTuple):
    """How one tree layout's leaves are cut into kernel calls.

    ``dtypes``: the dtype of each scalar vector; ``groups``: per dtype, its buffer's index in
    the flat state (:class:`jaxupdate.fused._flat.FlatLayout` ``group_dtypes``, which also
    counts dtypes whose leaves are all empty); ``calls``: ``(dtype index, start, stop)`` slices
    of the leaves in ``order``; ``offsets``: per call, the int32[2] ``(lo, hi)`` offset of its
    first leaf in the flat buffers; ``n_run``: ordered leaves the kernel updates (those after
    it are empty and passed through); ``gather`` / ``scatter``: leaf list -> ordered tuple and
    back (``None`` when the order is the leaves' own)."""

    dtypes: tuple
    groups: tuple
    calls: tuple
    offsets: tuple
    n_run: int
    gather: Optional[Callable]
    scatter: Optional[Callable]


def _getter(indices):
    # itemgetter of one index returns the item, not a 1-tuple
    if len(indices) == 1:
        i = indices[0]
        return lambda seq: (seq[i],)
    return itemgetter(*indices)


def _offset(n: int) -> np.ndarray:
    # int32 (lo, hi): jax without x64 has no int64 operand; lo + hi * 2**31 covers any size
    return np.array([n % 2**31, n // 2**31], np.int32)


def plan(params, n_state: int, chunk: int = CHUNK) -> Plan:
    """The :class:`Plan` of leaves ``params`` (anything with ``shape`` and ``dtype``): non-empty
    leaves grouped by dtype (sorted by name), at most ``chunk`` aliased buffers (parameters and
    the ``n_state`` flat state buffers) per call; the offsets are those of the flat layout
    (:func:`jaxupdate.fused._flat.layout_of`)."""
    from jaxupdate.fused._flat import layout_of

    lay = layout_of(params, None)
    groups: dict = {}
    empty = []
    for i, (s, g) in enumerate(zip(lay.shapes, lay.group)):
        if math.prod(s) == 0:
            empty.append(i)
        else:
            groups.setdefault(g, []).append(i)
    index = tuple(sorted(groups))  # group_dtypes are sorted by name already
    per_call = max(1, chunk - n_state)
    order, calls, offsets = [], [], []
    for d, g in enumerate(index):
        idx = groups[g]
        for s in range(0, len(idx), per_call):
            calls.append((d, len(order) + s, len(order) + min(s + per_call, len(idx))))
            offsets.append(_offset(lay.offset[idx[s]]))
        order += idx
    n_run = len(order)
    order += empty
    dtypes = tuple(lay.group_dtypes[g] for g in index)
    if order == list(range(len(order))):
        return Plan(dtypes, index, tuple(calls), tuple(offsets), n_run, None, None)
    inverse = [0] * len(order)
    for j, i in enumerate(order):
        inverse[i] = j
    return Plan(dtypes, index, tuple(calls), tuple(offsets), n_run, _getter(order),
                _getter(inverse))


def run(chunk_fn, plan_: Plan, scalars, offsets, params, grads, states):
    """Every call of ``plan_`` through ``chunk_fn(sc, offset, params, grads, buffers)`` (which
    returns ``(new_params, new_buffers)`` as :func:`call_chunk` does); ``scalars``: one vector
    per ``plan_.dtypes``; ``offsets``: ``plan_.offsets`` (or device copies of them);
    ``states``: per state field, its flat buffers (one per dtype group). The buffers of a group
    go through its calls one after the other (each call aliases them). Returns
    ``(new_params, new_states)``: the parameters in the leaves' order, the buffers as given."""
    if plan_.gather is not None:
        params, grads = list(plan_.gather(params)), list(plan_.gather(grads))
    states = [list(b) for b in states]
    new_p = []
    for (d, start, stop), off in zip(plan_.calls, offsets):
        gi = plan_.groups[d]
        out_p, out_b = chunk_fn(scalars[d], off, params[start:stop], grads[start:stop],
                                tuple(b[gi] for b in states))
        new_p += out_p
        for b, o in zip(states, out_b):
            b[gi] = o
    n = plan_.n_run
    if n < len(params):  # empty leaves, passed through
        new_p += params[n:]
    if plan_.scatter is not None:
        new_p = list(plan_.scatter(new_p))
    return new_p, states


def _check_chunk(sc, params, grads, buffers):
    for j, p in enumerate(params):
        if p.dtype != sc.dtype or (grads[j].shape, grads[j].dtype) != (p.shape, p.dtype):
            raise LayoutError(
                f"fused kernel call: leaf {j} is {p.dtype}{list(p.shape)} with scalars of "
                f"{sc.dtype}; its gradient must match it")
    for b in buffers:
        if b.dtype != sc.dtype or b.ndim != 1:
            raise LayoutError(f"fused kernel call: state buffer {b.dtype}{list(b.shape)} "
                              f"with scalars of {sc.dtype}")


def call_chunk(name: str, sc, offset, params, grads, buffers):
    """One FFI call updating ``params`` (a list) and the flat state ``buffers`` (a tuple, one
    per state field, the chunk's dtype group) in place (aliased), the first leaf's state at
    ``offset``; returns ``(new_params, new_buffers)``. Checks dtypes while tracing
    (:class:`LayoutError`); sizes are the caller's (``jaxupdate.step`` checks the layout)."""
    _check_chunk(sc, params, grads, buffers)
    operands, results, aliases = [sc, offset], [], {}
    for p, g in zip(params, grads):
        aliases[len(operands)] = len(results)
        operands += [p, g]
        results.append(jax.ShapeDtypeStruct(p.shape, p.dtype))
    for b in buffers:
        aliases[len(operands)] = len(results)
        operands.append(b)
        results.append(jax.ShapeDtypeStruct(b.shape, b.dtype))
    out = jax.ffi.ffi_call(name, results, input_output_aliases=aliases)(*operands)
    n = len(params)
    return list(out[:n]), tuple(out[n:])

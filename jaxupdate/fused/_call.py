"""The fused step's calls: leaves grouped by dtype, in chunks, through ``jax.ffi.ffi_call``.

Layout (why chunks): XLA's compile time grows faster than linearly with the number of
``input_output_aliases`` pairs on one custom call (measured, jaxlib 0.10.2, 2-core CPU: 100
aliased buffers 0.03 s, 1,000 3.7 s, 2,000 39 s), so one call per dtype holding every leaf does
not scale. Calls of at most ``CHUNK`` aliased buffers keep that cost linear (1,000 leaves of
100 aliases each: 0.27 s), and each call still walks many leaves in one pass. Empty leaves are
not passed at all (nothing to update). Outside ``jit``, ``jaxupdate.step`` jits each chunk on
its own (:func:`call_chunk`), since XLA's cost also grows with the buffers of one computation.

The grouping is a :class:`Plan`, computed once per tree layout (``jaxupdate.step`` caches it):
a steady-state step then only slices its leaf lists, with no per-leaf Python.
"""

from __future__ import annotations

import math
from operator import itemgetter
from typing import Callable, NamedTuple, Optional

import jax
import numpy as np

# aliased buffers per call (parameters and state arrays)
CHUNK = 96

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

    ``dtypes``: the dtype of each scalar vector; ``calls``: ``(dtype index, start, stop)``
    slices of the leaves in ``order``; ``n_run``: ordered leaves the kernel updates (those after
    it are empty and passed through); ``gather`` / ``scatter``: leaf list -> ordered tuple and
    back (``None`` when the order is the leaves' own)."""

    dtypes: tuple
    calls: tuple
    n_run: int
    gather: Optional[Callable]
    scatter: Optional[Callable]


def _getter(indices):
    # itemgetter of one index returns the item, not a 1-tuple
    if len(indices) == 1:
        i = indices[0]
        return lambda seq: (seq[i],)
    return itemgetter(*indices)


def plan(params, n_state: int) -> Plan:
    """The :class:`Plan` of leaves ``params`` (anything with ``shape`` and ``dtype``): non-empty
    leaves grouped by dtype (sorted by name), at most ``CHUNK`` aliased buffers (parameter and
    state arrays) per call."""
    groups: dict = {}
    empty = []
    for i, p in enumerate(params):
        if math.prod(p.shape) == 0:
            empty.append(i)
        else:
            groups.setdefault(np.dtype(p.dtype), []).append(i)
    dtypes = tuple(sorted(groups, key=str))
    per_call = max(1, CHUNK // (1 + n_state))
    order, calls = [], []
    for d, dt in enumerate(dtypes):
        idx = groups[dt]
        calls += [(d, len(order) + s, len(order) + min(s + per_call, len(idx)))
                  for s in range(0, len(idx), per_call)]
        order += idx
    n_run = len(order)
    order += empty
    if order == list(range(len(order))):
        return Plan(dtypes, tuple(calls), n_run, None, None)
    inverse = [0] * len(order)
    for j, i in enumerate(order):
        inverse[i] = j
    return Plan(dtypes, tuple(calls), n_run, _getter(order), _getter(inverse))


def run(chunk_fn, plan_: Plan, scalars, params, grads, states):
    """Every call of ``plan_`` through ``chunk_fn(sc, params, grads, states)`` (which returns
    ``(new_params, new_states)`` as :func:`call_chunk` does); ``scalars``: one vector per
    ``plan_.dtypes``. Returns ``(new_params, new_states)``, lists in the leaves' order."""
    if plan_.gather is not None:
        params, grads = list(plan_.gather(params)), list(plan_.gather(grads))
        states = [list(plan_.gather(s)) for s in states]
    new_p, new_s = [], [[] for _ in states]
    for d, start, stop in plan_.calls:
        out_p, out_s = chunk_fn(scalars[d], params[start:stop], grads[start:stop],
                                tuple(s[start:stop] for s in states))
        new_p += out_p
        for acc, out in zip(new_s, out_s):
            acc += out
    n = plan_.n_run
    if n < len(params):  # empty leaves, passed through
        new_p += params[n:]
        for acc, s in zip(new_s, states):
            acc += s[n:]
    if plan_.scatter is not None:
        new_p = list(plan_.scatter(new_p))
        new_s = [list(plan_.scatter(s)) for s in new_s]
    return new_p, new_s


def _check_chunk(sc, params, grads, states):
    for j, p in enumerate(params):
        like = (p.shape, p.dtype)
        if p.dtype != sc.dtype or (grads[j].shape, grads[j].dtype) != like or any(
                (s[j].shape, s[j].dtype) != like for s in states):
            raise LayoutError(
                f"fused kernel call: leaf {j} is {p.dtype}{list(p.shape)} with scalars of "
                f"{sc.dtype}; its gradient and state must match it")


def call_chunk(name: str, sc, params, grads, states):
    """One FFI call updating ``params`` (a list) and ``states`` (a tuple of lists, one per
    state field) in place (aliased); returns ``(new_params, new_states)``. Checks the layout
    while tracing (:class:`LayoutError`)."""
    _check_chunk(sc, params, grads, states)
    n_state = len(states)
    operands, results, aliases = [sc], [], {}
    for j, (p, g) in enumerate(zip(params, grads)):
        aliases[len(operands)] = len(results)
        operands += [p, g]
        results.append(jax.ShapeDtypeStruct(p.shape, p.dtype))
        for k in range(n_state):
            aliases[len(operands)] = len(results)
            operands.append(states[k][j])
            results.append(jax.ShapeDtypeStruct(p.shape, p.dtype))
    out = jax.ffi.ffi_call(name, results, input_output_aliases=aliases)(*operands)
    per = 1 + n_state
    return ([out[j * per] for j in range(len(params))],
            tuple([out[j * per + 1 + k] for j in range(len(params))] for k in range(n_state)))


def call(name: str, scalars_by_dtype, params, grads, states):
    """Runs target ``name`` on every non-empty leaf; returns ``(new_params, new_states)``.

    ``params``, ``grads``: lists of arrays; ``states``: a list (one per state field) of lists
    aligned with ``params``; ``scalars_by_dtype``: ``dtype -> 1-D array`` in that dtype.
    """
    p = plan(params, len(states))
    scalars = [scalars_by_dtype[dt] for dt in p.dtypes]
    return run(lambda sc, *a: call_chunk(name, sc, *a), p, scalars, params, grads, states)

"""The fused step's calls: leaves grouped by dtype, in chunks, through ``jax.ffi.ffi_call``.

Layout (why chunks): XLA's compile time grows faster than linearly with the number of
``input_output_aliases`` pairs on one custom call (measured, jaxlib 0.10.2, 2-core CPU: 100
aliased buffers 0.03 s, 1,000 3.7 s, 2,000 39 s), so one call per dtype holding every leaf does
not scale. Calls of at most ``CHUNK`` aliased buffers keep that cost linear (1,000 leaves of
100 aliases each: 0.27 s), and each call still walks many leaves in one pass. Empty leaves are
not passed at all (nothing to update). Outside ``jit``, ``jaxupdate.step`` jits each chunk on
its own (:func:`call_chunk`), since XLA's cost also grows with the buffers of one computation.
"""

from __future__ import annotations

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


def chunks(params, n_state: int):
    """``(dtype, [leaf indices])`` per call: non-empty leaves grouped by dtype, at most
    ``CHUNK`` aliased buffers (parameter and state arrays) per call."""
    groups: dict = {}
    for i, p in enumerate(params):
        if np.size(p) == 0:
            continue
        groups.setdefault(np.dtype(p.dtype), []).append(i)
    per_call = max(1, CHUNK // (1 + n_state))
    return [(dtype, idx[start : start + per_call])
            for dtype, idx in groups.items() for start in range(0, len(idx), per_call)]


def call_chunk(name: str, sc, params, grads, states):
    """One FFI call updating ``params`` (a list) and ``states`` (a tuple of lists, one per
    state field) in place (aliased); returns ``(new_params, new_states)``."""
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
    new_p = list(params)
    new_s = [list(s) for s in states]
    for dtype, chunk in chunks(params, len(states)):
        out_p, out_s = call_chunk(name, scalars_by_dtype[dtype], [params[i] for i in chunk],
                                  [grads[i] for i in chunk],
                                  tuple([f[i] for i in chunk] for f in states))
        for j, i in enumerate(chunk):
            new_p[i] = out_p[j]
            for k, f in enumerate(out_s):
                new_s[k][i] = f[j]
    return new_p, new_s

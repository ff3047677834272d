"""Fused optimizer steps: one pass per element over parameters, gradients and state, in place.

torch's ``fused=True``: ``ju.adam(..., fused=True)`` (also ``adamw``, ``sgd``, ``adagrad``,
``rmsprop``) returns the same transformation as without it, marked for :func:`jaxupdate.step`,
which on CPU runs a numba-compiled XLA typed-FFI kernel that reads ``p, g`` and the state once
and writes ``p`` and the state in place (buffers donated / aliased), a few calls for all
leaves. On GPU ``jaxupdate.step`` uses the XLA path (XLA:GPU fuses it itself).

numba is an optional dependency: ``pip install 'jaxupdate[fused]'`` (or ``pip install numba``).

A fused transformation's ``update`` called other than by ``ju.step`` (inside ``optax.chain``,
by a wrapper, directly) runs the XLA path and warns once (:class:`FusedOutsideStepWarning`).

State: on CPU, ``tx.init`` holds the kernel's state fields (Adam's ``exp_avg`` and
``exp_avg_sq``, SGD's ``momentum_buffer``, ...) flat, as :class:`FlatLeaves` (one 1-D buffer per
dtype per field), so that a step donates one array per parameter plus a few buffers instead of
one array per parameter per field (jax's per-array cost outside ``jit`` dominated the step at
thousands of leaves). :func:`unflatten_state` gives the per-leaf state ``fused=False`` holds
(same types, same values); :func:`flatten_like` goes back. ``torch_state_dict``,
``load_torch_state_dict``, ``to_torch`` and ``jaxupdate.checkpoint`` (which saves per leaf, so
fused and unfused checkpoints are interchangeable) convert at their boundary. A per-leaf state
(from ``fused=False``, a GPU, or :func:`unflatten_state`) is accepted by ``ju.step`` and runs
the XLA path.
"""

from __future__ import annotations

import importlib.util

from jaxupdate.fused._flat import FlatLayout, FlatLeaves, flatten_like, has_flat, unflatten_state
from jaxupdate.fused._specs import FusedOutsideStepWarning

INSTALL_HINT = (
    "fused=True on CPU needs numba, which jaxupdate uses to compile its fused kernels: "
    "pip install 'jaxupdate[fused]' (or: pip install numba). Without it, use fused=False "
    "(the default, same numbers)."
)


def numba_available() -> bool:
    """Whether numba can be imported (checked without importing it)."""
    return importlib.util.find_spec("numba") is not None


def require_numba() -> None:
    """Raises ``ImportError`` with the install command when numba is missing."""
    if not numba_available():
        raise ImportError(INSTALL_HINT)


__all__ = [
    "INSTALL_HINT",
    "FlatLayout",
    "FlatLeaves",
    "FusedOutsideStepWarning",
    "flatten_like",
    "has_flat",
    "numba_available",
    "require_numba",
    "unflatten_state",
]

"""Fused optimizer steps: one pass per element over parameters, gradients and state, in place.

torch's ``fused=True``: ``ju.adam(..., fused=True)`` (also ``adamw``, ``sgd``, ``adagrad``,
``rmsprop``) returns the same transformation as without it, marked for :func:`jaxupdate.step`,
which on CPU runs a numba-compiled XLA typed-FFI kernel that reads ``p, g`` and the state once
and writes ``p`` and the state in place (buffers donated / aliased), a few calls for all
leaves. On GPU ``jaxupdate.step`` uses the XLA path (XLA:GPU fuses it itself).

numba is an optional dependency: ``pip install 'jaxupdate[fused]'`` (or ``pip install numba``).

A fused transformation's ``update`` called other than by ``ju.step`` (inside ``optax.chain``,
by a wrapper, directly) runs the XLA path and warns once (:class:`FusedOutsideStepWarning`).
"""

from __future__ import annotations

import importlib.util

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


__all__ = ["INSTALL_HINT", "FusedOutsideStepWarning", "numba_available", "require_numba"]

"""Hyperparameters: Python numbers, 1-element arrays or schedules, resolved inside ``update``.

torch keeps hyperparameters as Python floats (or 1-element tensors) and does the scalar
arithmetic (``lr / bias_correction1``, ``1 - beta2``) in Python double precision before the
elementwise kernels cast the result to the parameter dtype. jaxupdate does the same: scalar
arithmetic happens in :func:`scalar_dtype` (float64 when ``jax_enable_x64`` is on, else
float32 with formulas chosen to avoid cancellation), and ``numerics.cast`` brings a scalar to the
dtype of the array it meets, as torch's kernels do (see :mod:`jaxupdate.numerics`, which
holds every helper that rounds like a torch kernel).
"""

from __future__ import annotations

import numbers
from typing import Any, Callable, Union

import jax
import jax.numpy as jnp
import numpy as np

Schedule = Callable[[jax.Array], Any]
Hyperparam = Union[float, int, jax.Array, np.ndarray, Schedule]


def scalar_dtype():
    """dtype of the scalar arithmetic: float64 under ``jax_enable_x64`` (torch's Python floats)."""
    return jnp.float64 if jax.config.jax_enable_x64 else jnp.float32


def is_number(h) -> bool:
    """A plain Python (or numpy scalar) number, known at construction time."""
    return isinstance(h, numbers.Real) and not isinstance(h, bool)


def is_schedule(h) -> bool:
    return callable(h) and not hasattr(h, "shape")


def is_static_zero(h) -> bool:
    """True for a Python 0: torch skips the branch (``if weight_decay != 0``) in that case only."""
    return is_number(h) and h == 0


def normalize(h, name: str):
    """Validates the form of a hyperparameter and returns it as a float, a 0-d array or a schedule.

    Arrays (numpy, jax, torch tensors, tracers) must hold exactly one element, as in torch
    (``Tensor lr must be 1-element``); they are reshaped to 0-d like torch's ``_to_scalar``.
    """
    if is_number(h):
        return float(h)
    if is_schedule(h):
        return h
    if hasattr(h, "shape"):
        size = int(np.prod(h.shape)) if len(h.shape) else 1
        if size != 1:
            raise ValueError(f"Tensor {name} must be 1-element")
        if type(h).__module__.startswith("torch"):
            # a copy: torch's schedulers fill a tensor lr in place
            h = h.detach().cpu().numpy().copy()
        return jnp.reshape(jnp.asarray(h), ())
    raise TypeError(
        f"{name} must be a float, a 1-element array or a schedule (a function of the "
        f"update count), got {type(h).__name__}"
    )


def concrete(h):
    """The value of ``h`` as a Python float when known at construction time, else None.

    Schedules and traced arrays (e.g. ``jax.grad`` with respect to ``lr``) cannot be
    validated eagerly; torch validates the same values at construction only.
    """
    if is_number(h):
        return float(h)
    if is_schedule(h) or isinstance(h, jax.core.Tracer):
        return None
    try:
        return float(np.asarray(h).reshape(()))
    except (TypeError, ValueError, jax.errors.ConcretizationTypeError):
        return None


def resolve(h, count):
    """Value of hyperparameter ``h`` at update ``count`` (updates already applied).

    Python numbers are kept as Python floats (weakly typed, so they take the dtype of whatever
    they meet, like torch's Python scalars); arrays and schedule outputs become 0-d arrays in
    :func:`scalar_dtype`.
    """
    if is_number(h):
        return float(h)
    if is_schedule(h):
        value = h(count)
        if np.size(value) != 1:
            raise ValueError(
                f"schedule {getattr(h, '__name__', h)!r} returned a value of shape "
                f"{np.shape(value)}: a schedule must return a scalar (or a 1-element array)"
            )
        h = value
    return jnp.reshape(jnp.asarray(h, dtype=scalar_dtype()), ())

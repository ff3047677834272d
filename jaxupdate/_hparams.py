"""Hyperparameters: Python numbers, 1-element arrays or schedules, resolved inside ``update``.

torch keeps hyperparameters as Python floats (or 1-element tensors) and does the scalar
arithmetic (``lr / bias_correction1``, ``1 - beta2``) in Python double precision before the
elementwise kernels cast the result to the parameter dtype. jaxupdate does the same: scalar
arithmetic happens in :func:`scalar_dtype` (float64 when ``jax_enable_x64`` is on, else
float32 with formulas chosen to avoid cancellation), and :func:`cast` brings a scalar to the
dtype of the array it meets, as torch's kernels do.
"""

from __future__ import annotations

import math
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


# leaf_map's nested tracing; off only to check that it changes nothing (tests)
NEST_LEAVES = True


def leaf_map(fn: Callable, tree, *rest):
    """``jax.tree.map(fn, tree, *rest)``; under a trace (``jit``, ``grad``, ``vmap``), ``fn``
    goes through ``jax.jit``, so that it is traced once per distinct leaf shape and dtype
    rather than once per leaf.

    A model with a thousand parameter arrays has a handful of shapes; tracing the per-leaf
    arithmetic of an update once per leaf was most of the time jax spent before compiling
    (tracing a 1,000-leaf Adam step: 1.0 s, 0.19 s this way; ``python -m
    benchmarks.first_call``). XLA inlines the nested calls before optimizing, so the compiled step, and
    every number it computes, is the same. Outside a trace (eager calls) ``fn`` runs op by op
    as before: a ``jax.jit`` of a fresh closure would compile at every call there. Trees
    whose leaves mostly differ in shape (the usual few-leaf test problem) gain nothing from a
    nested trace and are mapped directly too.
    """
    leaves = jax.tree.leaves(tree)
    if NEST_LEAVES and len(leaves) >= 8 and any(isinstance(x, jax.core.Tracer) for x in leaves):
        distinct = {(np.shape(x), getattr(x, "dtype", None)) for x in leaves}
        if 2 * len(distinct) <= len(leaves):
            fn = jax.jit(fn)
    return jax.tree.map(fn, tree, *rest)


def cast(s, x):
    """Scalar ``s`` in the dtype of array ``x``, as torch casts a Python scalar to a tensor's."""
    # lax directly, not jnp.asarray: this runs once per leaf and per scalar at trace time, and
    # jnp.asarray's argument handling was a tenth of a 1,000-leaf step's tracing (same HLO)
    dt = x.dtype
    if getattr(s, "dtype", None) == dt and not getattr(s, "weak_type", False):
        return s
    return jax.lax.convert_element_type(s, dt)


def mul_scalar(x, s):
    """torch's ``x.mul(s)`` for a Python scalar ``s``: for bfloat16 / float16 torch multiplies
    in float32 by the float32 scalar and rounds once ("opmath"; measured: 0 of 200k elements
    differ), where ``x * cast(s, x)`` would first round ``s`` to the dtype (0.9 -> 0.8984375
    in bfloat16). ``add(y, alpha=s)`` is different: there torch does round ``alpha`` to the
    dtype (see :func:`add_scaled`)."""
    if x.dtype in (jnp.bfloat16, jnp.float16):
        return (x.astype(jnp.float32) * jnp.asarray(s, jnp.float32)).astype(x.dtype)
    return x * cast(s, x)


def delta(new, old):
    """The update taking ``old`` to ``new`` under ``apply_updates``: ``new - old``, except 0
    where ``old`` is infinite and stays so. torch updates in place (``inf + finite = inf``);
    ``new - old`` would be ``inf - inf = NaN`` there. Only infinite entries are special-cased,
    so derivatives (hypergradients) are unchanged everywhere else."""
    if new.dtype != old.dtype or new.shape != old.shape or jnp.iscomplexobj(old):
        # complex parameters (abs is real there) and mixed dtypes: jnp's promotion
        return jnp.where(jnp.isinf(old) & (new == old), jnp.zeros_like(new), new - old)
    # the same, spelled in lax: the same HLO, traced in a third of the time (once per leaf)
    lax = jax.lax
    keep = lax.bitwise_and(lax.eq(lax.abs(old), lax.full_like(old, np.inf)), lax.eq(new, old))
    return lax.select(keep, lax.full_like(new, 0), lax.sub(new, old))


def step_float(count):
    """``count + 1`` (torch's ``step`` after its increment) as a float in scalar_dtype."""
    return jnp.asarray(count, scalar_dtype()) + 1


def bias_correction(beta, step):
    """``1 - beta ** step``, as torch computes it in Python double precision.

    With float64 available the formula is torch's own. In float32, ``1 - beta ** step``
    cancels catastrophically (beta2 = 0.999 at step 1 keeps about 3 digits), so it is
    computed as ``-expm1(step * log(beta))`` with ``log(beta)`` taken in double precision
    when ``beta`` is a Python number: correct to a few float32 ulps at every step.
    """
    dt = scalar_dtype()
    step = jnp.asarray(step, dt)
    if dt == jnp.float64:
        return 1 - jnp.asarray(beta, dt) ** step
    if is_number(beta):
        log_beta = math.log(beta) if beta > 0 else -math.inf
    else:
        log_beta = jnp.log(jnp.asarray(beta, dt))
    return -jnp.expm1(step * log_beta)



def fused_dtype(dt):
    """The dtype in which to compute ``x + a * b`` of dtype ``dt`` once and round once, as
    torch's CPU kernels do (a fused multiply-add for float32; float32 "opmath" for float16 and
    bfloat16), or None where computing in ``dt`` itself already rounds as torch does.

    float32 needs float64 for that, so without x64 it is None (one rounding per operation).
    """
    if dt == jnp.float32 and jax.config.jax_enable_x64:
        return jnp.float64
    if dt in (jnp.float16, jnp.bfloat16):
        return jnp.float32
    return None


def add_scaled(x, alpha, y):
    """torch's ``x.add(y, alpha=alpha)``: ``x + alpha * y`` rounded as torch's CPU kernel rounds it.

    For float32, torch's kernel is a fused multiply-add (one rounding); computing in float64
    and rounding once reproduces it bit for bit when float64 is enabled. For float16 and
    bfloat16 torch computes in float32 ("opmath") and rounds once at the end; so does this.
    Otherwise ``x + alpha * y`` in the dtype (XLA may contract it into an FMA itself).
    """
    dt = x.dtype
    wide = fused_dtype(dt)
    if wide is None:
        return x + cast(alpha, y) * y
    # alpha is rounded to the tensor's dtype first, as torch casts the Python scalar
    a = jnp.asarray(jnp.asarray(alpha, dt), wide)
    return (x.astype(wide) + a * y.astype(wide)).astype(dt)

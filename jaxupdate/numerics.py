"""torch's CPU rounding, written once: every helper that computes as a torch kernel rounds.

torch's optimizers, schedulers, ``swa_utils`` and clipping do their elementwise arithmetic in
ATen's CPU kernels (``add`` with ``alpha`` and ``addcmul`` as fused multiply-adds, ``lerp`` with
two formulas, true division), and their scalar arithmetic in Python double precision. Each
helper here reproduces one such kernel and says which; the optimizer blocks, ``swa_utils``,
``precision``, ``lr_scheduler`` and ``clip_grad`` use these instead of their own copies.

float32 bit for bit needs ``jax_enable_x64``: a fused multiply-add rounds once, and float64
(exact products of float32 values) is how it is emulated. Without x64 every helper computes in
the array's dtype (one rounding per operation, ~1e-7 relative per step).
"""

from __future__ import annotations

import math
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from jaxupdate._hparams import is_number, scalar_dtype


def leaf_map(fn: Callable, tree, *rest):
    """``jax.tree.map(fn, tree, *rest)``; under a trace (``jit``, ``grad``, ``vmap``), ``fn``
    goes through ``jax.jit``, so that it is traced once per distinct leaf shape and dtype
    rather than once per leaf.

    A model with a thousand parameter arrays has a handful of shapes; tracing the per-leaf
    arithmetic of an update once per leaf was most of the time jax spent before compiling
    (tracing a 1,000-leaf Adam step: 1.0 s, 0.19 s this way; ``python -m
    benchmarks.first_call``). XLA inlines the nested calls before optimizing, so the compiled
    step, and every number it computes, is the same (``tests/test_tracing.py``). Outside a
    trace (eager calls) ``fn`` runs op by op: a ``jax.jit`` of a fresh closure would compile
    at every call there. Every optimizer block maps its per-leaf arithmetic with it. Trees
    whose leaves mostly differ in shape (the usual few-leaf test problem) gain nothing from a
    nested trace and are mapped directly too.
    """
    leaves = jax.tree.leaves(tree)
    if len(leaves) >= 8 and any(isinstance(x, jax.core.Tracer) for x in leaves):
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


def delta(new, old, wide: bool = False):
    """The update taking ``old`` to ``new`` under ``apply_updates``: ``new - old``, except 0
    where ``old`` is infinite and stays so. torch updates in place (``inf + finite = inf``);
    ``new - old`` would be ``inf - inf = NaN`` there. Only infinite entries are special-cased,
    so derivatives (hypergradients) are unchanged everywhere else.

    ``apply_updates`` lands on ``new`` exactly when ``new - old`` is exact in the dtype, which
    Sterbenz's lemma guarantees for ``old / 2 <= new <= 2 * old``. It can fail when the step
    is larger than the result (``|new| < |new - old|``: a parameter crossing or nearing zero);
    measured for float32 SGD (lr = 0.1, unit normal parameters and gradients), 3.2% of
    elements after one step. With ``wide=True`` (``tx.update(..., wide_updates=True)``) the
    difference is taken in :func:`fused_dtype` (float64 for float32 under x64), where it is
    exact, so ``apply_updates`` (``param + update`` in float64, then float32) lands on ``new``
    bit for bit; the update then has that wider dtype.

    Example::

        >>> import jax, jax.numpy as jnp, jaxupdate as ju
        >>> jax.config.update("jax_enable_x64", True)
        >>> p, g = jnp.ones(3, jnp.float32), jnp.ones(3, jnp.float32)
        >>> tx = ju.sgd(lr=0.1)
        >>> u, _ = tx.update(g, tx.init(p), p, wide_updates=True)     # float64 updates
        >>> p = ju.apply_updates(p, u)                                 # float32, as torch's
    """
    w = fused_dtype(old.dtype) if wide else None
    if w is not None:
        new, old = new.astype(w), old.astype(w)
    if new.dtype != old.dtype or new.shape != old.shape or jnp.iscomplexobj(old):
        # complex parameters (abs is real there) and mixed dtypes: jnp's promotion
        return jnp.where(jnp.isinf(old) & (new == old), jnp.zeros_like(new), new - old)
    # the same, spelled in lax: the same HLO, traced in a third of the time (once per leaf)
    lax = jax.lax
    keep = lax.bitwise_and(lax.eq(lax.abs(old), lax.full_like(old, np.inf)), lax.eq(new, old))
    return lax.select(keep, lax.full_like(new, 0), lax.sub(new, old))


def wide_updates(extra_args) -> bool:
    """Whether ``tx.update(..., wide_updates=True)`` asked for exact (wider) updates, see
    :func:`delta`. An ``update`` keyword, not a global switch: one call may ask, another not."""
    return bool(extra_args.get("wide_updates", False))


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


def true_divide(x, d):
    """``x / d`` correctly rounded, as torch's CPU division (and Python's) rounds it.

    XLA rewrites a division by a broadcast scalar or a constant into a multiplication by its
    reciprocal (two roundings: ``x / 3`` differs from it in about a third of the elements;
    ``1 - 800 * (1 / 800)`` is ``-1.1e-16``, not 0) and reassociates ``(pi * t) / T``.
    Dividing by a materialised array of ``x``'s shape behind an optimization barrier keeps
    the division as written; the barrier is transparent to ``grad`` and ``vmap``.
    """
    d = jnp.asarray(d)
    shape = jnp.shape(x)
    if d.shape != shape and len(shape) > d.ndim:
        d = jnp.broadcast_to(d, shape)
    return x / jax.lax.optimization_barrier(d)


def unfused(x):
    """``x`` rounded on its own before it is added to something.

    XLA:CPU fuses ``a * b + c`` into one fused multiply-add under ``jit`` (one rounding;
    measured: 24% of random float64 triples differ from Python's ``a * b + c``, and every
    float32 element equals the FMA), while torch's schedulers do that arithmetic in Python
    and its kernels round ``mul_`` before ``add_``, rounding the product first. LLVM fuses
    only a product with a single use, and folds selects it can prove redundant; this select
    gives the product other uses and cannot be folded (``x * 0.5 * 2`` in its place is
    simplified away and the product fused again: measured). It changes no value: its other
    branch is taken only for infinite ``x``, where ``x * 2 == x``.
    """
    x = jnp.asarray(x)
    return jnp.where(jnp.abs(x) > jnp.finfo(x.dtype).max, x * 2.0, x)


# --------------------------------------------------------------------------------------------
# torch's CPU kernels, one helper each. "Measured" below: torch 2.13 CPU (AVX512 and the
# scalar tail: 100,003 random float32 elements, 100% bit-identical with x64 on); the tests
# are tests/test_bit_identity.py::test_*_kernel.


def add_scaled(x, alpha, y):
    """torch's ``x.add(y, alpha=alpha)``: ``x + alpha * y`` rounded as torch's CPU kernel rounds it.

    For float32, torch's kernel is a fused multiply-add (one rounding; measured 100%, while
    ``x + alpha * y`` rounded twice agrees on 72-99.7% of elements); computing in float64 and
    rounding once reproduces it bit for bit when float64 is enabled. For float16 and bfloat16
    torch computes in float32 ("opmath") and rounds once at the end; so does this. Otherwise
    ``x + alpha * y`` in the dtype (under ``jit`` XLA:CPU contracts it into the same fused
    multiply-add; measured 100% in float32).

    Example::

        >>> import jax.numpy as jnp
        >>> from jaxupdate import numerics
        >>> p = numerics.add_scaled(jnp.ones(3), -0.1, jnp.ones(3))  # param.add_(g, alpha=-lr)
    """
    dt = x.dtype
    wide = fused_dtype(dt)
    if wide is None:
        return x + cast(alpha, y) * y
    # alpha is rounded to the tensor's dtype first, as torch casts the Python scalar
    a = jnp.asarray(jnp.asarray(alpha, dt), wide)
    # y widened with its rounding kept: with alpha = +-1 XLA drops the multiplication, and a
    # product y would be fused into the addition (see widen)
    return (widen(x, wide) + a * widen(y, wide)).astype(dt)


def widen(x, wide):
    """``x`` converted to ``wide``, with a product that made ``x`` kept rounded to ``x``'s dtype.

    LLVM folds ``fpext(a * b) + c`` into ``fma(fpext a, fpext b, c)`` (measured under ``jit``:
    every element equals the fused result, 24% differ from rounding ``a * b`` first), which
    would skip the float32 rounding of ``a * b`` that torch does (``buf.mul_(momentum)``
    before ``add_``; an optimization barrier does not prevent it, :func:`unfused` does).
    """
    return unfused(x).astype(wide)


def addcmul(x, value, t1, t2):
    """torch's ``x.addcmul(t1, t2, value=value)`` rounded as its CPU kernel rounds it.

    Measured: the kernel is ``fma(value * t1, t2, x)``, the product ``value * t1`` rounded
    first (100%; ``fma(value, t1 * t2, x)``: 77-99.8%). float32 is emulated in float64 (exact
    product, one rounding of the sum, then float32) when float64 is enabled; otherwise
    ``jit`` lets XLA contract ``x + s * t2`` into the same fused multiply-add.
    """
    scaled = t1 if isinstance(value, float) and value == 1.0 else unfused(cast(value, t1) * t1)
    dt = x.dtype
    wide = fused_dtype(dt)
    if wide is None:
        return x + scaled * t2
    return (widen(x, wide) + widen(scaled, wide) * t2.astype(wide)).astype(dt)


def addcdiv_term(value, t1, t2):
    """The term torch's CPU ``x.addcdiv(t1, t2, value=value)`` adds to ``x``: ``(value * t1) / t2``.

    Measured: the kernel computes ``x + (value * t1) / t2``, each operation rounded (100%;
    ``x + value * (t1 / t2)``: 95-99.7%, a fused ``fma(value, t1 / t2, x)``: 92-99.5%). A
    division between the product and the sum leaves XLA nothing to contract, so returning
    this term as the update makes ``apply_updates`` (``param + update``) round as torch.
    """
    return unfused(cast(value, t1) * t1) / t2


def addcdiv(x, value, t1, t2):
    """torch's CPU ``x.addcdiv(t1, t2, value=value)``: ``x + (value * t1) / t2``, see
    :func:`addcdiv_term`."""
    return unfused(x) + addcdiv_term(value, t1, t2)


def lerp(start, end, weight):
    """torch's CPU ``start.lerp_(end, weight)`` for a scalar weight, formula for formula.

    The weight is first rounded to the tensor's (real) dtype, then ATen picks
    ``start + w * (end - start)`` when ``|w| < 0.5`` and ``end - (1 - w) * (end - start)``
    otherwise (``1 - w`` in that dtype), each a fused multiply-add in its vectorized loop
    and scalar tail alike (measured 100% for w = 0.001, 0.1, 0.5, 0.9, 0.999; rounding the
    product first: 88-99.7%). float32 is emulated in float64 when float64 is enabled.

    Example::

        >>> import jax.numpy as jnp
        >>> from jaxupdate import numerics
        >>> m = numerics.lerp(jnp.zeros(3), jnp.ones(3), 0.1)   # Adam's exp_avg.lerp_(g, 0.1)
    """
    real = jnp.finfo(start.dtype).dtype
    # float32 only: float16 / bfloat16 keep their own (one rounding per operation) formulas
    wide = fused_dtype(start.dtype) if start.dtype == jnp.float32 else None
    diff = end - start

    def small(w):
        if wide is None:
            return start + w * diff
        return (widen(start, wide) + w.astype(wide) * widen(diff, wide)).astype(start.dtype)

    def large(w):
        one_minus = jnp.asarray(1, real) - w
        if wide is None:
            return end - one_minus * diff
        # end may be a product (Adafactor's g * g): kept rounded, see widen
        return (widen(end, wide) - one_minus.astype(wide) * widen(diff, wide)).astype(end.dtype)

    if is_number(weight):
        w = jax.lax.convert_element_type(weight, real)
        return small(w) if abs(weight) < 0.5 else large(w)
    w = jnp.asarray(weight).astype(real)
    return jnp.where(jnp.abs(w) < 0.5, small(w), large(w))


def ema_square(avg, g, decay):
    """torch's ``avg.mul_(decay).addcmul_(g, g, value=1 - decay)``: the product ``avg * decay``
    rounded (``mul_``), then :func:`addcmul`."""
    return addcmul(unfused(avg * cast(decay, avg)), 1.0 - decay, g, g)


def scale(x, s):
    """torch's ``x.mul_(s)`` (or ``x * s``) for a scalar ``s`` (:func:`mul_scalar`), rounded
    on its own: kept from being contracted by XLA into a following addition (:func:`unfused`)."""
    return unfused(mul_scalar(x, s))

"""Muon's building blocks in torch's operation order (``torch/optim/_muon.py``).

``scale_by_torch_muon`` keeps the momentum buffer and orthogonalizes the (Nesterov) momentum
with torch's bfloat16 Newton-Schulz iteration; ``torch_muon_update`` applies decoupled weight
decay and the shape-adjusted learning rate.
"""

from __future__ import annotations

import math
from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp
import optax

from jaxupdate._hparams import is_schedule, is_static_zero, resolve
from jaxupdate.numerics import add_scaled, cast, delta, leaf_map, lerp, wide_updates
from jaxupdate.transforms.common import block, require_params, schedules_in

# torch's defaults (Keller Jordan's Muon)
EPS = 1e-7
DEFAULT_A = 3.4445
DEFAULT_B = -4.7750
DEFAULT_C = 2.0315
DEFAULT_NS_STEPS = 5

_BF16 = jnp.bfloat16
_F32 = jnp.float32


def _mm(a, b):
    # bfloat16 operands, float32 accumulation (as torch's CPU bfloat16 gemm)
    return jnp.matmul(a, b, preferred_element_type=_F32)


def _addmm_epilogue(beta, c, acc):
    """``bf16(fma(beta, c, acc))``: torch's bfloat16 ``addmm`` output ``beta * C + alpha * A @ B``.

    torch's CPU kernel (oneDNN) computes ``alpha * (A @ B)`` in float32 and adds ``beta * C``
    with a fused multiply-add, then rounds to bfloat16 (measured against torch 2.13 on an
    AVX512-BF16 CPU: no mismatch in 175,000 elements of Newton-Schulz iterates, where rounding
    ``beta * C`` separately gives about 1 differing bfloat16 value in 10,000). The iteration
    cancels ``b * G`` against ``c * G @ G``, so the single rounding matters. JAX has no fma:
    ``beta`` (float32) is split into an 8-bit head and a 16-bit tail, whose products with the
    bfloat16 ``c`` (8 bits) are exact in float32, and the three terms are added with an
    error-free TwoSum, giving the correctly rounded float32 sum (up to ties far below a
    bfloat16 ulp).
    """
    beta_hi = beta.astype(_BF16).astype(_F32)
    beta_lo = beta - beta_hi
    cf = c.astype(_F32)
    p_hi = beta_hi * cf
    p_lo = beta_lo * cf
    t = p_hi + acc
    v = t - p_hi
    err = (p_hi - (t - v)) + (acc - v)
    return (t + (err + p_lo)).astype(_BF16)


def zeropower_via_newtonschulz(grad, ns_coefficients, ns_steps: int, eps):
    """torch's ``_zeropower_via_newtonschulz``, rounding for rounding.

    The iteration runs in bfloat16: every matrix product accumulates in float32 and is rounded
    to bfloat16 once, ``addmm(C, A, B, beta, alpha)`` is ``fma(beta, C, alpha * (A @ B))`` in
    float32 rounded to bfloat16, and elementwise ops compute in float32 and round to bfloat16,
    as torch's CPU kernels do. A float64 input goes to bfloat16 through float32, as torch's
    ``.bfloat16()`` does. Wide matrices are iterated as they are, tall ones transposed::

        X = bf16(G); X = X.T if rows > cols
        X = X / max(norm(X), eps)
        repeat ns_steps times:
            A = X @ X.T
            B = b * A + c * (A @ A)
            X = a * X + B @ X

    Returns a bfloat16 array of ``grad``'s shape.
    """
    if ns_steps >= 100:
        raise ValueError("Number of steps must be less than 100 for computational efficiency")
    if grad.ndim != 2:
        raise ValueError("Input tensor gradient must be a 2D matrix")
    if len(ns_coefficients) != 3:
        raise ValueError("Coefficients must be a tuple of exactly 3 values")
    a, b, c = (jnp.asarray(x, _F32) for x in ns_coefficients)
    x = grad.astype(_F32).astype(_BF16) if grad.dtype == jnp.float64 else grad.astype(_BF16)
    transpose = grad.shape[0] > grad.shape[1]
    if transpose:
        x = x.T
    xf = x.astype(_F32)
    norm = jnp.sqrt(jnp.sum(xf * xf)).astype(_BF16)
    x = (xf / jnp.maximum(norm.astype(_F32), jnp.asarray(eps, _F32))).astype(_BF16)

    def iteration(_, x):
        gram = _mm(x, x.T).astype(_BF16)
        gram_update = _addmm_epilogue(b, gram, c * _mm(gram, gram))
        return _addmm_epilogue(a, x, _mm(gram_update, x))

    x = jax.lax.fori_loop(0, ns_steps, iteration, x)
    return x.T if transpose else x


def adjust_lr_ratio(adjust_lr_fn: Optional[str], shape) -> float:
    """torch's ``_adjust_lr`` factor for a parameter of ``shape`` (rows A, columns B).

    ``None`` or ``"original"``: ``sqrt(max(1, A / B))`` (Keller Jordan);
    ``"match_rms_adamw"``: ``0.2 * sqrt(max(A, B))`` (Moonshot); anything else: 1.
    """
    A, B = shape[:2]
    if adjust_lr_fn is None or adjust_lr_fn == "original":
        return math.sqrt(max(1, A / B))
    if adjust_lr_fn == "match_rms_adamw":
        return 0.2 * math.sqrt(max(A, B))
    return 1.0


class TorchMuonState(NamedTuple):
    momentum_buffer: optax.Updates


def scale_by_torch_muon(
    momentum=0.95,
    nesterov: bool = True,
    ns_coefficients=(DEFAULT_A, DEFAULT_B, DEFAULT_C),
    eps=EPS,
    ns_steps: int = DEFAULT_NS_STEPS,
) -> optax.GradientTransformationExtraArgs:
    """Muon's direction: orthogonalized (Nesterov) momentum, as ``_single_tensor_muon``.

    ``buf = lerp(buf, g, 1 - momentum)`` (zero-initialised); the direction is
    ``NS(lerp(g, buf, momentum))`` with ``nesterov``, else ``NS(buf)``, where ``NS`` is
    :func:`zeropower_via_newtonschulz`. The bfloat16 result is returned in the gradient's
    dtype (exactly). Each leaf must be a matrix.
    """

    def init_fn(params):
        return TorchMuonState(jax.tree.map(jnp.zeros_like, params))

    def update_fn(updates, state, params=None, count=None, **extra_args):
        del params, extra_args
        mom = resolve(momentum, count)
        coefs = tuple(resolve(x, count) for x in ns_coefficients)
        e = resolve(eps, count)

        # Weights go to lerp in the gradient's dtype, so that 1 - w is taken in that dtype
        # (torch's CPU lerp casts its Python weight to the tensor's dtype first).
        bufs = leaf_map(lambda b, g: lerp(b, g, cast(1.0 - mom, g)), state.momentum_buffer,
                            updates)
        if nesterov:
            directions = leaf_map(lambda g, b: lerp(g, b, cast(mom, g)), updates, bufs)
        else:
            directions = bufs
        out = leaf_map(
            lambda u: zeropower_via_newtonschulz(u, coefs, ns_steps, e).astype(u.dtype),
            directions,
        )
        return out, TorchMuonState(bufs)

    return block(init_fn, update_fn, needs_count=schedules_in(momentum, ns_coefficients, eps))


def torch_muon_update(lr=1e-3, weight_decay=0.1, adjust_lr_fn: Optional[str] = None):
    """Muon's parameter change from direction ``O``, torch's last two lines::

        param = param * (1 - lr * weight_decay)
        param = param - lr * adjust_lr_ratio(adjust_lr_fn, param.shape) * O

    The returned update is the new parameter minus the old one (exact while the step is
    smaller than the parameter), so ``apply_updates`` lands on torch's rounding.

    A Python ``lr`` (or a schedule) makes ``lr * ratio`` and ``1 - lr * weight_decay`` Python
    (double) arithmetic; an array ``lr`` makes them arithmetic in its dtype, as a torch
    tensor ``lr`` does (``torch.tensor(1e-3)`` is float32, so torch rounds both to float32).
    """
    decay = not is_static_zero(weight_decay)
    lr_dtype = None if is_schedule(lr) else getattr(lr, "dtype", None)

    def init_fn(params):
        del params
        return optax.EmptyState()

    def update_fn(updates, state, params=None, count=None, **extra_args):
        wide = wide_updates(extra_args)
        require_params(params, "muon")
        lr_t = resolve(lr, count)
        if lr_dtype is not None:
            lr_t = lr_t.astype(lr_dtype)
        # Python numbers stay weakly typed: an array lr keeps its dtype through these products
        if decay:
            wd = resolve(weight_decay, count)
            factor = 1 - lr_t * (wd if lr_dtype is None else jnp.asarray(wd, lr_dtype))

        def one(o, p):
            # torch multiplies by 1 - lr * 0 = 1 too: exact, so skipped for a literal 0
            p_new = p * cast(factor, p) if decay else p
            ratio = adjust_lr_ratio(adjust_lr_fn, p.shape)
            adjusted_lr = lr_t * (ratio if lr_dtype is None else jnp.asarray(ratio, lr_dtype))
            return delta(add_scaled(p_new, -adjusted_lr, o), p, wide)

        updates = leaf_map(one, updates, params)
        return updates, state

    return block(init_fn, update_fn, needs_count=schedules_in(lr, weight_decay))

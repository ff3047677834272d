"""The per-element arithmetic of the fused optimizers, as numba loops, and their XLA handlers.

Each loop repeats, operation for operation, what jaxupdate's XLA path computes for one element
(``jaxupdate/transforms``: ``lerp``, ``ema_square``, ``add_scaled``, ``addcmul``, ``delta``,
then ``optax.apply_updates``), which follows torch's ``_single_tensor_<name>`` functions. The
scalars arrive already resolved and cast to the parameters' dtype by the JAX code of the XLA
path (``jaxupdate.fused._specs``), so both paths multiply by the same numbers.

Fused multiply-adds: XLA's CPU backend lets LLVM contract ``a * b + c`` into one FMA
(measured: ``x + a * y`` under ``jit`` is ``fma(a, y, x)``, not two roundings), and where both
operands of an addition are products it contracts the first one (``v * b2 + (c * g) * g`` is
``fma(v, b2, (c * g) * g)``: 100% of 100k elements, the other choice 75%). The loops write those
FMAs explicitly (:func:`jaxupdate.fused._ffi.fma`) and otherwise compile without fast-math
(IEEE ``sqrt`` and division, no reassociation), which keeps them bit-identical to the XLA path
(``tests/test_fused.py``).
``wide`` is the ``jax_enable_x64`` float32 case where ``add_scaled`` / ``addcmul`` compute in
float64 and round once (torch's single-rounding CPU kernels).
"""

from __future__ import annotations

import functools

import numpy as np
from numba import carray, cfunc, njit, types

from jaxupdate.fused._ffi import F32, F64, f32p, f64p, fma, leaf, leaves, round_like

_OPTS = dict(error_model="numpy", cache=True)


@njit(inline="always", **_OPTS)
def _add_scaled(x, a, y, wide):
    # jaxupdate._hparams.add_scaled: x + a * y, rounded once (float64 then float32) when wide
    if wide:
        return round_like(np.float64(x) + np.float64(a) * np.float64(y), x)
    return fma(a, y, x)


@njit(inline="always", **_OPTS)
def _addcmul1(x, t1, t2, wide):
    # jaxupdate.transforms.adaptive.addcmul with value 1.0
    if wide:
        return round_like(np.float64(x) + np.float64(t1) * np.float64(t2), x)
    return fma(t1, t2, x)


@njit(inline="always", **_OPTS)
def _delta(new, old):
    # jaxupdate._hparams.delta: 0 where old is infinite and stays so (inf - inf would be NaN)
    if abs(old) == np.inf and new == old:
        return new - new if new == new else new  # a zero of the right type
    return new - old


@njit(inline="always", **_OPTS)
def _maximum(a, b):
    # jnp.maximum: NaN if either is NaN
    if a != a or b != b:
        return a + b
    return a if a > b else b


@njit(inline="always", **_OPTS)
def _lerp(start, end, small, w, one_minus_w):
    # jaxupdate.transforms.moments.lerp: ATen's two formulas, chosen by |w| < 0.5
    if small:
        return fma(w, end - start, start)
    return fma(start - end, one_minus_w, end)  # end - (end - start) * (1 - w), contracted


@njit(inline="always", **_OPTS)
def _ema_square(avg, g, decay, one_minus_decay):
    # jaxupdate.transforms.moments.ema_square: avg * decay + (1 - decay) * g * g
    return fma(avg, decay, one_minus_decay * g * g)


@njit(inline="always", **_OPTS)
def _grad(g, p, maximize, coupled, wd, wide):
    if maximize:
        g = -g
    if coupled:
        g = _add_scaled(g, wd, p, wide)
    return g


# ------------------------------------------------------------------------------------------
# Adam / AdamW. scalars: see jaxupdate.fused._specs.adam_scalars


@njit(**_OPTS)
def adam_loop(sc, p, g, m, v, vm, n, amsgrad):
    maximize, coupled, wd = sc[0] != 0, sc[1] != 0, sc[2]
    small, w, omw, b2, omb2 = sc[3] != 0, sc[4], sc[5], sc[6], sc[7]
    inv_bc2s, eps, ibc1, neglr = sc[8], sc[9], sc[10], sc[11]
    dwd, factor, wide = sc[12] != 0, sc[13], sc[14] != 0
    for i in range(n):
        pi = p[i]
        gi = _grad(g[i], pi, maximize, coupled, wd, wide)
        mi = _lerp(m[i], gi, small, w, omw)
        vi = _ema_square(v[i], gi, b2, omb2)
        m[i] = mi
        v[i] = vi
        if amsgrad:
            vi = _maximum(vm[i], vi)
            vm[i] = vi
        # XLA rewrites sqrt(v) / bc2_sqrt as sqrt(v) * (1 / bc2_sqrt) and contracts the + eps
        denom = fma(np.sqrt(vi), inv_bc2s, eps)
        d = (ibc1 * mi) / denom
        u = _delta(_add_scaled(pi, neglr, d, wide), pi)
        if dwd:
            u = _delta(fma(pi, factor, u), pi)
        p[i] = pi + u


@functools.lru_cache(maxsize=None)
def adam_handler(n_state):
    amsgrad = n_state == 3

    @cfunc(types.int64(types.int64), **_OPTS)
    def handler(frame):
        count, args, rets, sc_addr, dtype = leaves(frame, n_state)
        a = np.empty(2 + n_state, np.int64)
        for i in range(count):
            n = leaf(args, rets, i, n_state, a)
            last = a[4] if amsgrad else a[0]
            if dtype == F32:
                adam_loop(carray(f32p(sc_addr), 15), carray(f32p(a[0]), n),
                          carray(f32p(a[1]), n), carray(f32p(a[2]), n),
                          carray(f32p(a[3]), n), carray(f32p(last), n), n, amsgrad)
            elif dtype == F64:
                adam_loop(carray(f64p(sc_addr), 15), carray(f64p(a[0]), n),
                          carray(f64p(a[1]), n), carray(f64p(a[2]), n),
                          carray(f64p(a[3]), n), carray(f64p(last), n), n, amsgrad)
        return 0

    return handler

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

import numpy as np
from numba import carray, cfunc, njit, types

from jaxupdate.fused._ffi import F32, F64, buffer, f32p, f64p, flat_call, fma, if_wide, round_like

_OPTS = dict(error_model="numpy", cache=True)


# The loops are written without branches on per-call flags: both sides are computed and one is
# selected (``a if flag else b`` on computed values becomes a vector select), so LLVM
# vectorizes them; only stores depend on the state layout, handled by separate loops.


@njit(inline="always", **_OPTS)
def _add_scaled(x, a, y, wide):
    # jaxupdate.numerics.add_scaled: x + a * y, rounded once (float64 then float32) when wide
    w = round_like(np.float64(x) + np.float64(a) * np.float64(y), x)
    return if_wide(wide, w, fma(a, y, x))


@njit(inline="always", **_OPTS)
def _addcmul1(x, t1, t2, wide):
    # jaxupdate.transforms.adaptive.addcmul with value 1.0
    w = round_like(np.float64(x) + np.float64(t1) * np.float64(t2), x)
    return if_wide(wide, w, fma(t1, t2, x))


@njit(inline="always", **_OPTS)
def _delta(new, old):
    # jaxupdate.numerics.delta: 0 where old is infinite and stays so (inf - inf would be NaN)
    d = new - old
    zero = round_like(0.0, d)  # 0 in d's type (d * 0 would be a float64 for float32 d)
    keep = (abs(old) == np.inf) & (new == old)
    return zero if keep else d


@njit(inline="always", **_OPTS)
def _maximum(a, b):
    # jnp.maximum: NaN if either is NaN
    m = a if a > b else b
    nan = (a != a) | (b != b)
    return a + b if nan else m


@njit(inline="always", **_OPTS)
def _lerp(start, end, small, w, one_minus_w):
    # jaxupdate.transforms.moments.lerp: ATen's two formulas, chosen by |w| < 0.5
    lo = fma(w, end - start, start)
    hi = fma(start - end, one_minus_w, end)  # end - (end - start) * (1 - w), contracted
    return lo if small else hi


@njit(inline="always", **_OPTS)
def _ema_square(avg, g, decay, one_minus_decay, wide):
    # jaxupdate.numerics.ema_square: torch's avg.mul_(decay).addcmul_(g, g, value=1 - decay),
    # both products rounded first, one rounding of the sum (numerics.addcmul)
    x = avg * decay
    s = one_minus_decay * g
    w = round_like(np.float64(x) + np.float64(s) * np.float64(g), x)
    return if_wide(wide, w, fma(s, g, x))


@njit(inline="always", **_OPTS)
def _grad(g, p, maximize, coupled, wd, wide):
    g = -g if maximize else g
    gw = _add_scaled(g, wd, p, wide)
    return gw if coupled else g


# ------------------------------------------------------------------------------------------
# Adam / AdamW. scalars: see jaxupdate.fused._specs.adam_scalars


@njit(inline="always", **_OPTS)
def _adam_element(k, pi, gi, mi, vi, vmax, amsgrad, wide, gen, dec):
    """One element of Adam: (new p, m, v, v_max); ``k``: the scalars, read before the loop
    (read inside it, they would be reloaded at every element: the arrays may alias)."""
    maximize, coupled, wd, small, w, omw, b2, omb2, bc2s, eps, value, dwd, factor = k
    # gen / dec: compile-time markers (float64: present), see adam_loop
    gi = if_wide(gen, _grad(gi, pi, maximize, coupled, wd, wide), gi)
    mi = _lerp(mi, gi, small, w, omw)
    vi = _ema_square(vi, gi, b2, omb2, wide)
    vmax = _maximum(vmax, vi) if amsgrad else vi
    # torch's true division (numerics.true_divide keeps it in the XLA path too)
    denom = np.sqrt(vmax) / bc2s + eps
    # param.addcdiv_(exp_avg, denom, value=-lr / bc1): (value * m) / denom, each rounded,
    # then added (numerics.addcdiv_term, returned as the update and added by apply_updates)
    d = (value * mi) / denom
    # decoupled weight decay: param.mul_(1 - lr * wd) rounded before the step is added
    # (transforms.decoupled_weight_decay: delta(p * factor + d, p), then apply_updates)
    return pi + if_wide(dec, _delta(pi * factor + d, pi), d), mi, vi, vmax


@njit(**_OPTS)
def adam_loop(sc, p, g, m, v, vm, n, n_state, wide, gen, dec):
    """``gen`` (float64: maximize / coupled weight decay may apply; float32: neither does) and
    ``dec`` (float64: decoupled weight decay; float32: none) select, when compiling, a loop
    without the arithmetic a configuration does not use (selects on runtime flags cost a
    third of the step: 9.5 vs 6.3 ms for 10M float32 on the 2-core test machine)."""
    k = (sc[0] != 0, sc[1] != 0, sc[2], sc[3] != 0, sc[4], sc[5], sc[6], sc[7], sc[8], sc[9],
         sc[10], sc[11] != 0, sc[12])
    if n_state == 3:  # amsgrad: a loop that also reads and writes max_exp_avg_sq
        for i in range(n):
            p[i], m[i], v[i], vm[i] = _adam_element(k, p[i], g[i], m[i], v[i], vm[i], True,
                                                    wide, gen, dec)
    else:  # vm is not touched (it may be a placeholder aliasing p)
        for i in range(n):
            p[i], m[i], v[i], _ = _adam_element(k, p[i], g[i], m[i], v[i], v[i], False, wide, gen,
                                                dec)


@njit(inline="always", **_OPTS)
def _momentum(buf, mom, keep, x, wide):
    # add_scaled(mul_scalar(buf, mom), keep, x): XLA contracts the first product; in the wide
    # case it keeps buf * mom in float64 (XLA's default xla_allow_excess_precision)
    wide_buf = np.float64(buf) * np.float64(mom)
    w = round_like(wide_buf + np.float64(keep) * np.float64(x), x)
    return if_wide(wide, w, fma(buf, mom, keep * x))


@njit(**_OPTS)
def sgd_loop(sc, p, g, buf, s2, s3, n, n_state, wide):
    maximize, coupled, wd = sc[0] != 0, sc[1] != 0, sc[2]
    first, mom, keep, nesterov = sc[3] != 0, sc[4], sc[5], sc[6] != 0
    neglr = sc[7]
    if n_state == 1:  # momentum buffer: the stores are loop-invariant, one loop each
        for i in range(n):
            pi = p[i]
            gi = _grad(g[i], pi, maximize, coupled, wd, wide)
            # torch_momentum: buf = g on the first step (grad.clone()), else the formula
            later = _momentum(buf[i], mom, keep, gi, wide)
            b = gi if first else later
            buf[i] = b
            nest = _add_scaled(gi, mom, b, wide)
            d = nest if nesterov else b
            p[i] = pi + _delta(_add_scaled(pi, neglr, d, wide), pi)
    else:
        for i in range(n):
            pi = p[i]
            gi = _grad(g[i], pi, maximize, coupled, wd, wide)
            p[i] = pi + _delta(_add_scaled(pi, neglr, gi, wide), pi)


@njit(**_OPTS)
def adagrad_loop(sc, p, g, acc, s2, s3, n, n_state, wide):
    maximize, coupled, wd = sc[0] != 0, sc[1] != 0, sc[2]
    negclr, eps = sc[3], sc[4]
    for i in range(n):
        pi = p[i]
        gi = _grad(g[i], pi, maximize, coupled, wd, wide)
        si = _addcmul1(acc[i], gi, gi, wide)
        acc[i] = si
        # torch_adagrad's update (-clr * g) / (sqrt(sum) + eps), added by apply_updates
        p[i] = pi + (negclr * gi) / (np.sqrt(si) + eps)


@njit(inline="always", **_OPTS)
def _rms_element(k, pi, gi, si, gai, bi, centered, has_mom, wide):
    """One element of RMSprop: (new p, square_avg, grad_avg, momentum_buffer)."""
    maximize, coupled, wd, a, oma, small, w, omw, eps, mom, keep, neglr = k
    gi = _grad(gi, pi, maximize, coupled, wd, wide)
    si = _ema_square(si, gi, a, oma, wide)
    if centered:
        gai = _lerp(gai, gi, small, w, omw)
        # square_avg.addcmul(grad_avg, grad_avg, value=-1).sqrt_(): one rounding
        var = round_like(np.float64(si) - np.float64(gai) * np.float64(gai), si)
        avg = np.sqrt(if_wide(wide, var, fma(-gai, gai, si)))
    else:
        avg = np.sqrt(si)
    if has_mom:
        # buf.mul_(momentum).addcdiv_(grad, avg); param.add_(buf, alpha=-lr)
        bi = _momentum(bi, mom, keep, gi / (avg + eps), wide)
        return pi + _delta(_add_scaled(pi, neglr, bi, wide), pi), si, gai, bi
    # param.addcdiv_(grad, avg, value=-lr): (-lr * g) / avg, each rounded, then added
    # (scale_by_torch_rms(lr=...): numerics.addcdiv_term as the update)
    return pi + (neglr * gi) / (avg + eps), si, gai, bi


@njit(**_OPTS)
def rmsprop_loop(sc, p, g, sq, s2, s3, n, n_state, wide):
    k = (sc[0] != 0, sc[1] != 0, sc[2], sc[3], sc[4], sc[6] != 0, sc[7], sc[8], sc[9], sc[11],
         sc[12], sc[13])
    centered, has_mom = sc[5] != 0, sc[10] != 0
    # the state arrays present decide the stores: one loop per layout (centered, momentum)
    if centered and has_mom:
        for i in range(n):
            p[i], sq[i], s2[i], s3[i] = _rms_element(k, p[i], g[i], sq[i], s2[i], s3[i], True,
                                                     True, wide)
    elif centered:
        for i in range(n):
            p[i], sq[i], s2[i], _ = _rms_element(k, p[i], g[i], sq[i], s2[i], sq[i], True,
                                                 False, wide)
    elif has_mom:
        for i in range(n):
            p[i], sq[i], _, s2[i] = _rms_element(k, p[i], g[i], sq[i], sq[i], s2[i], False,
                                                 True, wide)
    else:
        for i in range(n):
            p[i], sq[i], _, _ = _rms_element(k, p[i], g[i], sq[i], sq[i], sq[i], False, False,
                                             wide)


KINDS = ("adam", "sgd", "adagrad", "rmsprop")


@njit(**_OPTS)
def _adam(sc, p, g, s1, s2, s3, n, n_state, wide):
    f64, f32 = np.float64(0), np.float32(0)
    gen = sc[0] != 0 or sc[1] != 0  # maximize, coupled weight decay
    if sc[11] != 0:  # decoupled weight decay
        if gen:
            adam_loop(sc, p, g, s1, s2, s3, n, n_state, wide, f64, f64)
        else:
            adam_loop(sc, p, g, s1, s2, s3, n, n_state, wide, f32, f64)
    elif gen:
        adam_loop(sc, p, g, s1, s2, s3, n, n_state, wide, f64, f32)
    else:
        adam_loop(sc, p, g, s1, s2, s3, n, n_state, wide, f32, f32)


@njit(**_OPTS)
def _loop(kind, sc, p, g, s1, s2, s3, n, n_state, wide):
    if kind == 0:
        _adam(sc, p, g, s1, s2, s3, n, n_state, wide)
    elif kind == 1:
        sgd_loop(sc, p, g, s1, s2, s3, n, n_state, wide)
    elif kind == 2:
        adagrad_loop(sc, p, g, s1, s2, s3, n, n_state, wide)
    elif kind == 3:
        rmsprop_loop(sc, p, g, s1, s2, s3, n, n_state, wide)


@njit(**_OPTS)
def _loop_f32(kind, sc, p, g, s1, s2, s3, n, n_state):
    # the wide flag (second to last scalar) picks a loop compiled with float64 arithmetic
    if sc[sc.shape[0] - 2] != 0:
        _loop(kind, sc, p, g, s1, s2, s3, n, n_state, np.float64(0))
    else:
        _loop(kind, sc, p, g, s1, s2, s3, n, n_state, np.float32(0))


# XLA's entry point for every fused optimizer, at module level so that numba's on-disk cache
# keeps it compiled across processes (loading one cached cfunc: ~0.5 s; a closure would be
# compiled again in every process). The scalars' last element is the index in KINDS.
@cfunc(types.int64(types.int64), **_OPTS)
def handler(frame):
    count, n_state, args, rets, sc_addr, n_sc, dtype, pos = flat_call(frame)
    if count <= 0:
        return 0
    base = np.zeros(3, np.int64)  # the flat state buffers' data addresses
    size = np.zeros(3, np.int64)  # and their element counts
    for k in range(n_state):
        base[k], size[k] = buffer(rets, count + k)
    width = 4 if dtype == F32 else 8
    a = np.empty(5, np.int64)
    for i in range(count):
        a[0], n = buffer(rets, i)
        a[1] = buffer(args, 3 + 2 * i)[0]
        for k in range(3):
            # unused state slots point at the parameter: never touched by the loops
            a[2 + k] = base[k] + pos * width if k < n_state else a[0]
        for k in range(n_state):
            if pos + n > size[k]:
                return 0  # never reached: jaxupdate.step checks the layout before calling
        if dtype == F32:
            sc = carray(f32p(sc_addr), n_sc)
            _loop_f32(int(sc[n_sc - 1]), sc, carray(f32p(a[0]), n), carray(f32p(a[1]), n),
                      carray(f32p(a[2]), n), carray(f32p(a[3]), n), carray(f32p(a[4]), n), n,
                      n_state)
        elif dtype == F64:
            sc = carray(f64p(sc_addr), n_sc)
            _loop(int(sc[n_sc - 1]), sc, carray(f64p(a[0]), n), carray(f64p(a[1]), n),
                  carray(f64p(a[2]), n), carray(f64p(a[3]), n), carray(f64p(a[4]), n), n,
                  n_state, np.float32(0))  # float64 leaves: never wide
        pos += n
    return 0

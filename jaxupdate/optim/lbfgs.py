"""L-BFGS with torch's calling protocol: one ``update`` is one ``optimizer.step(closure)``."""

from __future__ import annotations

import math
from typing import Any, Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax import lax

from jaxupdate._described import Parity, state_converters, torch_optimizer
from jaxupdate._hparams import normalize, resolve, scalar_dtype
from jaxupdate.numerics import add_scaled, cast
from jaxupdate.optim._base import check_lr
from jaxupdate.transforms.common import init_count

# torch's fixed constants of the line search (``_strong_wolfe`` defaults, LBFGS never overrides
# them) and of the curvature check (``if ys > 1e-10``).
_C1 = 1e-4
_C2 = 0.9
_CURVATURE_EPS = 1e-10


class LBFGSState(NamedTuple):
    """torch's LBFGS state (kept for the first parameter in torch), with static shapes.

    ``old_dirs``/``old_stps``/``ro`` are ring buffers of ``history_size`` slots: torch's list
    entry ``i`` (0 = oldest) is slot ``(history_start + i) % history_size`` for
    ``i < history_len`` (see :func:`lbfgs_history`). ``al`` is torch's scratch list, in torch's
    order. ``prev_loss`` is in the scalar dtype (torch keeps a Python float), the vectors in the
    dtype of the flattened parameters.
    """

    # one block, so the optimizer's one step count lives here (see transforms.step_count)
    holds_step_count = True
    count: jax.Array  # update calls so far (evaluates scheduled hyperparameters)
    func_evals: jax.Array  # total closure evaluations, as torch's state["func_evals"]
    n_iter: jax.Array  # total inner iterations, as torch's state["n_iter"]
    d: jax.Array
    t: jax.Array
    old_dirs: jax.Array
    old_stps: jax.Array
    ro: jax.Array
    al: jax.Array
    history_start: jax.Array
    history_len: jax.Array
    H_diag: jax.Array  # torch's key
    prev_flat_grad: jax.Array
    prev_loss: jax.Array


def lbfgs_history(state: LBFGSState):
    """torch's ``(old_dirs, old_stps, ro)`` lists (oldest first) from the ring buffers.

    Not jittable (the length is data); for inspection and comparison with torch's state.
    """
    n = int(state.history_len)
    size = state.ro.shape[0]
    slots = [(int(state.history_start) + i) % size for i in range(n)]
    return (
        [state.old_dirs[s] for s in slots],
        [state.old_stps[s] for s in slots],
        [state.ro[s] for s in slots],
    )


# --------------------------------------------------------------------------------------------
# Flattening: torch's _gather_flat_grad / _add_grad over the leaves in jax.tree.leaves order,
# complex leaves viewed as real pairs (torch.view_as_real).
# --------------------------------------------------------------------------------------------


def _as_real(x):
    return jnp.stack([jnp.real(x), jnp.imag(x)], axis=-1) if jnp.iscomplexobj(x) else x


class _Flat:
    def __init__(self, params):
        leaves, self.treedef = jax.tree.flatten(params)
        self.is_complex = [jnp.iscomplexobj(x) for x in leaves]
        real = [_as_real(x) for x in leaves]
        self.shapes = [x.shape for x in real]
        self.sizes = [math.prod(s) for s in self.shapes]
        self.dtype = jnp.result_type(*real) if real else jnp.float32
        self.numel = sum(self.sizes)

    def real_leaves(self, tree):
        return [_as_real(x) for x in self.treedef.flatten_up_to(tree)]

    def flat(self, tree):
        """torch's ``_gather_flat_grad``: ``None`` leaves are zeros."""
        parts = []
        for x, shape in zip(self.treedef.flatten_up_to(tree), self.shapes):
            if x is None:
                parts.append(jnp.zeros(math.prod(shape), self.dtype))
            else:
                parts.append(jnp.ravel(_as_real(x)).astype(self.dtype))
        if not parts:
            return jnp.zeros((0,), self.dtype)
        return jnp.concatenate(parts)

    def tree(self, real_leaves):
        leaves = [
            lax.complex(r[..., 0], r[..., 1]) if c else r
            for r, c in zip(real_leaves, self.is_complex)
        ]
        return self.treedef.unflatten(leaves)

    def add(self, real_leaves, t, d):
        """torch's ``_add_grad(t, d)``: ``p.add_(d_view, alpha=t)`` for each leaf."""
        out, offset = [], 0
        for p, shape, size in zip(real_leaves, self.shapes, self.sizes):
            out.append(add_scaled(p, t, d[offset : offset + size].reshape(shape).astype(p.dtype)))
            offset += size
        return out


# --------------------------------------------------------------------------------------------
# torch's _cubic_interpolate and _strong_wolfe, with Python's min/max semantics.
# --------------------------------------------------------------------------------------------


def _dot(a, b):
    """``a.dot(b)`` of two flat vectors (torch: BLAS dot; the summation order differs)."""
    return jnp.dot(a, b, precision=lax.Precision.HIGHEST)


def _sum_abs(g):
    """``g.abs().sum()`` (torch: vectorized reduction; the summation order differs)."""
    return jnp.sum(jnp.abs(g))


def _py_max(a, b):
    """Python's ``max(a, b)``: ``b`` only if ``b > a`` (keeps ``a`` on ties and NaN)."""
    return jnp.where(b > a, b, a)


def _py_min(a, b):
    return jnp.where(b < a, b, a)


def _cubic_interpolate(x1, f1, g1, x2, f2, g2, bounds=None):
    """torch's ``_cubic_interpolate`` (``x``, ``g``: parameter dtype; ``f``: scalar dtype)."""
    if bounds is not None:
        xmin_bound, xmax_bound = bounds
    else:
        ordered = x1 <= x2
        xmin_bound = jnp.where(ordered, x1, x2)
        xmax_bound = jnp.where(ordered, x2, x1)
    # (f1 - f2) is Python float arithmetic in torch, then meets the tensors
    d1 = g1 + g2 - cast(3 * (f1 - f2), g1) / (x1 - x2)
    d2_square = d1**2 - g1 * g2
    real_root = d2_square >= 0
    d2 = jnp.sqrt(jnp.where(real_root, d2_square, 0))
    min_pos = jnp.where(
        x1 <= x2,
        x2 - (x2 - x1) * ((g2 + d2 - d1) / (g2 - g1 + 2 * d2)),
        x1 - (x1 - x2) * ((g1 + d2 - d1) / (g1 - g2 + 2 * d2)),
    )
    clipped = _py_min(_py_max(min_pos, xmin_bound), xmax_bound)
    return jnp.where(real_root, clipped, (xmin_bound + xmax_bound) / 2.0)


class _Search(NamedTuple):
    """Carry of the line search. Phases: 0 first trial, 1 bracketing, 2 zoom, 3 finished."""

    phase: jax.Array
    t: jax.Array  # bracketing: last trial and its predecessor, with their f, g, gtd
    t_prev: jax.Array
    f_prev: jax.Array
    g_prev: jax.Array
    gtd_prev: jax.Array
    f_new: jax.Array
    g_new: jax.Array
    gtd_new: jax.Array
    bracket: jax.Array  # zoom: the two ends, with their f, g, gtd
    bracket_f: jax.Array
    bracket_g: jax.Array
    bracket_gtd: jax.Array
    low_pos: jax.Array
    insuf_progress: jax.Array
    done: jax.Array
    ls_iter: jax.Array
    ls_func_evals: jax.Array


def _strong_wolfe(obj_func, t, d, f, g, gtd, max_ls, tolerance_change):
    """torch's ``_strong_wolfe`` (c1=1e-4, c2=0.9): bracketing phase, then zoom phase.

    ``obj_func(t) -> (f, g)`` evaluates at ``x + t * d``. ``f`` values are in the scalar dtype
    (torch's Python floats); ``t``, ``gtd`` and ``g`` in the parameter dtype. Returns
    ``(f_new, g_new, t, ls_func_evals)``.

    torch's two loops (and its first evaluation) become one ``while_loop`` whose body
    evaluates the objective exactly once, at the trial step of the current phase: the
    closure is traced once, not three times.
    """
    fd = g.dtype
    i32 = jnp.int32
    zero = jnp.zeros((), fd)
    d_norm = jnp.max(jnp.abs(d)) if d.size else zero

    def armijo_fails(f_new, t):
        return cast(f_new, gtd) > cast(f, gtd) + cast(_C1, t) * t * gtd

    def curvature_ok(gtd_new):
        return jnp.abs(gtd_new) <= -cast(_C2, gtd) * gtd

    def zoom_continues(bracket, done, ls_iter):
        small = jnp.abs(bracket[1] - bracket[0]) * d_norm < cast(tolerance_change, d_norm)
        return ~done & (ls_iter < max_ls) & ~small

    def zoom_trial(c: _Search):
        """The zoom's next point, moved away from the bracket ends on insufficient progress."""
        bracket = c.bracket
        t = _cubic_interpolate(
            bracket[0], c.bracket_f[0], c.bracket_gtd[0],
            bracket[1], c.bracket_f[1], c.bracket_gtd[1],
        )  # fmt: skip
        b_max = _py_max(bracket[0], bracket[1])
        b_min = _py_min(bracket[0], bracket[1])
        eps = cast(0.1, t) * (b_max - b_min)
        near = _py_min(b_max - t, t - b_min) < eps
        move = near & (c.insuf_progress | (t >= b_max) | (t <= b_min))
        t = jnp.where(
            move, jnp.where(jnp.abs(t - b_max) < jnp.abs(t - b_min), b_max - eps, b_min + eps), t
        )
        return t, near & ~move

    def zoom_update(c: _Search, t, f_new, g_new, gtd_new):
        bracket, bracket_f, bracket_g, bracket_gtd = (
            c.bracket,
            c.bracket_f,
            c.bracket_g,
            c.bracket_gtd,
        )
        low_pos = c.low_pos
        high_pos = 1 - low_pos
        worse = armijo_fails(f_new, t) | (f_new >= bracket_f[low_pos])
        wolfe = ~worse & curvature_ok(gtd_new)
        # not worse, not done, and the slope points past the high end: old high becomes low
        flip = ~worse & ~wolfe & (gtd_new * (bracket[high_pos] - bracket[low_pos]) >= 0)

        def copy_low_to_high(arr):
            return arr.at[high_pos].set(jnp.where(flip, arr[low_pos], arr[high_pos]))

        bracket, bracket_f, bracket_g, bracket_gtd = map(
            copy_low_to_high, (bracket, bracket_f, bracket_g, bracket_gtd)
        )
        # worse: the new point replaces the high end; otherwise it becomes the low end
        pos = jnp.where(worse, high_pos, low_pos)
        bracket = bracket.at[pos].set(t)
        bracket_f = bracket_f.at[pos].set(f_new)
        bracket_g = bracket_g.at[pos].set(g_new)
        bracket_gtd = bracket_gtd.at[pos].set(gtd_new)
        low_pos = jnp.where(worse, jnp.where(bracket_f[0] <= bracket_f[1], 0, 1), low_pos)
        return bracket, bracket_f, bracket_g, bracket_gtd, low_pos, wolfe

    def body(c: _Search) -> _Search:
        first, in_zoom = c.phase == 0, c.phase == 2
        # trial step of the current phase
        min_step = c.t + cast(0.01, c.t) * (c.t - c.t_prev)
        max_step = c.t * cast(10, c.t)
        t_bracketing = _cubic_interpolate(
            c.t_prev, c.f_prev, c.gtd_prev, c.t, c.f_new, c.gtd_new, bounds=(min_step, max_step)
        )
        t_zoom, insuf_zoom = zoom_trial(c)
        trial = jnp.where(first, c.t, jnp.where(in_zoom, t_zoom, t_bracketing))

        f_e, g_e = obj_func(trial)
        gtd_e = _dot(g_e, d)
        evals = c.ls_func_evals + 1
        ls_iter = jnp.where(first, c.ls_iter, c.ls_iter + 1)

        # bracketing: the evaluated point becomes the newest, the previous newest the older one
        def shift(prev, new, old):
            return jnp.where(first, old, prev), new

        t_prev, t_new = shift(c.t, trial, c.t_prev)
        f_prev, f_new = shift(c.f_new, f_e, c.f_prev)
        g_prev, g_new = shift(c.g_new, g_e, c.g_prev)
        gtd_prev, gtd_new = shift(c.gtd_new, gtd_e, c.gtd_prev)
        cond1 = armijo_fails(f_new, t_new) | ((ls_iter > 1) & (f_new >= f_prev))
        cond2 = curvature_ok(gtd_new)
        cond3 = gtd_new >= 0
        exhausted = ls_iter >= max_ls  # torch: `if ls_iter == max_ls`, before the other tests
        to_zoom = exhausted | cond1 | cond2 | cond3

        def pick(a_exhausted, a_pair, a_done):
            return jnp.where(exhausted, a_exhausted, jnp.where(cond1 | ~cond2, a_pair, a_done))

        # the bracket handed to the zoom (torch leaves bracket_gtd unset in the exhausted and
        # done cases, where the zoom does not run)
        b_init = pick(jnp.stack([zero, t_new]), jnp.stack([t_prev, t_new]),
                      jnp.stack([t_new, t_new]))  # fmt: skip
        bf_init = pick(jnp.stack([f, f_new]), jnp.stack([f_prev, f_new]),
                       jnp.stack([f_new, f_new]))  # fmt: skip
        bg_init = pick(jnp.stack([g, g_new]), jnp.stack([g_prev, g_new]),
                       jnp.stack([g_new, g_new]))  # fmt: skip
        bgtd_init = jnp.stack([gtd_prev, gtd_new])
        done_init = ~exhausted & ~cond1 & cond2
        low_init = jnp.where(bf_init[0] <= bf_init[1], 0, 1)

        z_bracket, z_f, z_g, z_gtd, z_low, z_done = zoom_update(c, trial, f_e, g_e, gtd_e)

        def sel(zoom_value, init_value, current):
            return jnp.where(in_zoom, zoom_value, jnp.where(to_zoom, init_value, current))

        bracket = sel(z_bracket, b_init, c.bracket)
        bracket_f = sel(z_f, bf_init, c.bracket_f)
        bracket_g = sel(z_g, bg_init, c.bracket_g)
        bracket_gtd = sel(z_gtd, bgtd_init, c.bracket_gtd)
        low_pos = sel(z_low, low_init, c.low_pos)
        done = sel(z_done, done_init, c.done)
        insuf = jnp.where(in_zoom, insuf_zoom, False)
        phase = jnp.where(in_zoom | to_zoom, 2, 1)
        phase = jnp.where((phase == 2) & ~zoom_continues(bracket, done, ls_iter), 3, phase)
        return _Search(
            phase.astype(i32), t_new, t_prev, f_prev, g_prev, gtd_prev, f_new, g_new, gtd_new,
            bracket, bracket_f, bracket_g, bracket_gtd, low_pos.astype(i32), insuf, done,
            ls_iter, evals,
        )  # fmt: skip

    pair = jnp.zeros((2,), fd)
    init = _Search(
        phase=jnp.zeros((), i32), t=t, t_prev=zero, f_prev=f, g_prev=g, gtd_prev=gtd,
        f_new=f, g_new=g, gtd_new=gtd, bracket=pair, bracket_f=jnp.zeros((2,), f.dtype),
        bracket_g=jnp.zeros((2,) + g.shape, fd), bracket_gtd=pair, low_pos=jnp.zeros((), i32),
        insuf_progress=jnp.zeros((), bool), done=jnp.zeros((), bool),
        ls_iter=jnp.zeros((), i32), ls_func_evals=jnp.zeros((), i32),
    )  # fmt: skip
    c = lax.while_loop(lambda c: c.phase != 3, body, init)
    return c.bracket_f[c.low_pos], c.bracket_g[c.low_pos], c.bracket[c.low_pos], c.ls_func_evals


# --------------------------------------------------------------------------------------------
# The optimizer
# --------------------------------------------------------------------------------------------


class _Loop(NamedTuple):
    st: LBFGSState
    x: Any  # list of real-viewed parameter leaves
    loss: jax.Array
    flat_grad: jax.Array
    opt_cond: jax.Array
    current_evals: jax.Array
    n_iter: jax.Array  # iterations of this step
    stop: jax.Array


@torch_optimizer(
    "LBFGS",
    (
        "func_evals",
        "n_iter",
        "al",
        "d",
        "t",
        "old_dirs",
        "old_stps",
        "ro",
        "H_diag",
        "prev_flat_grad",
        "prev_loss",
    ),
    state=LBFGSState,
    # the line search's loops run faster compiled; it evaluates the loss itself
    parity=Parity(jit=True, closure=True),
)
def lbfgs(
    lr=1,
    max_iter: int = 20,
    max_eval: Optional[int] = None,
    tolerance_grad=1e-7,
    tolerance_change=1e-9,
    history_size: int = 100,
    line_search_fn: Optional[str] = None,
) -> optax.GradientTransformationExtraArgs:
    r"""torch.optim.LBFGS as a transformation: one ``update`` is one ``optimizer.step(closure)``.

    Calling protocol. torch's ``step(closure)`` re-evaluates the loss and gradients itself; here
    the closure is ``value_and_grad_fn(params) -> (loss, grads)`` (e.g.
    ``jax.value_and_grad(loss_fn)``), passed to ``update`` with the loss and gradients at
    ``params`` (torch's first closure call)::

        loss, grads = value_and_grad_fn(params)
        updates, state = tx.update(grads, state, params, value=loss,
                                   value_and_grad_fn=value_and_grad_fn)
        params = optax.apply_updates(params, updates)

    ``updates`` is ``new_params - params``. The whole step (inner iterations, line search)
    runs in ``lax.while_loop``, so it jits; ``value_and_grad_fn`` is traced inline (it may
    close over the batch).

    Algorithm (torch's ``LBFGS.step``), on the flat vector of all leaves (``jax.tree.leaves``
    order, complex leaves as real pairs; give torch its parameters in the same order)::

        loss, g = closure(x); func_evals += 1
        if max|g| <= tolerance_grad: return
        repeat at most max_iter times:
            n_iter += 1                                       # counted across steps
            if n_iter == 1: d = -g; history = []; H_diag = 1
            else:
                y = g - prev_g; s = t * d; ys = y . s
                if ys > 1e-10:                                # curvature check
                    push (y, s, 1 / ys), dropping the oldest beyond history_size
                    H_diag = ys / (y . y)
                d = two-loop recursion on -g with the history, scaled by H_diag
            prev_g, prev_loss = g, loss
            t = min(1, 1 / sum|g|) * lr if n_iter == 1 else lr
            if g . d > -tolerance_change: break
            if line_search_fn == "strong_wolfe":
                loss, g, t = strong Wolfe search along d from t  # (c1=1e-4, c2=0.9, cubic
                x = x + t * d                                    #  interpolation, zoom,
                                                                 #  at most max_eval - evals)
            else:
                x = x + t * d
                if not the last iteration: loss, g = closure(x)
            stop if: iterations == max_iter, evals >= max_eval, max|g| <= tolerance_grad,
                     max|t * d| <= tolerance_change, |loss - prev_loss| < tolerance_change

    State (:class:`LBFGSState`) carries torch's ``d``, ``t``, ``old_dirs``, ``old_stps``,
    ``ro``, ``al``, ``H_diag``, ``prev_flat_grad``, ``prev_loss``, ``n_iter`` and ``func_evals``
    from one update to the next, as torch's state does between ``step`` calls. The history is
    a pair of fixed ``(history_size, numel)`` ring buffers (allocated at ``init``: torch's memory
    high-water mark ``2 * history_size * numel``, from the start).

    Args (torch's names, order and defaults; ``params`` does not apply):
      lr: learning rate, default ``1``; a float, 1-element array or schedule (a function of
        the number of update calls).
      max_iter: maximal number of inner iterations per update, default ``20``.
      max_eval: maximal number of function evaluations per update, default
        ``max_iter * 5 // 4``.
      tolerance_grad: termination tolerance on ``max|grad|``, default ``1e-7``.
      tolerance_change: termination tolerance on loss and parameter changes, default ``1e-9``.
      history_size: number of curvature pairs kept, default ``100`` (must be at least 1; torch
        fails with ``IndexError`` at the first history update when it is 0).
      line_search_fn: ``None`` (fixed step ``lr``) or ``"strong_wolfe"``. Any other value
        raises torch's ``RuntimeError("only 'strong_wolfe' is supported")``, here at
        construction (torch: at the first line search).

    Complex leaves: the flat vector holds their real and imaginary parts (torch's
    ``view_as_real``), and ``value_and_grad_fn`` must return torch's gradient convention for
    them, the conjugate of ``jax.grad``'s for a real loss (``jnp.conj``).

    Example::

        >>> import jax, jax.numpy as jnp, optax
        >>> from jaxupdate.optim.lbfgs import lbfgs
        >>> loss_fn = lambda p: jnp.sum((p["w"] - 3.0) ** 2) + p["b"] ** 2
        >>> vg = jax.value_and_grad(loss_fn)
        >>> params = {"w": jnp.zeros(2), "b": jnp.ones(())}
        >>> tx = lbfgs(line_search_fn="strong_wolfe")
        >>> state = tx.init(params)
        >>> @jax.jit
        ... def step(params, state):
        ...     loss, grads = vg(params)
        ...     updates, state = tx.update(grads, state, params, value=loss,
        ...                                value_and_grad_fn=vg)
        ...     return optax.apply_updates(params, updates), state, loss
        >>> params, state, loss = step(params, state)      # w -> [3, 3], b -> 0
    """
    lr_n = check_lr(lr)
    if max_eval is None:
        max_eval = max_iter * 5 // 4
    tol_grad = normalize(tolerance_grad, "tolerance_grad")
    tol_change = normalize(tolerance_change, "tolerance_change")
    if line_search_fn is not None and line_search_fn != "strong_wolfe":
        raise RuntimeError("only 'strong_wolfe' is supported")
    if int(history_size) != history_size or history_size < 1:
        raise ValueError(f"history_size must be a positive integer, got {history_size}")
    max_iter, max_eval, history_size = int(max_iter), int(max_eval), int(history_size)

    def init_fn(params):
        fl = _Flat(params)
        n, dt = fl.numel, fl.dtype
        i32 = jnp.int32
        return LBFGSState(
            count=init_count(),
            func_evals=jnp.zeros((), i32),
            n_iter=jnp.zeros((), i32),
            d=jnp.zeros((n,), dt),
            t=jnp.zeros((), dt),
            old_dirs=jnp.zeros((history_size, n), dt),
            old_stps=jnp.zeros((history_size, n), dt),
            ro=jnp.zeros((history_size,), dt),
            al=jnp.zeros((history_size,), dt),
            history_start=jnp.zeros((), i32),
            history_len=jnp.zeros((), i32),
            H_diag=jnp.ones((), dt),
            prev_flat_grad=jnp.zeros((n,), dt),
            prev_loss=jnp.zeros((), scalar_dtype()),
        )

    def update_fn(
        updates,
        state: LBFGSState,
        params=None,
        *,
        value=None,
        value_and_grad_fn: Optional[Callable] = None,
        **extra_args,
    ):
        del extra_args
        if params is None or value is None or value_and_grad_fn is None:
            raise ValueError(
                "lbfgs needs the parameters, the loss and the closure: call "
                "tx.update(grads, state, params, value=loss, value_and_grad_fn=f) with "
                "f(params) -> (loss, grads) and (loss, grads) = f(params)"
            )
        fl = _Flat(params)
        sd = scalar_dtype()
        lr_v = resolve(lr_n, state.count)
        tol_g = resolve(tol_grad, state.count)
        tol_c = resolve(tol_change, state.count)
        x0 = fl.real_leaves(params)

        def closure(x):
            loss, grads = value_and_grad_fn(fl.tree(x))
            return jnp.asarray(loss, sd), fl.flat(grads)

        def optimal(g):
            return (jnp.max(jnp.abs(g)) if g.size else jnp.zeros((), g.dtype)) <= cast(tol_g, g)

        loss0 = jnp.asarray(value, sd)
        g0 = fl.flat(updates)
        st = state._replace(func_evals=state.func_evals + 1)
        opt0 = optimal(g0)
        i32 = jnp.int32

        def direction(st: LBFGSState, g):
            """The L-BFGS direction and updated memory (torch's `else` branch)."""
            y = g - st.prev_flat_grad
            s = st.d * st.t
            ys = _dot(y, s)
            push = ys > cast(_CURVATURE_EPS, ys)
            full = st.history_len == history_size
            slot = (st.history_start + st.history_len) % history_size
            old_dirs = st.old_dirs.at[slot].set(jnp.where(push, y, st.old_dirs[slot]))
            old_stps = st.old_stps.at[slot].set(jnp.where(push, s, st.old_stps[slot]))
            ro = st.ro.at[slot].set(jnp.where(push, 1.0 / ys, st.ro[slot]))
            start = jnp.where(push & full, (st.history_start + 1) % history_size, st.history_start)
            length = jnp.where(push & ~full, st.history_len + 1, st.history_len)
            h_diag = jnp.where(push, ys / _dot(y, y), st.H_diag)

            def slot_of(i):
                return (start + i) % history_size

            def loop1(j, c):
                q, al = c
                i = length - 1 - j
                k = slot_of(i)
                a = _dot(old_stps[k], q) * ro[k]
                return add_scaled(q, -a, old_dirs[k]), al.at[i].set(a)

            q, al = lax.fori_loop(0, length, loop1, (-g, st.al))
            r = q * h_diag

            def loop2(i, r):
                k = slot_of(i)
                be_i = _dot(old_dirs[k], r) * ro[k]
                return add_scaled(r, al[i] - be_i, old_stps[k])

            d = lax.fori_loop(0, length, loop2, r)
            return st._replace(
                d=d, old_dirs=old_dirs, old_stps=old_stps, ro=ro, al=al,
                history_start=start, history_len=length, H_diag=h_diag,
            )  # fmt: skip

        def first_direction(st: LBFGSState, g):
            return st._replace(
                d=-g,
                history_start=jnp.zeros((), i32),
                history_len=jnp.zeros((), i32),
                H_diag=jnp.ones((), g.dtype),
            )

        def body(c: _Loop) -> _Loop:
            n_iter = c.n_iter + 1
            st = c.st._replace(n_iter=c.st.n_iter + 1)
            g, loss = c.flat_grad, c.loss
            first = st.n_iter == 1
            st = lax.cond(first, first_direction, direction, st, g)
            st = st._replace(prev_flat_grad=g, prev_loss=loss)
            # reset initial guess for step size; min(1., 1. / |g|_1) with Python's min
            inv = 1.0 / _sum_abs(g)
            t = jnp.where(first, jnp.where(inv < 1.0, inv, 1.0), 1.0) * cast(lr_v, g)
            st = st._replace(t=t)
            d = st.d
            gtd = _dot(g, d)
            descent = ~(gtd > -cast(tol_c, gtd))

            def move(c_in):
                x, loss, g, opt_cond = c_in
                if line_search_fn is not None:
                    loss, g, t_ls, ls_evals = _strong_wolfe(
                        lambda tt: closure(fl.add(x, tt, d)),
                        t, d, loss, g, gtd, max_eval - c.current_evals, tol_c,
                    )  # fmt: skip
                    x = fl.add(x, t_ls, d)
                    return x, loss, g, optimal(g), t_ls, ls_evals
                x = fl.add(x, t, d)

                def reevaluate(x):
                    loss, g = closure(x)
                    return loss, g, optimal(g), jnp.ones((), i32)

                def keep(x):
                    return loss, g, opt_cond, jnp.zeros((), i32)

                loss, g, opt_cond, ls_evals = lax.cond(n_iter != max_iter, reevaluate, keep, x)
                return x, loss, g, opt_cond, t, ls_evals

            def no_move(c_in):
                x, loss, g, opt_cond = c_in
                return x, loss, g, opt_cond, t, jnp.zeros((), i32)

            x, loss, g, opt_cond, t, ls_evals = lax.cond(
                descent, move, no_move, (c.x, loss, g, c.opt_cond)
            )
            st = st._replace(t=t, func_evals=st.func_evals + ls_evals)
            current_evals = c.current_evals + ls_evals
            no_progress = jnp.max(jnp.abs(d * t)) <= cast(tol_c, d) if d.size else True
            stop = (
                ~descent
                | (n_iter == max_iter)
                | (current_evals >= max_eval)
                | opt_cond
                | no_progress
                | (jnp.abs(loss - st.prev_loss) < cast(tol_c, loss))
            )
            return _Loop(st, x, loss, g, opt_cond, current_evals, n_iter, stop)

        def cond(c: _Loop):
            return ~c.stop & (c.n_iter < max_iter)

        init = _Loop(st, x0, loss0, g0, opt0, jnp.ones((), i32), jnp.zeros((), i32), opt0)
        out = lax.while_loop(cond, body, init)
        new_updates = fl.tree([xn - xo for xn, xo in zip(out.x, x0)])
        new_state = out.st._replace(count=optax.safe_increment(state.count))
        return new_updates, new_state

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


# --------------------------------------------------------------------------------------------
# torch's state_dict entries (jaxupdate.interop.state_dict; torch imported when they run)
# --------------------------------------------------------------------------------------------


def lbfgs_state_to_torch(state: LBFGSState, leaves, count: int) -> dict:
    """``state`` as torch's LBFGS state entries, ``{0: entry}`` (``{}`` before the first step).

    torch keeps LBFGS's global state on the group's first parameter: its history lists
    (oldest first, from the ring buffers), ``d``, ``t``, ``H_diag``, ``prev_flat_grad``,
    ``prev_loss``, the counters, and ``al`` once its first L-BFGS direction made it.
    ``leaves`` (the group's parameters) are not needed: the state is one flat vector.
    Used by :func:`jaxupdate.interop.torch_state_dict`.
    """
    from jaxupdate.interop import _torch as T

    st = state
    if count == 0:
        return {}
    size, n = int(st.ro.shape[0]), int(st.history_len)
    slots = [(int(st.history_start) + i) % size for i in range(n)]
    entry = {"func_evals": int(st.func_evals), "n_iter": int(st.n_iter)}
    if int(st.n_iter) >= 2:  # torch creates its scratch list at the first L-BFGS direction
        entry["al"] = [T.to_tensor(st.al[i]) if i < n else None for i in range(size)]
    entry.update(
        {
            "d": T.to_tensor(st.d),
            "t": float(st.t),
            "old_dirs": [T.to_tensor(st.old_dirs[s]) for s in slots],
            "old_stps": [T.to_tensor(st.old_stps[s]) for s in slots],
            "ro": [T.to_tensor(st.ro[s]) for s in slots],
            "H_diag": T.to_tensor(st.H_diag),
            "prev_flat_grad": T.to_tensor(st.prev_flat_grad),
            "prev_loss": float(st.prev_loss),
        }
    )
    return {0: entry}


def lbfgs_state_from_torch(state: LBFGSState, entries, leaves, step) -> LBFGSState:
    """``state`` filled from torch's LBFGS per-parameter entries (all on the first parameter).

    The history lists go into the ring buffers from slot 0; ``step`` (or 1) becomes the
    update count, which torch does not keep. Raises ``ValueError`` for state on another
    parameter, more curvature pairs than ``history_size`` or vectors of another length.
    Used by :func:`jaxupdate.interop.load_torch_state_dict`.
    """
    from jaxupdate.interop import _torch as T

    st = state
    entry = entries[0] if entries else {}
    if any(entries[1:]):
        raise ValueError("torch keeps LBFGS's state on the first parameter only")
    if not entry:
        return st
    size = int(st.ro.shape[0])
    old_dirs = list(entry.get("old_dirs", []))
    if len(old_dirs) > size:
        raise ValueError(
            f"the state_dict holds {len(old_dirs)} curvature pairs, history_size is {size}"
        )

    def vec(x, like):
        a = T.to_numpy(x)
        if a.shape != tuple(like.shape):
            raise ValueError(f"LBFGS state of shape {a.shape}, expected {tuple(like.shape)}")
        return jnp.asarray(a, like.dtype)

    def scalar(x, like):
        return jnp.asarray(float(np.asarray(T.to_numpy(x)).reshape(())), like.dtype)

    new = st
    n = len(old_dirs)
    if n:
        new = new._replace(
            old_dirs=new.old_dirs.at[:n].set(jnp.stack([vec(x, st.d) for x in old_dirs])),
            old_stps=new.old_stps.at[:n].set(jnp.stack([vec(x, st.d) for x in entry["old_stps"]])),
            ro=new.ro.at[:n].set(jnp.stack([scalar(x, st.ro[0]) for x in entry["ro"]])),
        )
    al = entry.get("al") or []
    al_values = [scalar(x, st.al[0]) if x is not None else st.al[i] for i, x in enumerate(al)]
    new = new._replace(
        count=jnp.asarray(1 if step is None else step, st.count.dtype),
        func_evals=jnp.asarray(int(entry.get("func_evals", 0)), st.func_evals.dtype),
        n_iter=jnp.asarray(int(entry.get("n_iter", 0)), st.n_iter.dtype),
        history_start=jnp.zeros_like(st.history_start),
        history_len=jnp.asarray(n, st.history_len.dtype),
        al=new.al.at[: len(al_values)].set(jnp.stack(al_values)) if al_values else new.al,
    )
    for key, conv in (
        ("d", vec),
        ("prev_flat_grad", vec),
        ("t", scalar),
        ("H_diag", scalar),
        ("prev_loss", scalar),
    ):
        if entry.get(key) is not None:
            like = getattr(st, key)
            new = new._replace(**{key: conv(entry[key], like)})
    return new


# the state is not per-parameter buffers: torch_state_dict / load_torch_state_dict call these
state_converters(lbfgs, export=lbfgs_state_to_torch, load=lbfgs_state_from_torch)

"""Parity of jaxupdate.clip_grad with torch.nn.utils.clip_grad, for every norm type.

The function forms are compared with torch's functions on the same gradients (total norm and
clipped gradients), the transformations with torch's training loop (clip between backward and
step) over whole trajectories. ``error_if_nonfinite`` is checked eagerly and inside ``jit``.
"""

from __future__ import annotations

import inspect
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch

from jaxupdate import clip_grad as C
from jaxupdate.optim import adam, sgd
from tests.parity import JAX_DTYPE, SHAPES, TOL, problem, rel_err, run_jax

NORM_TYPES = [2.0, 1.0, 0.0, 0.5, 3.0, -1.0, -2.5, math.inf, -math.inf, "inf"]
DTYPES = [torch.float64, torch.float32, torch.complex128, torch.complex64]
DTYPE_IDS = ["f64", "f32", "c128", "c64"]


def _grads(dtype, seed=0, scale=1.0):
    rng = np.random.default_rng(seed)
    out = []
    for s in SHAPES:
        g = scale * rng.standard_normal(s)
        if dtype.is_complex:
            g = g + 1j * scale * rng.standard_normal(s)
        out.append(g)
    return out


def _torch_params(grads, dtype):
    ps = []
    for g in grads:
        p = torch.zeros(np.shape(g), dtype=dtype, requires_grad=True)
        p.grad = torch.tensor(g).to(dtype)
        ps.append(p)
    return ps


def _rel(a, b):
    a, b = np.asarray(a), np.asarray(b)
    scale = max(float(np.max(np.abs(b))) if b.size else 0.0, 1e-30)
    return float(np.max(np.abs(a - b))) / scale if b.size else 0.0


# torch's _foreach_norm warns about complex -> real for the 0-"norm"; its numbers are right
@pytest.mark.filterwarnings("ignore:Casting complex values to real")
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("norm_type", NORM_TYPES, ids=str)
def test_clip_grad_norm_function_matches_torch(norm_type, dtype):
    """Total norm and clipped gradients, clipping (max_norm 0.3) and not (1e4: coef -> 1)."""
    tol = TOL[dtype]
    fn = jax.jit(C.clip_grad_norm_, static_argnums=(2,))
    for max_norm, seed in ((0.3, 0), (1e4, 1)):
        grads = _grads(dtype, seed)
        tp = _torch_params(grads, dtype)
        t_norm = torch.nn.utils.clip_grad_norm_(tp, max_norm, norm_type=norm_type)
        jg = [jnp.asarray(g, JAX_DTYPE[dtype]) for g in grads]
        results = [C.clip_grad_norm_(jg, max_norm, norm_type)]
        if not dtype.is_complex:  # and jitted (complex goes through the same code)
            results.append(fn(jg, max_norm, norm_type))
        for clipped, j_norm in results:
            assert j_norm.dtype == JAX_DTYPE[t_norm.dtype]
            assert _rel(j_norm, t_norm.numpy()) <= tol
            for a, t in zip(clipped, tp):
                assert a.dtype == JAX_DTYPE[dtype]
                assert _rel(a, t.grad.numpy()) <= tol, (max_norm, norm_type)


@pytest.mark.parametrize("norm_type", NORM_TYPES, ids=str)
def test_float64_is_bit_exact_eagerly(norm_type):
    """Eagerly, float64 clipping reproduces torch bit for bit (same reductions, and torch's
    ``max_norm / t`` as ``reciprocal(t) * max_norm``)."""
    grads = _grads(torch.float64, 3)
    tp = _torch_params(grads, torch.float64)
    t_norm = torch.nn.utils.clip_grad_norm_(tp, 0.5, norm_type=norm_type)
    clipped, j_norm = C.clip_grad_norm_([jnp.asarray(g) for g in grads], 0.5, norm_type)
    # measured: p=3 and p=0.5 differ by one ulp in the norm (pow/sum order); others exact
    assert abs(float(j_norm) - t_norm.item()) <= 4e-16 * abs(t_norm.item())
    for a, t in zip(clipped, tp):
        assert _rel(a, t.grad.numpy()) <= 4e-16


def test_get_total_norm_and_clip_grads_with_norm_match_torch():
    grads = _grads(torch.float64, 5)
    tp = _torch_params(grads, torch.float64)
    jg = [jnp.asarray(g) for g in grads]
    for p in (2.0, 1.0, math.inf):
        t_norm = torch.nn.utils.get_total_norm([t.grad for t in tp], p)
        assert _rel(C.get_total_norm(jg, p), t_norm.numpy()) <= 1e-15
    t_norm = torch.nn.utils.get_total_norm([t.grad for t in tp])
    torch.nn.utils.clip_grads_with_norm_(tp, 0.25, t_norm)
    out = C.clip_grads_with_norm_(jg, 0.25, C.get_total_norm(jg))
    for a, t in zip(out, tp):
        assert _rel(a, t.grad.numpy()) <= 1e-15


def test_pytrees_none_leaves_mixed_dtypes_and_single_array():
    """Dict trees, None leaves skipped (torch's missing .grad), float32+float64 promoted like
    torch.stack, a bare array as torch's single tensor."""
    rng = np.random.default_rng(7)
    a32 = rng.standard_normal((4,)).astype(np.float32)
    b64 = rng.standard_normal((3, 2))
    tree = {"a": jnp.asarray(a32), "b": jnp.asarray(b64), "c": None}
    out, norm = C.clip_grad_norm_(tree, 0.5)
    ta = torch.zeros(4, requires_grad=True)
    tb = torch.zeros(3, 2, dtype=torch.float64, requires_grad=True)
    tc = torch.zeros(2, requires_grad=True)  # no .grad
    ta.grad, tb.grad = torch.tensor(a32), torch.tensor(b64)
    t_norm = torch.nn.utils.clip_grad_norm_([ta, tb, tc], 0.5)
    assert norm.dtype == jnp.float64 and t_norm.dtype == torch.float64
    assert _rel(norm, t_norm.numpy()) <= 1e-15
    assert out["c"] is None and out["a"].dtype == jnp.float32
    assert _rel(out["a"], ta.grad.numpy()) <= TOL[torch.float32]
    assert _rel(out["b"], tb.grad.numpy()) <= 1e-15
    # a single array
    single, n1 = C.clip_grad_norm_(jnp.asarray(b64), 1.0, 1.0)
    tb.grad = torch.tensor(b64)
    t1 = torch.nn.utils.clip_grad_norm_(tb, 1.0, 1.0)
    assert _rel(n1, t1.numpy()) <= 1e-15 and _rel(single, tb.grad.numpy()) <= 1e-15


EMPTY_INF = "cannot compute the (-?inf|infinity) norm on an empty tensor because the operation"


def test_empty_tree_and_empty_leaves():
    """An empty tree: norm 0.0 in float32 (torch.tensor(0.0)); empty leaves as torch, whose inf
    norms have no identity and raise."""
    out, norm = C.clip_grad_norm_({}, 1.0)
    assert out == {} and norm.dtype == jnp.float32 and float(norm) == 0.0
    t0 = torch.nn.utils.clip_grad_norm_([], 1.0)
    assert t0.dtype == torch.float32 and t0.item() == 0.0
    empty, full = np.zeros((0,)), np.arange(1.0, 4.0)
    for p in (2.0, 1.0, 0.0, 3.0):
        tp = _torch_params([empty, full], torch.float64)
        t_norm = torch.nn.utils.clip_grad_norm_(tp, 0.1, norm_type=p)
        out, j_norm = C.clip_grad_norm_([jnp.asarray(empty), jnp.asarray(full)], 0.1, p)
        assert _rel(j_norm, t_norm.numpy()) <= 1e-15, p
        assert out[0].shape == (0,) and _rel(out[1], tp[1].grad.numpy()) <= 1e-15
    for p in (math.inf, -math.inf):
        with pytest.raises(RuntimeError, match=EMPTY_INF):
            torch.nn.utils.clip_grad_norm_(_torch_params([empty, full], torch.float64), 1, p)
        with pytest.raises(RuntimeError, match=EMPTY_INF):
            C.clip_grad_norm_([jnp.asarray(empty), jnp.asarray(full)], 1.0, p)


def test_nonfinite_without_error_flag_matches_torch():
    """error_if_nonfinite=False: torch scales by the non-finite norm anyway (NaNs and zeros)."""
    for bad in (math.inf, math.nan):
        grads = _grads(torch.float64, 2)
        grads[0][0, 0] = bad
        tp = _torch_params(grads, torch.float64)
        t_norm = torch.nn.utils.clip_grad_norm_(tp, 1.0)
        out, j_norm = C.clip_grad_norm_([jnp.asarray(g) for g in grads], 1.0)
        np.testing.assert_array_equal(np.asarray(j_norm), t_norm.numpy())
        for a, t in zip(out, tp):
            np.testing.assert_array_equal(np.asarray(a), t.grad.numpy())


def _torch_message(norm_type):
    p = torch.zeros(2, requires_grad=True)
    p.grad = torch.tensor([math.nan, 1.0])
    with pytest.raises(RuntimeError) as info:
        torch.nn.utils.clip_grad_norm_([p], 1.0, norm_type=norm_type, error_if_nonfinite=True)
    return str(info.value)


@pytest.mark.parametrize("norm_type", [2.0, "inf"])
def test_error_if_nonfinite_eager_is_torchs_error(norm_type):
    message = _torch_message(norm_type)
    g = {"w": jnp.array([jnp.nan, 1.0])}
    for fn in (C.clip_grad_norm_, lambda g, m, p, e: C.get_total_norm(g, p, e)):
        with pytest.raises(RuntimeError) as info:
            fn(g, 1.0, norm_type, True)
        assert str(info.value) == message
    # a finite norm passes, and the flag off lets the NaN through as torch does
    C.clip_grad_norm_({"w": jnp.array([3.0, 4.0])}, 1.0, norm_type, True)
    assert bool(jnp.isnan(C.clip_grad_norm_(g, 1.0, norm_type, False)[1]))


def test_error_if_nonfinite_is_reported_inside_jit():
    """Inside jit (and scan): the call raises jax.errors.JaxRuntimeError, a RuntimeError whose
    message carries torch's text; a finite norm runs through without a report."""
    message = _torch_message(2.0)
    step = jax.jit(lambda g: C.clip_grad_norm_(g, 1.0, 2.0, True))
    out, norm = step({"w": jnp.array([3.0, 4.0])})
    assert float(norm) == 5.0
    for bad in (jnp.nan, jnp.inf, -jnp.inf):
        with pytest.raises(RuntimeError, match="non-finite, so it cannot be clipped") as info:
            jax.block_until_ready(step({"w": jnp.array([bad, 1.0])}))
        assert isinstance(info.value, jax.errors.JaxRuntimeError)
        assert message in str(info.value)

    # the transformation, in a jitted train step and in a lax.scan over steps
    tx = optax.chain(C.clip_grad_norm(1.0, error_if_nonfinite=True), sgd(lr=0.1))
    params = {"w": jnp.ones(2)}
    state = tx.init(params)

    @jax.jit
    def train_step(params, state, g):
        updates, state = tx.update(g, state, params)
        return optax.apply_updates(params, updates), state

    train_step(params, state, {"w": jnp.ones(2)})
    with pytest.raises(RuntimeError, match="non-finite"):
        jax.block_until_ready(train_step(params, state, {"w": jnp.array([1.0, jnp.inf])}))

    def body(carry, g):
        return train_step(*carry, {"w": g}), None

    gs = jnp.array([[1.0, 2.0], [jnp.nan, 0.0], [1.0, 1.0]])
    with pytest.raises(RuntimeError, match="non-finite"):
        jax.block_until_ready(jax.jit(lambda c, gs: jax.lax.scan(body, c, gs))((params, state), gs))


def _torch_clip_trajectory(params, grads, dtype, opt_cls, opt_kw, clip):
    tp = [torch.tensor(p).to(dtype).requires_grad_() for p in params]
    opt = opt_cls(tp, **opt_kw)
    traj, norms = [], []
    for count, g in enumerate(grads):
        for t, gg in zip(tp, g):
            t.grad = torch.tensor(gg).to(dtype)
        norm = clip(tp, count)
        norms.append(None if norm is None else norm.item())
        opt.step()
        traj.append([t.detach().clone().numpy() for t in tp])
    return traj, norms


# (norm_type, max_norm, optimizer) covering every norm type, clipping on most steps or none
TRAJ_CASES = [
    (2.0, 1.0, "adam"),
    (1.0, 2.0, "sgd"),
    (math.inf, 0.5, "adam"),
    ("inf", 0.5, "sgd"),
    (-math.inf, 0.05, "sgd"),
    (0.0, 3.0, "adam"),
    (0.5, 10.0, "sgd"),
    (3.0, 1.0, "adam"),
    (-1.0, 0.01, "sgd"),
    (2.0, 1e3, "adam"),
]
OPTS = {
    "adam": (torch.optim.Adam, adam, dict(lr=0.05)),
    "sgd": (torch.optim.SGD, sgd, dict(lr=0.1, momentum=0.9)),
}


# every case in float64; float32 and complex128 on a spread of them (each case jits a chain)
TRAJ_GRID = (
    [(*c, torch.float64) for c in TRAJ_CASES]
    + [(*TRAJ_CASES[i], torch.float32) for i in (0, 2, 5, 7)]
    + [(*TRAJ_CASES[i], torch.complex128) for i in (1, 3, 8)]
)


@pytest.mark.parametrize("norm_type,max_norm,opt,dtype", TRAJ_GRID, ids=str)
def test_transformation_trajectory_matches_torch_loop(norm_type, max_norm, opt, dtype):
    """optax.chain(clip_grad_norm, optimizer) == backward; clip_grad_norm_; step, 25 steps."""
    params, grads = problem(dtype, 25, grad_scale=2.0)
    t_cls, j_fn, kw = OPTS[opt]

    def clip(tp, count):
        return torch.nn.utils.clip_grad_norm_(tp, max_norm, norm_type=norm_type)

    t_traj, t_norms = _torch_clip_trajectory(params, grads, dtype, t_cls, kw, clip)
    tx = optax.chain(C.clip_grad_norm(max_norm, norm_type), j_fn(**kw))
    j_traj, states = run_jax(tx, params, grads, dtype, states=True)
    assert rel_err(j_traj, t_traj) <= TOL[dtype]
    j_norms = [float(s[0].total_norm) for s in states]
    assert np.max(np.abs(np.array(j_norms) - t_norms) / np.abs(t_norms)) <= TOL[dtype]
    assert [int(s[0].count) for s in states] == list(range(1, 26))


def test_scheduled_max_norm_and_array_max_norm():
    """max_norm as a schedule of the count, or a 1-element array, as torch's changing value."""
    params, grads = problem(torch.float64, 20, grad_scale=3.0)

    def max_norm_at(c):
        return 0.5 + 0.1 * c

    def clip(tp, count):
        return torch.nn.utils.clip_grad_norm_(tp, max_norm_at(count))

    t_traj, _ = _torch_clip_trajectory(
        params, grads, torch.float64, torch.optim.SGD, dict(lr=0.1), clip
    )
    tx = optax.chain(C.clip_grad_norm(lambda c: 0.5 + 0.1 * c), sgd(lr=0.1))
    j_traj = run_jax(tx, params, grads, torch.float64)
    assert rel_err(j_traj, t_traj) <= TOL[torch.float64]

    def clip_tensor(tp, count):  # torch takes float(max_norm)
        return torch.nn.utils.clip_grad_norm_(tp, torch.tensor([0.7], dtype=torch.float64))

    t_traj, _ = _torch_clip_trajectory(
        params, grads, torch.float64, torch.optim.SGD, dict(lr=0.1), clip_tensor
    )
    tx = optax.chain(C.clip_grad_norm(np.array([0.7])), sgd(lr=0.1))
    j_traj = run_jax(tx, params, grads, torch.float64)
    assert rel_err(j_traj, t_traj) <= TOL[torch.float64]
    with pytest.raises(ValueError, match="Tensor max_norm must be 1-element"):
        C.clip_grad_norm(np.array([1.0, 2.0]))


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
@pytest.mark.parametrize("clip_value", [0.1, 1.0, 1e3, -0.5])
def test_clip_grad_value_matches_torch(clip_value, dtype):
    """Function form on NaN-bearing gradients, and the transformation over a trajectory."""
    grads = _grads(dtype, 4, scale=2.0)
    grads[0][1, 1] = math.nan
    tp = _torch_params(grads, dtype)
    torch.nn.utils.clip_grad_value_(tp, clip_value)
    out = C.clip_grad_value_([jnp.asarray(g, JAX_DTYPE[dtype]) for g in grads], clip_value)
    for a, t in zip(out, tp):
        np.testing.assert_array_equal(np.asarray(a), t.grad.numpy())  # clamping is exact

    params, grads = problem(dtype, 20, grad_scale=2.0)

    def clip(tp, count):
        torch.nn.utils.clip_grad_value_(tp, clip_value)

    t_traj, _ = _torch_clip_trajectory(params, grads, dtype, torch.optim.Adam, dict(lr=0.05), clip)
    tx = optax.chain(C.clip_grad_value(clip_value), adam(lr=0.05))
    j_traj = run_jax(tx, params, grads, dtype)
    assert rel_err(j_traj, t_traj) <= TOL[dtype]


def test_clip_grad_value_complex_raises_like_torch():
    tp = _torch_params(_grads(torch.complex128), torch.complex128)
    with pytest.raises(NotImplementedError, match="clamp is not supported for complex types"):
        torch.nn.utils.clip_grad_value_(tp, 1.0)
    with pytest.raises(NotImplementedError, match="clamp is not supported for complex types"):
        C.clip_grad_value_([jnp.ones(2, jnp.complex128)], 1.0)


@pytest.mark.parametrize(
    "ju_fn,torch_fn",
    [
        (C.get_total_norm, torch.nn.utils.get_total_norm),
        (C.clip_grad_norm_, torch.nn.utils.clip_grad_norm_),
        (C.clip_grads_with_norm_, torch.nn.utils.clip_grads_with_norm_),
        (C.clip_grad_value_, torch.nn.utils.clip_grad_value_),
        (C.clip_grad_norm, torch.nn.utils.clip_grad_norm_),
        (C.clip_grad_value, torch.nn.utils.clip_grad_value_),
    ],
    ids=lambda f: f.__name__,
)
def test_signature_matches_torch(ju_fn, torch_fn):
    """torch's argument names, order, kinds and defaults after the tensors argument (which the
    function forms take as ``grads``/``tensors`` and the transformations do not take), minus
    ``foreach``."""
    t_params = [
        p for p in list(inspect.signature(torch_fn).parameters.values())[1:]
        if p.name != "foreach"
    ]
    j_params = list(inspect.signature(ju_fn).parameters.values())
    if ju_fn not in (C.clip_grad_norm, C.clip_grad_value):  # transformations take no tensors
        j_params = j_params[1:]
    assert [(p.name, p.kind, p.default) for p in j_params] == [
        (p.name, p.kind, p.default) for p in t_params
    ]

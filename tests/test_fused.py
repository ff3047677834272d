"""fused=True and ju.step: the numba XLA-FFI kernels against jaxupdate's XLA path and torch.

The kernels repeat the XLA path's arithmetic element by element (jaxupdate/fused/_kernels.py),
so trajectories are compared bit for bit where XLA compiles the same operations: float32
without x64 and float64 with it. The XLA path's own float32 rounding under x64 (excess
precision) and on trees of fewer than 8 leaves (a division rewritten) is pinned below with the
measured bound.
"""

from __future__ import annotations

import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

import jaxupdate as ju
from jaxupdate import fused as jf
from tests.fused_cases import (
    CASES,
    case_id,
    fused_trajectory,
    make,
    problem,
    unfused_trajectory,
)
from tests.parity import TOL, rel_err, run_torch

pytest.importorskip("numba", reason="the fused kernels are compiled with numba")
step_mod = sys.modules["jaxupdate.step"]  # the module (ju.step is the function)


def _assert_same(a, b, maxulp=0):
    for (pa, sa), (pb, sb) in zip(a, b, strict=True):
        la, lb = jax.tree.leaves((pa, sa)), jax.tree.leaves((pb, sb))
        assert len(la) == len(lb)
        for x, y in zip(la, lb):
            x, y = np.asarray(x), np.asarray(y)
            assert x.shape == y.shape and x.dtype == y.dtype
            if maxulp == 0 or x.dtype.kind != "f" or not x.size:
                np.testing.assert_array_equal(x, y)
            else:
                # ulps of the leaf's largest magnitude (elements near 0 have tiny ulps)
                scale = np.spacing(np.max(np.abs(y)))
                assert np.max(np.abs(x - y)) <= maxulp * scale, np.max(np.abs(x - y)) / scale


@pytest.mark.parametrize("case", CASES, ids=[case_id(c) for c in CASES])
def test_float32_bit_identical_to_xla_path(case):
    with jax.enable_x64(False):
        params, grads = problem(np.float32)
        fused = fused_trajectory(make(*case, True), params, grads)
        xla = unfused_trajectory(make(*case, False), params, grads)
    _assert_same(fused, xla)


@pytest.mark.parametrize("case", CASES, ids=[case_id(c) for c in CASES])
def test_float64_bit_identical_to_xla_path(case):
    params, grads = problem(np.float64)
    _assert_same(
        fused_trajectory(make(*case, True), params, grads),
        unfused_trajectory(make(*case, False), params, grads),
    )


@pytest.mark.parametrize("case", CASES[::3], ids=[case_id(c) for c in CASES[::3]])
def test_float32_under_x64_within_ulps(case):
    # Under jax_enable_x64, float32's single-rounding add_scaled runs in float64, and XLA's
    # default xla_allow_excess_precision then skips some float32 roundings between those ops
    # (and divides Adam's sqrt(v) by a reciprocal): measured at most 3 ulps (of the leaf's
    # largest magnitude, SGD with dampening and weight decay) over these 6-step trajectories.
    params, grads = problem(np.float32)
    _assert_same(
        fused_trajectory(make(*case, True), params, grads),
        unfused_trajectory(make(*case, False), params, grads),
        maxulp=4,
    )


def test_adam_small_tree_within_one_ulp():
    # On trees of fewer than 8 leaves the XLA path's leaf arithmetic is not a nested call and
    # XLA rewrites torch's sqrt(v) / sqrt(bc2) into sqrt(v) * rsqrt(bc2) (about 1% of the
    # elements 1 ulp apart); the kernel keeps torch's division.
    with jax.enable_x64(False):
        params, grads = problem(np.float32, shapes=[(10_007,), (33,)])
        fused = fused_trajectory(ju.adam(lr=1e-2, fused=True), params, grads)
        xla = unfused_trajectory(ju.adam(lr=1e-2), params, grads)
    _assert_same(fused, xla, maxulp=2)


def _pointers(tree):
    return [x.unsafe_buffer_pointer() for x in jax.tree.leaves(tree) if x.size and x.ndim]


@pytest.mark.parametrize("name,kw", [("adam", {"amsgrad": True}), ("rmsprop", {
    "centered": True, "momentum": 0.9})])
def test_in_place_eager(name, kw):
    params, grads = problem(np.float32, steps=2)
    tx = make(name, kw, True)
    p = jax.tree.map(jnp.asarray, params)
    s = tx.init(p)
    ju.step(tx, p, grads[0], s)  # first call compiles; the next one is timed for reuse
    p = jax.tree.map(jnp.asarray, params)
    s = tx.init(p)
    before_p = _pointers(p)
    before_s = _pointers([x for x in jax.tree.leaves(s) if x.ndim])
    new_p, new_s = ju.step(tx, p, grads[1], s)
    assert _pointers(new_p) == before_p
    assert _pointers([x for x in jax.tree.leaves(new_s) if x.ndim]) == before_s
    # donated, as documented (empty leaves have nothing to update and are passed through)
    assert all(x.is_deleted() for x in jax.tree.leaves(p) if x.size)


def test_in_place_inside_user_jit():
    params, grads = problem(np.float32, steps=1)
    tx = ju.adam(lr=1e-3, fused=True)

    @jax.jit
    def train_step(p, g, s):
        return ju.step(tx, p, g, s)

    train = jax.jit(train_step, donate_argnums=(0, 2))
    p = jax.tree.map(jnp.asarray, params)
    s = tx.init(p)
    before = _pointers(p)
    new_p, _ = train(p, grads[0], s)
    assert _pointers(new_p) == before


def test_one_kernel_call_per_chunk():
    """Calls per step: one per CHUNK aliased buffers, not per leaf (jaxpr of a 1,000-leaf step)."""
    from jaxupdate.fused import _call

    params = [jnp.zeros((5,), jnp.float32) for _ in range(1000)]
    tx = ju.adam(fused=True)
    jaxpr = str(jax.make_jaxpr(lambda p, s: ju.step(tx, p, p, s))(params, tx.init(params)))
    per_call = _call.CHUNK - 2  # the parameters, and Adam's two flat state buffers
    assert jaxpr.count("ffi_call[") == -(-1000 // per_call)
    assert jaxpr.count(" sqrt") == 1  # Adam's bias correction, once; no per-leaf arithmetic


def test_xla_route_forced(monkeypatch):
    """The GPU route (XLA's own fusion) is tx.update + apply_updates; forced here on CPU."""
    monkeypatch.setattr(step_mod, "BACKEND", "xla")
    params, grads = problem(np.float32, steps=1)
    tx = ju.adam(lr=1e-2, fused=True)
    p = jax.tree.map(jnp.asarray, params)
    jaxpr = str(jax.make_jaxpr(lambda p, g, s: ju.step(tx, p, g, s))(p, grads[0], tx.init(p)))
    assert "ffi_call" not in jaxpr
    assert not step_mod.fused_available(tx)
    _assert_same(
        fused_trajectory(tx, params, grads), unfused_trajectory(ju.adam(lr=1e-2), params, grads)
    )


def test_step_non_fused_transformations():
    params, grads = problem(np.float64, steps=3)
    for tx in (ju.nadam(lr=1e-2), ju.adam(lr=1e-2), ju.sgd(lr=0.1, momentum=0.9)):
        _assert_same(fused_trajectory(tx, params, grads), unfused_trajectory(tx, params, grads))


def test_unsupported_dtypes_take_xla_path():
    params = {"w": jnp.ones(3, jnp.bfloat16), "c": jnp.ones(2, jnp.complex64)}
    tx = ju.adam(lr=1e-2, fused=True)
    jaxpr = str(jax.make_jaxpr(lambda p, s: ju.step(tx, p, p, s))(params, tx.init(params)))
    assert "ffi_call" not in jaxpr


def test_not_differentiable():
    tx = ju.adam(lr=1e-2, fused=True)
    p = {"w": jnp.ones(3)}

    def loss(w):
        new, _ = ju.step(tx, {"w": w}, {"w": w}, tx.init({"w": w}))
        return jnp.sum(new["w"])

    with pytest.raises(TypeError, match="not differentiable.*fused=False.*tx.update"):
        jax.grad(loss)(p["w"])


def test_not_vmappable():
    tx = ju.sgd(lr=0.1, fused=True)
    w = jnp.ones((4, 3))
    with pytest.raises(TypeError, match="cannot be vmapped.*fused=False"):
        jax.vmap(lambda w: ju.step(tx, {"w": w}, {"w": w}, tx.init({"w": w}))[0])(w)


def test_without_numba_says_how_to_install(monkeypatch):
    monkeypatch.setattr(jf, "numba_available", lambda: False)
    for fn in (ju.adam, ju.adamw, ju.sgd, ju.adagrad, ju.rmsprop):
        with pytest.raises(ImportError, match=r"pip install 'jaxupdate\[fused\]'"):
            fn(fused=True)
        fn()  # fused=False needs nothing


def test_state_interop_unchanged():
    """A fused transformation keeps the unfused state types: torch_state_dict sees the same."""
    params, grads = problem(np.float64, steps=2)
    tx_f, tx_u = ju.adam(lr=1e-2, amsgrad=True, fused=True), ju.adam(lr=1e-2, amsgrad=True)
    (pf, sf), (pu, su) = fused_trajectory(tx_f, params, grads)[-1], unfused_trajectory(
        tx_u, params, grads)[-1]
    assert jax.tree.structure(sf) == jax.tree.structure(su)
    a = ju.torch_state_dict(tx_f, sf, pf)
    b = ju.torch_state_dict(tx_u, su, pu)
    assert a["state"].keys() == b["state"].keys()
    for k in a["state"]:
        for key, v in b["state"][k].items():
            np.testing.assert_array_equal(np.asarray(a["state"][k][key]), np.asarray(v))


TORCH = [
    ("adam", torch.optim.Adam, {"lr": 1e-2, "amsgrad": True, "weight_decay": 0.1}),
    ("adamw", torch.optim.AdamW, {"lr": 1e-2}),
    ("sgd", torch.optim.SGD, {"lr": 0.1, "momentum": 0.9, "nesterov": True}),
    ("adagrad", torch.optim.Adagrad, {"lr": 0.1, "lr_decay": 0.01}),
    ("rmsprop", torch.optim.RMSprop, {"lr": 1e-2, "centered": True, "momentum": 0.9}),
]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("name,cls,kw", TORCH, ids=[t[0] for t in TORCH])
@pytest.mark.parametrize("kernel", ["fused", "single_tensor"])
def test_parity_with_torch(name, cls, kw, dtype, kernel):
    if kernel == "fused" and name == "rmsprop":
        pytest.skip("torch 2.13 has no fused RMSprop")
    rng = np.random.default_rng(1)
    shapes = [(3001,), (), (0,), (7, 13)] + [(5,)] * 8
    params = [rng.standard_normal(s) for s in shapes]
    grads = [[rng.standard_normal(s) for s in shapes] for _ in range(10)]
    torch_kw = {"fused": True} if kernel == "fused" else {"foreach": False}
    expected = run_torch(cls, {**kw, **torch_kw}, params, grads, dtype)
    tx = getattr(ju, name)(**kw, fused=True)
    npdt = np.float64 if dtype == torch.float64 else np.float32
    traj = [[np.asarray(x) for x in p] for p, _ in fused_trajectory(
        tx, [x.astype(npdt) for x in params], [[x.astype(npdt) for x in g] for g in grads])]
    assert rel_err(traj, expected) <= TOL[dtype]


def test_example_and_nnx_route():
    """examples/fused_step.py: jax.jit + ju.step and jaxupdate.nnx_optimizer.Optimizer both
    equal fused=False bit for bit (the script asserts it)."""
    import os
    import subprocess
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    env = dict(os.environ, PYTHONPATH=str(root))
    res = subprocess.run([sys.executable, str(root / "examples" / "fused_step.py")], cwd=root,
                         env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "bit-identical: True" in res.stdout and "max |diff| 0.0e+00" in res.stdout


def test_bad_layouts_raise_before_the_kernel():
    tx = ju.adam(lr=1e-2, fused=True)
    params = {"w": jnp.ones(3), "b": jnp.ones(2)}
    state = tx.init(params)
    with pytest.raises(ValueError, match=r"grads\['w'\] has shape \(4,\) but params has \(3,\)"):
        ju.step(tx, params, {"w": jnp.ones(4), "b": jnp.ones(2)}, state)
    with pytest.raises(ValueError, match="opt_state"):
        ju.step(tx, params, params, ju.sgd(momentum=0.9, fused=True).init(params))
    with pytest.raises(ValueError):
        ju.step(tx, params, params, tx.init({"w": jnp.ones(5), "b": jnp.ones(2)}))


def test_grads_that_are_the_params():
    """Eager ju.step donates params and state; a gradient leaf that is one of those arrays
    is copied first (else XLA refuses to read a donated buffer)."""
    for tx in (ju.adam(lr=0.1, fused=True), ju.adam(lr=0.1)):
        p = {"w": jnp.arange(3.0) + 1}
        s = tx.init(p)
        new, _ = ju.step(tx, p, p, s)
        np.testing.assert_allclose(np.asarray(new["w"]), np.arange(3.0) + 1 - 0.1, rtol=1e-6)


def _steps_over_layouts(tx, params_list, grads_list, fused):
    """Steps over a sequence of (params, grads) with one tree structure: params and state are
    carried while the shapes and dtypes stay, else re-initialized from the new params. fused:
    eager ju.step; else the XLA path, jitted (as unfused_trajectory)."""

    @jax.jit
    def xla_step(p, g, s):
        u, s = tx.update(g, s, p)
        return ju.apply_updates(p, u), s

    def layout(tree):
        return jax.tree.map(lambda x: (x.shape, x.dtype), tree)

    out = []
    p = s = None
    for params, grads in zip(params_list, grads_list):
        fresh = jax.tree.map(jnp.asarray, params)
        if p is None or layout(p) != layout(fresh):
            p, s = fresh, tx.init(fresh)
        g = jax.tree.map(jnp.asarray, grads)
        p, s = ju.step(tx, p, g, s) if fused else xla_step(p, g, s)
        out.append(jax.tree.map(np.asarray, (p, jf.unflatten_state(s))))
    return out


def test_cached_plan_follows_layout_changes():
    """ju.step caches its chunk plan per tree structure and checks the leaves' avals each step:
    the same structure with other shapes (an empty leaf becoming non-empty), other dtypes
    (float32 and float64 leaves interleaved, then a bfloat16 leaf: the XLA path) is re-planned
    and gives the XLA path's numbers; back to the first layout reuses nothing stale."""
    rng = np.random.default_rng(3)
    layouts = [
        {"a": ((1001,), np.float64), "b": ((0,), np.float64), "c": ((7, 3), np.float64)},
        {"a": ((1001,), np.float64), "b": ((5,), np.float64), "c": ((7, 3), np.float64)},
        {"a": ((1001,), np.float32), "b": ((5,), np.float64), "c": ((7, 3), np.float32)},
        {"a": ((9,), np.float32), "b": ((5,), jnp.bfloat16), "c": ((7, 3), np.float32)},
        {"a": ((1001,), np.float64), "b": ((0,), np.float64), "c": ((7, 3), np.float64)},
    ]
    params_list, grads_list = [], []
    for layout in layouts:
        for _ in range(2):
            params_list.append({k: rng.standard_normal(s).astype(d) for k, (s, d) in
                                layout.items()})
            grads_list.append({k: rng.standard_normal(s).astype(d) for k, (s, d) in
                               layout.items()})
    fused = _steps_over_layouts(ju.adam(lr=1e-2, fused=True), params_list, grads_list, True)
    xla = _steps_over_layouts(ju.adam(lr=1e-2), params_list, grads_list, False)
    # trees of 3 leaves: the XLA path's float32 division differs by 1 ulp (see
    # test_adam_small_tree_within_one_ulp); float64 steps are bit for bit
    _assert_same(fused, xla, maxulp=2)
    assert all(np.array_equal(a, b) for (fa, _), (xa, _) in zip(fused, xla)
               for a, b in zip(jax.tree.leaves(fa), jax.tree.leaves(xa))
               if a.dtype == np.float64)


def test_cached_plan_steady_state_no_checks_no_traces(monkeypatch):
    """Once a layout has been stepped, the next steps skip the layout checks and the planning
    (the per-leaf Python that cost ~20 us a leaf) and trace nothing new."""
    tx = ju.adam(lr=1e-2, fused=True)
    params, grads = problem(np.float32, steps=4)
    p = jax.tree.map(jnp.asarray, params)
    s = tx.init(p)
    gs = [jax.tree.map(jnp.asarray, g) for g in grads]
    p, s = ju.step(tx, p, gs[0], s)
    traces = step_mod._chunk_step._cache_size()
    checks = []
    real_check = step_mod._check
    monkeypatch.setattr(step_mod, "_check", lambda *a: checks.append(1) or real_check(*a))
    for g in gs[1:]:
        p, s = ju.step(tx, p, g, s)
    assert checks == [] and step_mod._chunk_step._cache_size() == traces
    expected = unfused_trajectory(ju.adam(lr=1e-2), params, grads)[-1]
    _assert_same([jax.tree.map(np.asarray, (p, jf.unflatten_state(s)))], [expected], maxulp=0)


def test_cached_plan_bad_grads_raise_before_donating():
    """A layout error after the plan was cached is still the named one, raised before any
    buffer is donated (the params stay usable)."""
    tx = ju.adam(lr=1e-2, fused=True)
    params = {"w": jnp.ones(3), "b": jnp.ones(2)}
    state = tx.init(params)
    params, state = ju.step(tx, params, {"w": jnp.ones(3), "b": jnp.ones(2)}, state)
    with pytest.raises(ValueError, match=r"grads\['w'\] has shape \(4,\) but params has \(3,\)"):
        ju.step(tx, params, {"w": jnp.ones(4), "b": jnp.ones(2)}, state)
    with pytest.raises(ValueError, match=r"grads\['b'\] has dtype float32"):
        ju.step(tx, params, {"w": jnp.ones(3), "b": jnp.ones(2, jnp.float32)}, state)
    assert not any(x.is_deleted() for x in jax.tree.leaves((params, state)))
    ju.step(tx, params, {"w": jnp.ones(3), "b": jnp.ones(2)}, state)


def test_numpy_grads_general_route():
    """numpy gradients (not jax arrays) take ju.step's general eager route: same numbers."""
    with jax.enable_x64(False):
        params, grads = problem(np.float32)
        tx = ju.adam(lr=1e-2, amsgrad=True, fused=True)
        _assert_same(fused_trajectory(tx, params, grads, jax_grads=False),
                     unfused_trajectory(ju.adam(lr=1e-2, amsgrad=True), params, grads))


def test_kernel_rejects_mismatched_chunk_while_tracing():
    """The chunk call checks its own layout when traced (a guard behind ju.step's checks: the
    kernel would otherwise read a gradient of another length out of bounds)."""
    from jaxupdate.fused import _call, _kernels

    name = _call.target("step", _kernels.handler)
    sc = jnp.zeros(15, jnp.float32)
    with pytest.raises(_call.LayoutError, match="leaf 0"):
        step_mod._chunk_step(name, sc, _call._offset(0), [jnp.ones(3, jnp.float32)],
                             [jnp.ones(4, jnp.float32)],
                             (jnp.ones(3, jnp.float32), jnp.ones(3, jnp.float32)))
    with pytest.raises(_call.LayoutError, match="state buffer"):
        step_mod._chunk_step(name, sc, _call._offset(0), [jnp.ones(3, jnp.float32)],
                             [jnp.ones(3, jnp.float32)], (jnp.ones(3, jnp.float64),))


def _warnings_of(fn):
    import warnings

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fn()
    return [w for w in caught if issubclass(w.category, jf.FusedOutsideStepWarning)]


def test_update_outside_step_warns_once():
    """A fused transformation inside optax.chain, or its update called directly, runs the XLA
    path: it warns once (per transformation), naming ju.step and fused=False."""
    import optax

    params = {"w": jnp.ones(3)}
    grads = {"w": jnp.full(3, 0.5)}
    tx = ju.adam(lr=1e-2, fused=True)
    state = tx.init(params)
    caught = _warnings_of(lambda: [tx.update(grads, state, params) for _ in range(3)])
    assert len(caught) == 1
    assert "ju.step(tx, params, grads, opt_state)" in str(caught[0].message)
    assert "fused=False" in str(caught[0].message)
    assert caught[0].filename == __file__  # points at the caller of update

    chained = optax.chain(optax.clip_by_global_norm(1.0), ju.sgd(lr=0.1, fused=True))
    cstate = chained.init(params)
    assert len(_warnings_of(lambda: jax.jit(chained.update)(grads, cstate, params))) == 1
    # ju.step on the chain: the fused optimizer inside it still runs the XLA path
    chained = optax.chain(optax.clip_by_global_norm(1.0), ju.sgd(lr=0.1, fused=True))
    assert len(_warnings_of(lambda: ju.step(chained, params, grads, chained.init(params)))) == 1
    # fused=False never warns
    plain = ju.adam(lr=1e-2)
    assert _warnings_of(lambda: plain.update(grads, plain.init(params), params)) == []


def test_step_own_xla_route_does_not_warn(monkeypatch):
    """ju.step's own XLA route for a fused transformation (bfloat16 leaves; a GPU, forced here
    with BACKEND="xla"; under the user's jit) is not a misuse: no warning."""
    tx = ju.adam(lr=1e-2, fused=True)
    bf = {"w": jnp.ones(3, jnp.bfloat16)}
    assert _warnings_of(lambda: ju.step(tx, bf, bf, tx.init(bf))) == []
    monkeypatch.setattr(step_mod, "BACKEND", "xla")
    tx = ju.rmsprop(lr=1e-2, fused=True)
    p = {"w": jnp.ones(3)}
    assert _warnings_of(lambda: ju.step(tx, p, {"w": jnp.ones(3)}, tx.init(p))) == []
    p = {"w": jnp.ones(3)}  # the one above was donated
    assert _warnings_of(lambda: jax.jit(lambda p, s: ju.step(tx, p, p, s))(p, tx.init(p))) == []


def test_gc_state_restored():
    """The eager step pauses Python's GC while it creates its output arrays and restores the
    caller's setting afterwards (enabled or not)."""
    import gc

    tx = ju.adam(lr=1e-2, fused=True)
    p = {"w": jnp.ones(3)}
    s = tx.init(p)
    assert gc.isenabled()
    p, s = ju.step(tx, p, {"w": jnp.ones(3)}, s)
    assert gc.isenabled()
    gc.disable()
    try:
        p, s = ju.step(tx, p, {"w": jnp.ones(3)}, s)
        assert not gc.isenabled()
    finally:
        gc.enable()


# ------------------------------------------------------------------------------------------
# flat state (jaxupdate.fused._flat): what tx.init holds on CPU, and its boundaries


def test_flat_layout_round_trip():
    """Leaves of two dtypes (empty and 0-d ones too) in one buffer per dtype, in flatten
    order, and back exactly; another layout is refused; jit and tree_map see the buffers."""
    tree = {"a": jnp.arange(6.0, dtype=jnp.float32).reshape(2, 3),
            "b": jnp.zeros((0,), jnp.float64), "c": jnp.asarray(2.0, jnp.float64),
            "d": jnp.arange(5.0, dtype=jnp.float32) + 10, "e": jnp.zeros((3, 0), jnp.float32)}
    f = jf.FlatLeaves.from_tree(tree)
    assert [(b.shape, b.dtype) for b in f.buffers] == [((11,), jnp.float32), ((1,), jnp.float64)]
    np.testing.assert_array_equal(f.buffers[0], np.r_[np.arange(6.0), np.arange(5.0) + 10])
    back = f.to_tree()
    assert jax.tree.structure(back) == jax.tree.structure(tree)
    for x, y in zip(jax.tree.leaves(back), jax.tree.leaves(tree)):
        assert x.shape == y.shape and x.dtype == y.dtype
        np.testing.assert_array_equal(x, y)
    assert len(jax.tree.leaves(f)) == 2
    g = jax.jit(lambda f: jax.tree.map(lambda b: b * 2, f))(f)
    assert g.layout == f.layout
    np.testing.assert_array_equal(g.to_tree()["d"], 2 * tree["d"])
    with pytest.raises(ValueError, match="layout"):
        jf.FlatLeaves.from_tree({**tree, "d": jnp.ones(4, jnp.float32)}, f.layout)


def test_fused_state_is_flat_on_cpu():
    """On CPU tx.init holds the kernel's state fields flat (same values and, unflattened, the
    same types as fused=False); bfloat16 parameters keep per-leaf state (the XLA path)."""
    params = {"w": jnp.ones((3, 4)), "b": jnp.zeros(0), "s": jnp.ones(())}
    for name, kw in [("adam", {"amsgrad": True}), ("sgd", {"momentum": 0.9}),
                     ("adagrad", {"initial_accumulator_value": 0.3}),
                     ("rmsprop", {"centered": True, "momentum": 0.5})]:
        flat = make(name, kw, True).init(params)
        plain = make(name, kw, False).init(params)
        assert jf.has_flat(flat) and not jf.has_flat(plain)
        _assert_same([(params, jf.unflatten_state(flat))], [(params, plain)])
        assert jf.flatten_like(plain, flat).__repr__() == flat.__repr__()
    assert not jf.has_flat(ju.adam(fused=True).init({"w": jnp.ones(3, jnp.bfloat16)}))


def test_per_leaf_state_takes_xla_path():
    """A per-leaf state (fused=False's, or unflattened) given to ju.step with a fused
    optimizer runs the XLA path, with the same numbers, and stays per leaf."""
    params, grads = problem(np.float64, steps=3)
    tx = ju.adam(lr=1e-2, amsgrad=True, fused=True)
    p = jax.tree.map(jnp.asarray, params)
    s = jf.unflatten_state(tx.init(p))
    jaxpr = str(jax.make_jaxpr(lambda p, g, s: ju.step(tx, p, g, s))(p, p, s))
    assert "ffi_call" not in jaxpr
    out = []
    for g in grads:
        p, s = ju.step(tx, p, jax.tree.map(jnp.asarray, g), s)
        assert not jf.has_flat(s)
        out.append(jax.tree.map(np.asarray, (p, s)))
    _assert_same(out, unfused_trajectory(ju.adam(lr=1e-2, amsgrad=True), params, grads))


def test_mixed_dtypes_share_no_buffer(monkeypatch):
    """float32 and float64 leaves interleaved: one flat buffer per dtype, each leaf at its
    offset, in many calls per dtype (chunks shrunk to 7 leaves, eager and under jit). Every
    leaf ends bit for bit where a run over its dtype's leaves alone ends (the offsets address
    the right elements), and float64 where the XLA path does."""
    from jaxupdate.fused import _call

    monkeypatch.setattr(_call, "EAGER_CHUNK", 9)
    monkeypatch.setattr(_call, "CHUNK", 9)
    rng = np.random.default_rng(7)
    shapes = [(3001,), (5,), (), (0,), (200, 3), (17,)] * 20
    params = {f"p{i:03d}": rng.standard_normal(s).astype(np.float32 if i % 3 else np.float64)
              for i, s in enumerate(shapes)}
    grads = [{k: rng.standard_normal(v.shape).astype(v.dtype) for k, v in params.items()}
             for _ in range(4)]

    def only(tree, dtype):
        return {k: v for k, v in tree.items() if v.dtype == dtype}

    for name, kw in [("adam", {"weight_decay": 0.1}), ("rmsprop", {"momentum": 0.9})]:
        tx = make(name, kw, True)
        mixed = fused_trajectory(tx, params, grads)
        for dt in (np.float32, np.float64):
            alone = fused_trajectory(tx, only(params, dt), [only(g, dt) for g in grads])
            for (mp, _), (ap, _) in zip(mixed, alone):
                for k, v in ap.items():
                    np.testing.assert_array_equal(mp[k], v)
        # the same steps through the user's jit (ju.step's traced route)
        jitted = jax.jit(lambda p, g, s, tx=tx: ju.step(tx, p, g, s))
        p, s = jax.tree.map(jnp.asarray, params), tx.init(jax.tree.map(jnp.asarray, params))
        for g in grads:
            p, s = jitted(p, jax.tree.map(jnp.asarray, g), s)
        _assert_same([jax.tree.map(np.asarray, (p, jf.unflatten_state(s)))], mixed[-1:])
        xla = unfused_trajectory(make(name, kw, False), params, grads)
        for (mp, ms), (xp, xs) in zip(mixed, xla):
            for a, b in zip(jax.tree.leaves((mp, ms)), jax.tree.leaves((xp, xs))):
                if a.dtype == np.float64:
                    np.testing.assert_array_equal(a, b)


def test_flat_state_interop_and_checkpoint(tmp_path):
    """The flat state itself (not unflattened by the test) through torch_state_dict,
    load_torch_state_dict and jaxupdate.checkpoint: the same as fused=False's, and loaded
    back flat; checkpoints restore across fused and unfused."""
    from jaxupdate import checkpoint

    # orbax refuses zero-size arrays, so no empty leaves here
    params, grads = problem(np.float64, steps=2, shapes=[(1001,), (), (7, 13), (1,)] * 3)
    tx_f, tx_u = ju.adam(lr=1e-2, amsgrad=True, fused=True), ju.adam(lr=1e-2, amsgrad=True)
    pf = jax.tree.map(jnp.asarray, params)
    sf = tx_f.init(pf)
    for g in grads:
        pf, sf = ju.step(tx_f, pf, jax.tree.map(jnp.asarray, g), sf)
    pu, su = unfused_trajectory(tx_u, params, grads)[-1]
    assert jf.has_flat(sf)
    a, b = ju.torch_state_dict(tx_f, sf, pf), ju.torch_state_dict(tx_u, su, pu)
    assert a["state"].keys() == b["state"].keys()
    for k in a["state"]:
        for key, v in b["state"][k].items():
            np.testing.assert_array_equal(np.asarray(a["state"][k][key]), np.asarray(v))
    loaded = ju.load_torch_state_dict(tx_f, b, pf)
    assert jf.has_flat(loaded)
    _assert_same([(pf, jf.unflatten_state(loaded))], [(pu, su)])
    # checkpoints hold the per-leaf state: either optimizer restores either's
    checkpoint.save(tmp_path / "f", pf, sf, step=2)
    checkpoint.save(tmp_path / "u", pu, su, step=2)
    for d in ("f", "u"):
        r = checkpoint.restore(tmp_path / d, pf, jax.eval_shape(tx_f.init, pf))
        assert jf.has_flat(r.opt_state)
        _assert_same([(r.params, jf.unflatten_state(r.opt_state))], [(pu, su)])
        r = checkpoint.restore(tmp_path / d, pu, tx_u.init(pu))
        _assert_same([(r.params, r.opt_state)], [(pu, su)])
    # and the restored flat state steps on with the kernel
    g = jax.tree.map(jnp.asarray, grads[0])
    r = checkpoint.restore(tmp_path / "u", pf, jax.eval_shape(tx_f.init, pf))
    p2, s2 = ju.step(tx_f, r.params, g, r.opt_state)
    assert jf.has_flat(s2)


def test_flat_state_of_wrong_size_raises():
    """Flat buffers cut short (a tree_map over the state) are refused with the named error
    before the kernel could read past them, on the cached-plan route too."""
    tx = ju.adam(lr=1e-2, fused=True)
    params = {"w": jnp.ones(30), "b": jnp.ones(2)}
    state = tx.init(params)
    params, state = ju.step(tx, params, {"w": jnp.ones(30), "b": jnp.ones(2)}, state)
    short = jax.tree.map(lambda x: x[:-1] if x.ndim == 1 else x, state)
    with pytest.raises(ValueError, match="opt_state"):
        ju.step(tx, params, {"w": jnp.ones(30), "b": jnp.ones(2)}, short)
    assert not any(x.is_deleted() for x in jax.tree.leaves((params, state)))


def test_several_devices_keep_per_leaf_state():
    """With several devices (parameters may be sharded, also inside jit) tx.init keeps the
    per-leaf state, which ju.step runs through the XLA path with the same numbers."""
    import os
    import subprocess
    from pathlib import Path

    script = (
        "import jax, jax.numpy as jnp, numpy as np, jaxupdate as ju\n"
        "from jaxupdate.fused import has_flat\n"
        "assert jax.device_count() == 2\n"
        "tx, plain = ju.adam(lr=0.1, fused=True), ju.adam(lr=0.1)\n"
        "p = {'w': jnp.arange(6.0), 'b': jnp.ones(3)}\n"
        "s = tx.init(p)\n"
        "assert not has_flat(s) and not has_flat(jax.jit(tx.init)(p))\n"
        "new, _ = ju.step(tx, p, p, s)\n"
        "q = {'w': jnp.arange(6.0), 'b': jnp.ones(3)}\n"
        "ref, _ = ju.step(plain, q, q, plain.init(q))\n"
        "assert all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(new), "
        "jax.tree.leaves(ref)))\n"
        "print('ok')\n"
    )
    root = Path(__file__).resolve().parents[1]
    env = dict(os.environ, PYTHONPATH=str(root), JAX_PLATFORMS="cpu",
               XLA_FLAGS="--xla_force_host_platform_device_count=2")
    res = subprocess.run([sys.executable, "-c", script], cwd=root, env=env,
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0 and res.stdout.strip() == "ok", res.stdout + res.stderr


def test_flat_state_to_torch_continues_the_run():
    """ju.to_torch reads the flat state: torch's fused Adam, loaded from a fused jaxupdate run,
    continues it as the jaxupdate run itself does (float64; the project's 1e-12 parity bound,
    bit for bit on the development machine)."""
    shapes = [(1001,), (7, 13), ()]
    params, grads = problem(np.float64, steps=4, shapes=shapes)
    tx = ju.adam(lr=1e-2, amsgrad=True, fused=True)
    p = [jnp.asarray(params[k]) for k in sorted(params)]
    gs = [[jnp.asarray(g[k]) for k in sorted(g)] for g in grads]
    s = tx.init(p)
    for g in gs[:2]:
        p, s = ju.step(tx, p, g, s)
    assert jf.has_flat(s)
    w = [torch.nn.Parameter(torch.zeros(x.shape, dtype=torch.float64)) for x in p]
    opt = torch.optim.Adam(w, lr=1e-2, amsgrad=True, fused=True)
    ju.to_torch(opt, tx, s, p)
    for g in gs[2:]:
        p, s = ju.step(tx, p, g, s)
        for t, x in zip(w, g):
            t.grad = torch.tensor(np.array(x))
        opt.step()
    for a, t in zip(p, w):
        np.testing.assert_allclose(np.asarray(a), t.detach().numpy(), rtol=1e-12, atol=1e-15)

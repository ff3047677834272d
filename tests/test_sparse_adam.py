"""Parity of jaxupdate's sparse_adam with torch.optim.SparseAdam on sparse COO gradients.

torch receives ``torch.sparse_coo_tensor(indices, values)`` gradients (uncoalesced, with
duplicate indices), jaxupdate ``BCOO((values, indices.T))`` built from the same arrays; the
parameters are compared after every step.
"""

from __future__ import annotations

import inspect

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch
from jax.experimental import sparse
from torch.testing._internal import common_optimizers as co

from jaxupdate.optim.sparse_adam import SparseAdamState, sparse_adam
from tests.parity import (
    JAX_DTYPE,
    TOL,
    TORCH_ONLY_KWARGS,
    assert_signature_matches,
    to_jax_kwargs,
)

# tiny problems: torch's OpenMP workers would only spin-wait (see tests/conftest.py)
pytestmark = pytest.mark.usefixtures("torch_one_thread")


# Parameters: an embedding table (row-sparse gradients: one dense row per looked-up id), a
# matrix with element-sparse gradients, and a 3-d tensor with 2 sparse + 1 dense dimensions.
SHAPES = {"E": (12, 4), "T": (2, 3, 4), "W": (3, 5)}
N_SPARSE = {"E": 1, "T": 2, "W": 2}
NNZ = {"E": 9, "T": 4, "W": 6}  # with duplicates: 9 ids among 12 rows, etc.


def problem(steps, seed=0, nnz=NNZ, none_at=(), empty_at=()):
    """Initial parameters and, per step, per leaf: ``(indices (n_sparse, nnz), values)``, or
    ``None`` (no gradient) for "W" at steps in ``none_at``, or an empty gradient for "E" at
    steps in ``empty_at``."""
    rng = np.random.default_rng(seed)
    params = {k: rng.standard_normal(s) for k, s in SHAPES.items()}
    grads = []
    for step in range(steps):
        g = {}
        for k, shape in SHAPES.items():
            n = 0 if (k == "E" and step in empty_at) else nnz[k]
            ns = N_SPARSE[k]
            idx = np.stack([rng.integers(0, shape[d], size=n) for d in range(ns)])
            g[k] = (idx, rng.standard_normal((n,) + shape[ns:]))
        if step in none_at:
            g["W"] = None
        grads.append(g)
    return params, grads


def coo(idx, values, shape):
    """An uncoalesced torch COO tensor (duplicates kept), invariants checked."""
    return torch.sparse_coo_tensor(torch.tensor(idx), values, shape, check_invariants=True)


def run_torch(kwargs, params, grads, dtype):
    names = sorted(params)  # jax.tree.leaves order of a dict
    tp = {k: torch.tensor(params[k]).to(dtype).requires_grad_() for k in names}
    opt = torch.optim.SparseAdam([tp[k] for k in names], **kwargs)
    traj = []
    for g in grads:
        for k in names:
            if g[k] is None:
                tp[k].grad = None
            else:
                idx, val = g[k]
                tp[k].grad = coo(idx, torch.tensor(val).to(dtype), SHAPES[k])
        opt.step()
        traj.append({k: tp[k].detach().clone().double().numpy() for k in names})
    return traj, opt


def to_bcoo(g, k, dtype):
    if g is None:
        return None
    idx, val = g
    return sparse.BCOO((jnp.asarray(val, dtype), jnp.asarray(idx.T)), shape=SHAPES[k])


# Float hyperparameters as arguments of the jitted step: configurations differing only in
# them share one compilation.
_COMPILED = {}


def _step(maximize):
    if maximize not in _COMPILED:

        def step(grads, state, params, hp):
            tx = sparse_adam(hp["lr"], (hp["beta1"], hp["beta2"]), hp["eps"], maximize)
            updates, state = tx.update(grads, state, params)
            return optax.apply_updates(params, updates), state

        _COMPILED[maximize] = jax.jit(step)
    return _COMPILED[maximize]


def run_jax(kwargs, params, grads, dtype, jit=True, share=True):
    jdt = JAX_DTYPE[dtype]
    p = {k: jnp.asarray(v, jdt) for k, v in params.items()}
    kwargs = to_jax_kwargs(kwargs)
    if share and jit:
        full = {**{k: v.default for k, v in inspect.signature(sparse_adam).parameters.items()}}
        full.update(kwargs)
        hp = dict(lr=full["lr"], beta1=full["betas"][0], beta2=full["betas"][1], eps=full["eps"])
        # (a torch.tensor lr keeps its dtype: torch computes the step size in it)
        hp = {k: jnp.asarray(v, None if k == "lr" else jnp.float64) for k, v in hp.items()}
        jitted = _step(full["maximize"])
        step = lambda g, s, p: jitted(g, s, p, hp)  # noqa: E731
    else:
        tx = sparse_adam(**kwargs)

        def step(g, s, p):
            updates, s = tx.update(g, s, p)
            return optax.apply_updates(p, updates), s

        if jit:
            step = jax.jit(step)
    state = sparse_adam(**kwargs).init(p)
    traj = []
    for g in grads:
        p, state = step({k: to_bcoo(g[k], k, jdt) for k in g}, state, p)
        traj.append({k: np.asarray(v, np.float64) for k, v in p.items()})
    return traj, state


def rel_err(j, t):
    worst = 0.0
    for js, ts in zip(j, t, strict=True):
        for k in ts:
            scale = max(float(np.max(np.abs(ts[k]))), 1e-30)
            worst = max(worst, float(np.max(np.abs(js[k] - ts[k]))) / scale)
    return worst


def check(kwargs, dtype, steps=30, **prob):
    params, grads = problem(steps, **prob)
    t, opt = run_torch(kwargs, params, grads, dtype)
    j, state = run_jax(kwargs, params, grads, dtype)
    err = rel_err(j, t)
    assert err <= TOL[dtype], f"{kwargs} {dtype}: rel err {err:.2e} > {TOL[dtype]:.0e}"
    # torch's per-parameter state: step counts and both moments
    for i, k in enumerate(sorted(SHAPES)):
        st = opt.state[opt.param_groups[0]["params"][i]]
        assert int(state.step[k]) == st["step"]
        for name in ("exp_avg", "exp_avg_sq"):
            a = np.asarray(getattr(state, name)[k], np.float64)
            b = st[name].double().numpy()
            assert float(np.max(np.abs(a - b))) <= TOL[dtype] * max(float(np.max(np.abs(b))), 1e-30)
    return err


def _torch_table():
    return [
        pytest.param(oi.kwargs, id=oi.desc.replace(" ", "_"))
        for oi in co.optim_inputs_func_sparseadam(device="cpu", dtype=torch.float64)
    ]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("kwargs", _torch_table())
def test_torch_table(kwargs, dtype):
    """torch's own SparseAdam configurations, 30 steps of duplicated sparse gradients."""
    check(kwargs, dtype)


GRID = [
    dict(lr=0.05, betas=(0.5, 0.9), eps=1e-3),
    dict(lr=0.02, betas=(0.0, 0.99), eps=1e-6, maximize=True),
]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("kwargs", GRID, ids=["betas-eps", "beta1=0-maximize"])
def test_option_grid(kwargs, dtype):
    check(kwargs, dtype)


def test_missing_and_empty_gradients():
    """``None`` (torch: ``p.grad is None``) leaves step and moments alone; an empty sparse
    gradient still counts a step (torch increments ``step`` before skipping it)."""
    check(dict(lr=0.01), torch.float64, steps=12, none_at=(2, 3, 7), empty_at=(4, 5))


def test_heavy_duplicates_and_single_entries():
    """40 ids among 12 rows (each row summed several times), a single-entry gradient."""
    check(dict(lr=0.01), torch.float64, steps=10, nnz={"E": 40, "T": 1, "W": 25}, seed=4)


def test_lr_schedule():
    """A schedule (count -> lr) equals setting torch's group['lr'] before each step."""
    params, grads = problem(15)
    sched = lambda count: 0.05 * 0.9**count  # noqa: E731
    names = sorted(params)
    tp = {k: torch.tensor(params[k]).requires_grad_() for k in names}
    opt = torch.optim.SparseAdam([tp[k] for k in names], lr=sched(0))
    t = []
    for count, g in enumerate(grads):
        opt.param_groups[0]["lr"] = sched(count)
        for k in names:
            idx, val = g[k]
            tp[k].grad = coo(idx, torch.tensor(val), SHAPES[k])
        opt.step()
        t.append({k: tp[k].detach().clone().numpy() for k in names})
    j, _ = run_jax(dict(lr=sched), params, grads, torch.float64, share=False)
    assert rel_err(j, t) <= TOL[torch.float64]


def test_padding_entries_are_ignored():
    """BCOO's padding (out-of-range indices, e.g. from ``sum_duplicates(nse=...)``) is ignored."""
    p = {"E": jnp.arange(12.0).reshape(6, 2)}
    tx = sparse_adam(lr=0.1)
    state = tx.init(p)
    update = jax.jit(tx.update)
    g = sparse.BCOO((jnp.ones((3, 2)), jnp.array([[1], [6], [1]])), shape=(6, 2))
    padded = g.sum_duplicates(nse=4)  # row 1 summed, then padding
    u1, _ = update({"E": g}, state)
    u2, _ = update({"E": padded}, state)
    np.testing.assert_array_equal(u1["E"], u2["E"])
    assert np.count_nonzero(np.asarray(u1["E"])) == 2  # row 1 only


def test_bcsr_gradients():
    """A BCSR gradient is converted to BCOO: same trajectory as torch's COO gradient."""
    rng = np.random.default_rng(5)
    w0 = rng.standard_normal((3, 5))
    tw = torch.tensor(w0).requires_grad_()
    opt = torch.optim.SparseAdam([tw], lr=0.01)
    tx = sparse_adam(lr=0.01)
    jw = jnp.asarray(w0)
    state = tx.init(jw)

    @jax.jit
    def step(g, state, w):
        updates, state = tx.update(sparse.BCSR.from_bcoo(g), state)
        return w + updates, state

    for _ in range(5):
        dense = np.where(rng.random((3, 5)) < 0.4, rng.standard_normal((3, 5)), 0.0)
        tw.grad = torch.tensor(dense).to_sparse()
        opt.step()
        jw, state = step(sparse.BCOO.fromdense(jnp.asarray(dense), nse=15), state, jw)
        assert rel_err([{"w": np.asarray(jw)}], [{"w": tw.detach().numpy()}]) <= TOL[torch.float64]


def test_dense_gradient_raises_torch_error():
    tx = sparse_adam()
    params = {"w": jnp.ones(3)}
    state = tx.init(params)
    message = "SparseAdam does not support dense gradients, please consider Adam instead"
    with pytest.raises(RuntimeError, match=message):
        tx.update({"w": jnp.ones(3)}, state, params)
    with pytest.raises(RuntimeError, match=message):
        jax.jit(tx.update)({"w": jnp.ones(3)}, state, params)
    pt = torch.ones(3, requires_grad=True)
    opt = torch.optim.SparseAdam([pt])
    pt.grad = torch.ones(3)
    with pytest.raises(RuntimeError, match=message):
        opt.step()


def test_state_layout():
    tx = sparse_adam()
    state = tx.init({"a": jnp.zeros((4, 2)), "b": jnp.zeros(3, jnp.float32)})
    assert isinstance(state, SparseAdamState)
    assert state.exp_avg["a"].shape == (4, 2) and state.exp_avg_sq["b"].dtype == jnp.float32
    assert int(state.step["a"]) == 0


def test_defaults_match_torch():
    assert_signature_matches(torch.optim.SparseAdam, sparse_adam)


def _jax_params(torch_params):
    """torch's ``params`` argument of an error case as a pytree: sparse -> BCOO, groups
    flattened (a single group)."""
    out = []
    for p in torch_params:
        if isinstance(p, dict):
            out.extend(_jax_params(p["params"]))
        elif p.is_sparse:
            out.append(sparse.BCOO.fromdense(jnp.asarray(p.to_dense().numpy())))
        else:
            out.append(jnp.asarray(p.detach().numpy()))
    return out


def _error_cases():
    return [
        pytest.param(e, id=e.optimizer_error_input.desc.replace(" ", "_"))
        for e in co.optim_error_inputs_func_sparseadam(device="cpu", dtype=torch.float64)
    ]


@pytest.mark.parametrize("err", _error_cases())
def test_torch_error_table(err):
    """torch's optim_error_inputs_func_sparseadam: same exception type and message. Cases about
    the parameters themselves (sparse, complex) are raised at ``init``, as jaxupdate first
    sees the parameters there; cases about torch's param-group mechanics do not apply."""
    oi = err.optimizer_error_input
    if err.error_on != co.OptimizerErrorEnum.CONSTRUCTION_ERROR:
        pytest.skip("raised by torch's step(), not its constructor")
    if any(k in oi.kwargs for k in TORCH_ONLY_KWARGS):
        pytest.skip("about torch kernel choices, not the mathematics")
    if oi.params is None:
        with pytest.raises(err.error_type, match=err.error_regex):
            sparse_adam(**to_jax_kwargs(oi.kwargs))
        with pytest.raises(err.error_type, match=err.error_regex):
            torch.optim.SparseAdam([torch.zeros(2, requires_grad=True)], **oi.kwargs)
        return
    if "SparseAdam" not in err.error_regex:
        pytest.skip(
            "about torch's `params` argument (param groups, names): jaxupdate takes pytrees"
        )
    tx = sparse_adam(**to_jax_kwargs(oi.kwargs))
    with pytest.raises(err.error_type, match=err.error_regex):
        tx.init(_jax_params(oi.params))


@pytest.mark.parametrize(
    "kwargs,message",
    [
        (dict(lr=0.0), "Invalid learning rate: 0.0"),
        (dict(lr=-1e-3), "Invalid learning rate: -0.001"),
        (dict(eps=0.0), "Invalid epsilon value: 0.0"),
        (dict(betas=(0.9, 1.0)), "Invalid beta parameter at index 1: 1.0"),
        (dict(betas=(-0.1, 0.9)), "Invalid beta parameter at index 0: -0.1"),
    ],
)
def test_errors_match_torch_wording(kwargs, message):
    with pytest.raises(ValueError, match=message):
        sparse_adam(**kwargs)
    with pytest.raises(ValueError, match=message):
        torch.optim.SparseAdam([torch.zeros(2, requires_grad=True)], **kwargs)


def test_complex_params_raise_with_positions():
    tx = sparse_adam()
    with pytest.raises(ValueError, match=r"Complex params at indices \[\[0, 1\]\]"):
        tx.init({"a": jnp.zeros(2), "b": jnp.zeros(2, jnp.complex64)})
    with pytest.raises(ValueError, match=r"Complex params at indices \[\[0, 1\]\]"):
        torch.optim.SparseAdam([torch.zeros(2), torch.zeros(2, dtype=torch.complex64)])

"""Side-by-side runs of a torch optimizer and its jaxupdate twin on the same gradients.

torch is the oracle. Both sides start from the same parameters and receive the same gradient
sequence (random, so a rounding difference cannot be amplified by a loss landscape and parity
is measured on the update rule itself); the parameters are compared after every step.
"""

from __future__ import annotations

import inspect
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from torch.testing._internal import common_optimizers as co

import jaxupdate as ju
from jaxupdate.interop import parity as H
from jaxupdate.transforms import step_count  # the tests read it as P.step_count too

# Agreement demanded, as max |jax - torch| / max |torch| over the whole trajectory.
# float64: rounding only. float32: under jit XLA contracts multiply-adds into FMAs (torch's CPU
# kernels round after each in-place op), so the two drift apart by a few ulps over tens of steps.
TOL = {
    torch.float64: 1e-12,
    torch.complex128: 1e-12,
    torch.float32: 2e-6,
    torch.complex64: 2e-6,
}

JAX_DTYPE = {
    torch.float64: jnp.float64,
    torch.float32: jnp.float32,
    torch.complex128: jnp.complex128,
    torch.complex64: jnp.complex64,
    torch.float16: jnp.float16,
    torch.bfloat16: jnp.bfloat16,
}

# Shared with ``python -m jaxupdate parity`` (jaxupdate.interop.parity): the default problem's
# shapes (a matrix, a vector, a 0-d scalar and a 3-d tensor), kernel-choice kwargs, problem
# generation, torch stepping and the error measure.
SHAPES = H.SHAPES
TORCH_ONLY_KWARGS = H.TORCH_ONLY_KWARGS
problem = H.problem
to_jax_kwargs = H.to_jax_kwargs
run_torch = H.torch_trajectory
max_rel = H.max_rel
rel_err = H.rel_err


def torch_after(torch_cls, kwargs, params, grads, dtype=torch.float64):
    """``(optimizer, parameters)`` of torch after stepping through ``grads`` (its state to
    compare)."""
    run = H.TorchRun(torch_cls, kwargs, params, dtype)
    for g in grads:
        run.step(g)
    return run.opt, run.tp


def counted_step(tx):
    """``(step, traces)``: a jitted ``step(grads, state, params) -> (params, state)`` and the
    list each of its traces appends to (``len(traces) == 1``: it never retraced)."""
    traces = []

    @jax.jit
    def step(g, s, p):
        traces.append(None)
        u, s = tx.update(g, s, p)
        return ju.apply_updates(p, u), s

    return step, traces


def run_jax(tx, params, grads, dtype, jit=True, container=list, states=False):
    """jaxupdate trajectory on the same data; the update (and apply) is jitted by default.

    ``dtype``: a torch or JAX dtype. ``states=True``: ``(trajectory, the optimizer state after
    every step)``.
    """
    jdt = JAX_DTYPE.get(dtype, dtype)
    jp = container(jnp.asarray(p, jdt) for p in params)
    state = tx.init(jp)

    def step(g, state, p):
        updates, state = tx.update(g, state, p)
        return ju.apply_updates(p, updates), state

    if jit:
        step = jax.jit(step)
    traj, after = [], []
    for g in grads:
        jp, state = step(container(jnp.asarray(x, jdt) for x in g), state, jp)
        traj.append([np.asarray(x) for x in jax.tree.leaves(jp)])
        after.append(state)
    return (traj, after) if states else traj


def as_real(x):
    """torch's view_as_real for numpy arrays (real arrays unchanged)."""
    x = np.asarray(x)
    return np.stack([x.real, x.imag], axis=-1) if np.iscomplexobj(x) else x


def assert_parity(torch_cls, ju_fn, kwargs, dtype=torch.float64, steps=30, jit=True, **prob):
    """Runs both optimizers side by side and asserts agreement at every step.

    float64: TOL (rounding only). float32: TOL, or, where the configuration itself amplifies
    rounding chaotically (RMSprop's centered variance ``sqrt(v - m*m)`` near zero with
    alpha=0.5, momentum feeding it back), ten times torch's own float32 error against its
    float64 run (``jaxupdate.interop.parity.tolerance`` says why ten; measured: under jit 5.6%
    of elements of ``s - m*m`` differ by an ulp from torch's twice-rounded kernels).
    """
    params, grads = problem(dtype, steps, **prob)
    t_traj = run_torch(torch_cls, kwargs, params, grads, dtype)
    j_traj = run_jax(ju_fn(**to_jax_kwargs(kwargs)), params, grads, dtype, jit=jit)
    err = rel_err(j_traj, t_traj)
    tol = H.tolerance(
        err, TOL[dtype], dtype, t_traj,
        lambda: run_torch(torch_cls, kwargs, params, grads, H.wider(dtype)),
    )
    assert err <= tol, f"{ju_fn.__name__}({kwargs}) {dtype}: rel err {err:.3e} > {tol:.1e}"
    return err


# ---------------------------------------------------------------------------------------------
# Configurations: torch's own tables, option grids, test ids.
# ---------------------------------------------------------------------------------------------

DTYPES = [torch.float64, torch.float32, torch.complex128]
DTYPE_IDS = ["f64", "f32", "c128"]


def grid(**axes):
    """The full product of the options' values, as a list of kwargs dicts."""
    keys = list(axes)
    return [dict(zip(keys, vals, strict=True)) for vals in itertools.product(*axes.values())]


def pairwise(keep=lambda kw: True, **axes):
    """Configurations (dicts) covering every pair of values of two different options.

    A full product of seven two-valued options is 128 configurations; a pairwise covering set
    is about eight and still runs every value of every option together with every value of
    every other option. Greedy and deterministic: each round takes the first configuration of
    the product (in order) that covers the most uncovered pairs. ``keep(kw)`` drops invalid
    combinations; pairs that no kept configuration can cover are left out. With a single
    option every value is taken once (there are no pairs to cover).
    """
    keys = list(axes)
    rows = [kw for kw in grid(**axes) if keep(kw)]

    def pairs(row):
        idx = [(k, axes[k].index(row[k])) for k in keys]
        return set(itertools.combinations(idx, 2))

    if len(keys) == 1:
        return rows
    uncovered = set().union(*(pairs(r) for r in rows)) if rows else set()
    chosen = []
    while uncovered:
        best = max(rows, key=lambda r: len(pairs(r) & uncovered))
        chosen.append(best)
        uncovered -= pairs(best)
    return chosen


def kw_id(kw, skip=()):
    """A test id naming each option's value (``skip``: options left out of the id)."""
    return "-".join(f"{k}={v}" for k, v in kw.items() if k not in skip) or "defaults"


def torch_table(inputs_fn, prefix=""):
    """torch's own optim_inputs_func configs (CPU) as pytest params."""
    return [
        pytest.param(oi.kwargs, id=prefix + oi.desc.replace(" ", "_"))
        for oi in inputs_fn(device="cpu", dtype=torch.float64)
    ]


def error_cases(err_fn, prefix=""):
    """torch's optim_error_inputs_func entries as pytest params (skips decided in the test)."""
    return [
        pytest.param(e, id=prefix + e.optimizer_error_input.desc.replace(" ", "_"))
        for e in err_fn(device="cpu", dtype=torch.float64)
    ]


# ---------------------------------------------------------------------------------------------
# Construction: signature, torch's error table, error wording.
# ---------------------------------------------------------------------------------------------


def assert_signature_matches(torch_cls, ju_fn):
    """Same argument names, order, kinds, defaults and default types as torch.

    ``params`` and the kernel-choice arguments (TORCH_ONLY_KWARGS) are left out. The default's
    type is compared too: ``weight_decay=0`` and ``0.0`` are equal but print differently in
    torch's error messages and param groups.
    """
    t_params = [
        p
        for p in inspect.signature(torch_cls.__init__).parameters.values()
        if p.name not in ("self", "params", *TORCH_ONLY_KWARGS)
    ]
    # ``fused=False`` (issue 14) is jaxupdate's own kernel switch: torch's is ``fused=None``
    j_params = [p for p in inspect.signature(ju_fn).parameters.values()
                if p.name not in TORCH_ONLY_KWARGS]
    assert [p.name for p in j_params] == [p.name for p in t_params]
    for tp, jp in zip(t_params, j_params, strict=True):
        assert tp.kind == jp.kind, tp.name
        assert tp.default == jp.default, (tp.name, tp.default, jp.default)
        assert type(tp.default) is type(jp.default), (tp.name, tp.default, jp.default)


def check_torch_error(torch_cls, ju_fn, err):
    """One construction entry of torch's error table: same exception type and message, with
    torch agreeing on the input (guards against a drifting table)."""
    oi = err.optimizer_error_input
    if oi.params is not None:
        pytest.skip("about torch's `params` argument (param groups, names): not pytrees")
    if err.error_on != co.OptimizerErrorEnum.CONSTRUCTION_ERROR:
        pytest.skip("raised by torch's step(), not its constructor")
    if any(k in oi.kwargs for k in TORCH_ONLY_KWARGS):
        pytest.skip("about torch kernel choices (foreach/fused/capturable), not the mathematics")
    with pytest.raises(err.error_type, match=err.error_regex):
        ju_fn(**to_jax_kwargs(oi.kwargs))
    with pytest.raises(err.error_type, match=err.error_regex):
        torch_cls([torch.zeros(2, requires_grad=True)], **oi.kwargs)


def to_torch_kwargs(kwargs):
    """jaxupdate kwargs -> torch kwargs: numpy arrays (also inside tuples) become tensors."""

    def conv(v):
        return torch.tensor(v) if isinstance(v, np.ndarray) else v

    return {k: tuple(map(conv, v)) if isinstance(v, tuple) else conv(v) for k, v in kwargs.items()}


def check_same_error(torch_cls, ju_fn, kwargs, message, *, shape=(2,), torch_on_step=False):
    """jaxupdate and torch both raise ValueError with exactly ``message``.

    ``ju_fn(**kwargs)`` raises when built. torch is given one zero parameter of ``shape``; with
    ``torch_on_step`` torch may raise at its first ``step()`` instead of in its constructor
    (a transformation reports such errors when built), otherwise the constructor must raise.
    """
    with pytest.raises(ValueError) as ju_err:
        ju_fn(**kwargs)
    assert str(ju_err.value) == message
    p = torch.zeros(shape, requires_grad=True)
    with pytest.raises(ValueError) as t_err:
        opt = torch_cls([p], **to_torch_kwargs(kwargs))
        assert torch_on_step, f"torch accepted {kwargs}"
        p.grad = torch.ones(shape)
        opt.step()
    assert str(t_err.value) == message


def jax_params(torch_params):
    """torch's ``params`` argument as a list of arrays when it is a list of distinct plain
    tensors, else None (param groups, names, duplicates: torch-only API)."""
    if not isinstance(torch_params, list):
        return None
    if not all(type(p) is torch.Tensor for p in torch_params):
        return None
    if len({id(p) for p in torch_params}) != len(torch_params):
        return None
    return [jnp.asarray(p.detach().numpy()) for p in torch_params]


# ---------------------------------------------------------------------------------------------
# State, schedules, hand-made trajectories.
# ---------------------------------------------------------------------------------------------


def find_state(state, cls):
    """The one state of type ``cls`` inside a (chained, nested) optimizer state."""
    found = [
        s
        for s in jax.tree.leaves(state, is_leaf=lambda x: isinstance(x, cls))
        if isinstance(s, cls)
    ]
    assert len(found) == 1, found
    return found[0]


def assert_state_matches(torch_cls, ju_fn, kwargs, state_cls, keys, dtype, steps=15):
    """After ``steps`` steps, torch's state[key] equals jaxupdate's state field of that name.

    Complex parameters' buffers are compared in torch's ``view_as_real`` layout, the layout
    jaxupdate keeps them in; the optimizer's step count is compared with torch's ``step``.
    """
    params, grads = problem(dtype, steps)
    opt, tp = torch_after(torch_cls, kwargs, params, grads, dtype)

    tx = ju_fn(**to_jax_kwargs(kwargs))
    jdt = JAX_DTYPE[dtype]
    jp = [jnp.asarray(p, jdt) for p in params]
    state = tx.init(jp)
    step = jax.jit(tx.update)
    for g in grads:
        updates, state = step([jnp.asarray(x, jdt) for x in g], state, jp)
        jp = jax.tree.map(lambda p, u: p + u, jp, updates)
    block = find_state(state, state_cls)
    assert int(step_count(state)) == steps
    for i, t in enumerate(tp):
        assert float(opt.state[t]["step"]) == steps
        for key in keys:
            want = opt.state[t][key]
            want = (torch.view_as_real(want) if want.is_complex() else want).numpy()
            got = np.asarray(getattr(block, key)[i])
            assert got.shape == want.shape, (key, got.shape, want.shape)
            scale = max(float(np.max(np.abs(want))) if want.size else 0.0, 1e-30)
            err = float(np.max(np.abs(got - want))) / scale if want.size else 0.0
            assert err <= TOL[dtype], f"state[{key!r}] rel err {err:.2e}"


def assert_schedule_parity(torch_cls, ju_fn, kwargs, schedule, dtype=torch.float64, steps=25):
    """jaxupdate with ``lr=schedule`` equals torch with group['lr'] = schedule(count) per step."""
    params, grads = problem(dtype, steps)
    t = run_torch(torch_cls, kwargs, params, grads, dtype, lr_at=schedule)
    j = run_jax(ju_fn(**to_jax_kwargs(kwargs), lr=schedule), params, grads, dtype)
    err = rel_err(j, t)
    assert err <= TOL[dtype], f"rel err {err:.3e}"
    return err


def assert_trajectory_parity(torch_cls, ju_fn, kwargs, params, grads, dtype, ju_kwargs=None):
    """Parity on hand-made parameters and gradients (e.g. gradients with exact zeros)."""
    t = run_torch(torch_cls, kwargs, params, grads, dtype)
    tx = ju_fn(**(to_jax_kwargs(kwargs) if ju_kwargs is None else ju_kwargs))
    j = run_jax(tx, params, grads, dtype)
    err = rel_err(j, t)
    assert err <= TOL[dtype], f"rel err {err:.3e}"
    return err


def array_kwargs(kwargs):
    """Every float hyperparameter (each beta too) as a 1-element float64 array."""
    return {
        k: tuple(np.array([b]) for b in v) if isinstance(v, tuple) else np.array([v])
        for k, v in kwargs.items()
    }


def run_jax_scan(tx, params, grads):
    """The whole trajectory inside one jitted ``lax.scan``: ``(traj, final state)``.

    Nothing can be decided in Python between steps here, so a transformation that keeps a
    switch (rectification, averaging start) in Python-side flags fails parity.
    """
    p0 = [jnp.asarray(p) for p in params]
    gs = [jnp.stack([jnp.asarray(g[i]) for g in grads]) for i in range(len(params))]

    def body(carry, g):
        p, s = carry
        u, s = tx.update(g, s, p)
        p = jax.tree.map(jnp.add, p, u)
        return (p, s), p

    (_, state), ps = jax.jit(lambda p, gs: jax.lax.scan(body, (p, tx.init(p)), gs))(p0, gs)
    return [[np.asarray(x[k]) for x in ps] for k in range(len(grads))], state


def run_torch_float64_scalars(torch_cls, kwargs, params, grads, dtype):
    """torch's trajectory with its default dtype float64, so scalar state tensors that torch
    keeps in float32 (NAdam's mu_product, ASGD's eta and mu) are float64 instead."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        return run_torch(torch_cls, kwargs, params, grads, dtype)
    finally:
        torch.set_default_dtype(old)


def assert_float32_without_x64(torch_cls, ju_fn, kwargs, steps=30):
    """Default JAX (x64 off): float32 scalar math still tracks torch's double scalars.

    1e-5, not TOL[float32]: without x64 jaxupdate's scalar hyperparameter math is float32
    where torch's is Python double.
    """
    params, grads = problem(torch.float32, steps)
    t = run_torch(torch_cls, kwargs, params, grads, torch.float32)
    with jax.enable_x64(False):
        j = run_jax(ju_fn(**kwargs), params, grads, torch.float32)
    assert j[0][0].dtype == np.float32
    assert rel_err(j, t) <= 1e-5


def assert_without_params(torch_cls, ju_fn, kwargs, steps=20):
    """update(grads, state) without params: torch's step up to rounding (one add less)."""
    params, grads = problem(torch.float64, steps)
    t = run_torch(torch_cls, kwargs, params, grads, torch.float64)
    tx = ju_fn(**kwargs)
    p = [jnp.asarray(x) for x in params]
    s = tx.init(p)
    update = jax.jit(tx.update)
    for k, g in enumerate(grads):
        u, s = update([jnp.asarray(x) for x in g], s)
        p = jax.tree.map(jnp.add, p, u)
        for a, b in zip(p, t[k], strict=True):
            assert max_rel(a, b) <= 1e-13

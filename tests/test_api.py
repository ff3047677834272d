"""The public API of the foundation: lr forms, schedules, pytrees, dtypes, jit, examples."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch

import jaxupdate as ju
from tests.parity import TOL, counted_step, problem, rel_err, run_jax, run_torch

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize(
    "lr",
    [
        0.01,
        np.float64(0.01),
        np.array(0.01),
        np.array([0.01]),
        jnp.array([[0.01]]),
        torch.tensor(0.01, dtype=torch.float64),
        torch.tensor([0.01], dtype=torch.float64),
    ],
    ids=["float", "np-scalar", "0d-np", "1elem-np", "1elem-jnp", "0d-torch", "1elem-torch"],
)
def test_lr_forms_match_torch(lr):
    params, grads = problem(torch.float64, 20)
    t = run_torch(torch.optim.Adam, dict(lr=0.01), params, grads, torch.float64)
    j = run_jax(ju.adam(lr=lr), params, grads, torch.float64)
    assert rel_err(j, t) <= TOL[torch.float64]


def _decay(count):
    return 0.05 * 0.9**count


@pytest.mark.parametrize(
    "torch_cls,ju_fn,kwargs",
    [
        (torch.optim.SGD, ju.sgd, dict(momentum=0.9, weight_decay=0.1)),
        (torch.optim.Adam, ju.adam, dict(amsgrad=True)),
        (torch.optim.AdamW, ju.adamw, dict()),
        (torch.optim.RMSprop, ju.rmsprop, dict(momentum=0.5, centered=True)),
    ],
    ids=["sgd", "adam", "adamw", "rmsprop"],
)
def test_lr_schedule_matches_torch_group_lr(torch_cls, ju_fn, kwargs):
    """A schedule count -> lr equals setting torch's group['lr'] before each step."""
    params, grads = problem(torch.float64, 25)
    t = run_torch(torch_cls, dict(lr=_decay(0), **kwargs), params, grads, torch.float64, _decay)
    j = run_jax(ju_fn(lr=lambda c: 0.05 * 0.9**c, **kwargs), params, grads, torch.float64)
    assert rel_err(j, t) <= TOL[torch.float64]


def test_schedule_for_momentum_and_betas():
    """Every float hyperparameter may be a schedule (cycled momentum / beta1 as in OneCycleLR)."""
    params, grads = problem(torch.float64, 20)

    def mom(c):
        return 0.95 - 0.01 * c

    # torch: change the group's momentum / betas before each step
    for torch_cls, ju_tx, key in [
        (torch.optim.SGD, ju.sgd(lr=0.01, momentum=mom), "momentum"),
        (torch.optim.Adam, ju.adam(lr=0.01, betas=(mom, lambda c: 0.999)), "betas"),
    ]:
        tp = [torch.tensor(p).requires_grad_() for p in params]
        opt = torch_cls(tp, lr=0.01, **({"momentum": 0.95} if key == "momentum" else {}))
        traj = []
        for c, g in enumerate(grads):
            opt.param_groups[0][key] = mom(c) if key == "momentum" else (mom(c), 0.999)
            for x, gg in zip(tp, g):
                x.grad = torch.tensor(gg)
            opt.step()
            traj.append([x.detach().clone().numpy() for x in tp])
        assert rel_err(run_jax(ju_tx, params, grads, torch.float64), traj) <= 1e-12


def test_float32_parity_without_x64():
    """Default JAX (x64 off): float32 scalar math still tracks torch's double-precision scalars."""
    params, grads = problem(torch.float32, 30)
    with jax.enable_x64(False):
        for torch_cls, fn, kw in [
            (torch.optim.SGD, ju.sgd, dict(lr=0.01, momentum=0.9, nesterov=True)),
            (torch.optim.Adam, ju.adam, dict(lr=0.01, amsgrad=True)),
            (torch.optim.AdamW, ju.adamw, dict(lr=0.01)),
            (torch.optim.RMSprop, ju.rmsprop, dict(momentum=0.9, centered=True)),
        ]:
            t = run_torch(torch_cls, kw, params, grads, torch.float32)
            j = run_jax(fn(**kw), params, grads, torch.float32)
            assert j[0][0].dtype == np.float32
            # float32 scalars (bias corrections via expm1) instead of torch's doubles:
            # a few more ulps than with x64, still well within 1e-5 after 30 steps.
            assert rel_err(j, t) <= 1e-5, fn.__name__


def test_bias_correction_float32_is_accurate():
    """1 - 0.999**1 in float32 loses 4 digits; jaxupdate's expm1 form keeps them."""
    from jaxupdate.numerics import bias_correction

    with jax.enable_x64(False):
        for step in [1, 2, 10, 1000, 100000]:
            got = float(bias_correction(0.999, step))
            want = 1 - 0.999**step
            assert abs(got - want) / want < 1e-6, step


@pytest.mark.parametrize("fn", [ju.sgd, ju.adam, ju.adamw, ju.rmsprop])
def test_pytrees(fn):
    """dicts, lists, tuples, nesting, 0-d leaves, empty trees and flax nnx state all work."""
    from flax import nnx

    tx = fn(lr=0.1) if fn is not ju.sgd else fn(lr=0.1, momentum=0.9)
    trees = [
        {"a": jnp.ones((2, 3)), "b": [jnp.zeros(()), (jnp.ones(4), {"c": jnp.ones((1,))})]},
        (jnp.ones(3), jnp.ones(())),
        [jnp.ones(2)],
        {},
        [],
        nnx.state(nnx.Linear(2, 3, rngs=nnx.Rngs(0)), nnx.Param),
    ]
    for params in trees:
        state = tx.init(params)
        grads = jax.tree.map(jnp.ones_like, params)
        updates, state = jax.jit(tx.update)(grads, state, params)
        new = ju.apply_updates(params, updates)
        assert jax.tree.structure(new) == jax.tree.structure(params)
        for a, b in zip(jax.tree.leaves(new), jax.tree.leaves(params)):
            assert a.shape == b.shape and a.dtype == b.dtype
            assert np.all(np.asarray(a) < np.asarray(b))  # moved against the gradient


@pytest.mark.parametrize("dtype", [jnp.float16, jnp.bfloat16, jnp.float32, jnp.complex64])
@pytest.mark.parametrize("fn", [ju.sgd, ju.adam, ju.adamw, ju.rmsprop])
def test_dtypes_preserved(fn, dtype):
    params = {"w": jnp.ones((3, 2), dtype), "s": jnp.asarray(2.0, dtype)}
    tx = fn(lr=0.01)
    state = tx.init(params)
    for leaf in jax.tree.leaves(state):
        assert leaf.dtype in (jnp.int32, jnp.dtype(dtype), jnp.real(jnp.ones((), dtype)).dtype)
    updates, state = jax.jit(tx.update)(params, state, params)
    new = ju.apply_updates(params, updates)
    assert all(x.dtype == dtype for x in jax.tree.leaves(new))
    assert all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree.leaves(new))


@pytest.mark.parametrize("tdtype", [torch.bfloat16, torch.float16])
def test_low_precision_tracks_torch(tdtype):
    """bfloat16 / float16 parameters: state in the parameter dtype, as torch by default."""
    params, grads = problem(torch.float64, 10)
    t = run_torch(torch.optim.Adam, dict(lr=0.01, eps=1e-3), params, grads, tdtype)
    j = run_jax(ju.adam(lr=0.01, eps=1e-3), params, grads, tdtype)
    t = [[x.astype(np.float32) for x in s] for s in t]
    # torch rounds after each in-place op in float32 "opmath" per kernel; XLA fuses the whole
    # step. One ulp of bfloat16 is 2**-8 = 3.9e-3 relative (float16: 2**-11 = 4.9e-4).
    ulp = {torch.bfloat16: 2.0**-8, torch.float16: 2.0**-11}[tdtype]
    assert rel_err([[x.astype(np.float32) for x in s] for s in j], t) <= 4 * ulp


def test_no_retrace_on_second_call():
    tx = ju.adam(lr=1e-3, amsgrad=True, weight_decay=0.1)
    params = {"w": jnp.ones((4, 4)), "b": jnp.zeros(4)}
    state = tx.init(params)
    step, traces = counted_step(tx)
    for _ in range(3):
        params, state = step(jax.tree.map(jnp.ones_like, params), state, params)
    assert len(traces) == 1


def test_returns_optax_transformations_and_chains():
    tx = ju.adam(lr=1e-2)
    assert isinstance(tx, optax.GradientTransformation)
    chained = optax.chain(optax.clip_by_global_norm(1.0), ju.sgd(lr=0.1, momentum=0.9))
    multi = optax.MultiSteps(ju.adamw(lr=1e-2), every_k_schedule=2)
    params = {"w": jnp.ones(3)}
    for t in (chained, multi):
        s = t.init(params)
        u, s = t.update({"w": jnp.ones(3)}, s, params)
        assert u["w"].shape == (3,)


def test_bad_hyperparameter_type():
    with pytest.raises(TypeError, match="lr must be a float"):
        ju.adam(lr="0.1")


def test_core_does_not_import_torch():
    code = "import sys, jaxupdate as ju; ju.adam(); assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)



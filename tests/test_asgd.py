"""Parity of jaxupdate's asgd with torch.optim.ASGD, including the averaged parameters ``ax``."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch

from jaxupdate.optim.asgd import asgd, averaged_params
from jaxupdate.optim.sgd import sgd
from jaxupdate.transforms.asgd import TorchASGDState
from tests import parity as P
from tests.oracle import run_torch_states

TORCH_CLS = torch.optim.ASGD


@pytest.mark.parametrize("t0", [0.0, 5.0, 1e6], ids=["t0=0", "t0=5", "t0=1e6"])
@pytest.mark.parametrize("dtype", P.DTYPES, ids=P.DTYPE_IDS)
def test_averaged_params_match_torch_ax(dtype, t0):
    """averaged_params(state) is torch's optimizer.state[p]['ax'] after every step, and
    eta, mu (float32 scalars in torch) and step match too."""
    kw = dict(lr=0.05, lambd=0.01, t0=t0, weight_decay=0.1)
    params, grads = P.problem(dtype, 15)
    t_traj, t_states = run_torch_states(TORCH_CLS, kw, params, grads, dtype)
    j_traj, j_states = P.run_jax(asgd(**kw), params, grads, dtype, states=True)
    tol = P.TOL[dtype]
    assert P.rel_err(j_traj, t_traj) <= tol
    averaging_seen = False
    for ts, js in zip(t_states, j_states, strict=True):
        s = P.find_state(js, TorchASGDState)
        ax = averaged_params(js)
        for leaf, t in enumerate(ts):
            assert s.eta.dtype == jnp.float32 and s.mu.dtype == jnp.float32
            assert float(s.eta) == float(t["eta"])
            assert float(s.mu) == float(t["mu"])
            assert int(P.step_count(js)) == float(t["step"])
            assert ax[leaf].dtype == t["ax"].dtype
            assert P.max_rel(np.asarray(ax[leaf]), t["ax"]) <= tol
        averaging_seen |= float(ts[0]["mu"]) != 1
    assert averaging_seen == (t0 < 14)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
def test_ax_is_a_copy_while_mu_is_one(dtype):
    """torch copies param into ax while mu == 1 (ax + (param - ax) * 1 would lose it here).

    lr=1, lambd=1, alpha=0 keep eta = 1 and the decay factor 1 - lambd * eta = 0, so the
    parameter is -grad: 1e20 after step 1, 0.5 after step 2.
    """
    kw = dict(lr=1.0, lambd=1.0, alpha=0.0)
    params, grads = [np.zeros(2)], [[np.full(2, -1e20)], [np.full(2, -0.5)]]
    _, t_states = run_torch_states(TORCH_CLS, kw, params, grads, dtype)
    # (the parameter itself comes back as param + (new - param) = 1e20 + (0.5 - 1e20) = 0:
    # optax updates are differences, exact only when the step is below the parameter's size)
    _, j_states = P.run_jax(asgd(**kw), params, grads, dtype, states=True)
    assert t_states[1][0]["ax"].tolist() == [0.5, 0.5]
    for ts, js in zip(t_states, j_states, strict=True):
        assert np.array_equal(np.asarray(averaged_params(js)[0]), ts[0]["ax"])


def test_averaged_params_before_first_step_and_pytrees():
    """Shaped like the params (any pytree, 2-tuples included); zeros before the first step."""
    params = {"a": (jnp.ones((2, 3)), jnp.ones(())), "b": [jnp.ones(4, jnp.complex64)]}
    tx = asgd(lr=0.1, t0=0)
    state = tx.init(params)
    ax = averaged_params(state)
    assert jax.tree.structure(ax) == jax.tree.structure(params)
    assert all(not np.any(np.asarray(x)) for x in jax.tree.leaves(ax))
    grads = jax.tree.map(jnp.ones_like, params)
    update = jax.jit(tx.update)
    for _ in range(3):
        updates, state = update(grads, state, params)
        params = optax.apply_updates(params, updates)
    ax = averaged_params(state)
    assert jax.tree.structure(ax) == jax.tree.structure(params)
    for x, p in zip(jax.tree.leaves(ax), jax.tree.leaves(params), strict=True):
        assert x.shape == p.shape and x.dtype == p.dtype
    # the state also works inside a larger chain
    chained = optax.chain(optax.clip(1.0), tx)
    assert jax.tree.structure(averaged_params(chained.init(params))) == jax.tree.structure(params)


def test_averaged_params_needs_an_asgd_state():
    with pytest.raises(ValueError, match="exactly one asgd"):
        averaged_params(sgd(lr=0.1).init({"w": jnp.ones(2)}))


def test_float32_eta_is_what_torch_keeps():
    """A float64 eta would move the float64 trajectory by ~1e-9: measurable, not noise."""
    kw = dict(lr=0.0123, lambd=0.05)
    params, grads = P.problem(torch.float64, 30)
    t = P.run_torch(TORCH_CLS, kw, params, grads, torch.float64)
    assert P.rel_err(P.run_jax(asgd(**kw), params, grads, torch.float64), t) <= P.TOL[torch.float64]
    t64 = P.run_torch_float64_scalars(TORCH_CLS, kw, params, grads, torch.float64)
    assert P.rel_err(t64, t) > 100 * P.TOL[torch.float64]


def test_jit_scan_no_python_flags():
    """The whole trajectory inside one lax.scan: the mu == 1 switch lives in state."""
    kw = dict(lr=0.05, lambd=0.01, t0=3.0, weight_decay=0.1, maximize=True)
    params, grads = P.problem(torch.float64, 20)
    t, t_states = run_torch_states(TORCH_CLS, kw, params, grads, torch.float64)
    j, state = P.run_jax_scan(asgd(**kw), params, grads)
    assert P.rel_err(j, t) <= P.TOL[torch.float64]
    for leaf, x in enumerate(averaged_params(state)):
        assert P.max_rel(np.asarray(x), t_states[-1][leaf]["ax"]) <= P.TOL[torch.float64]


def test_schedules_match_torch_group_values():
    """lr (also in eta's update), lambd and t0 as schedules equal torch's group values."""
    def lr_at(c):
        return 0.05 * 0.9**c

    def lambd_at(c):
        return 0.01 + 0.002 * c

    def t0_at(c):
        return 8.0 - c / 4

    params, grads = P.problem(torch.float64, 20)
    t, t_states = run_torch_states(
        TORCH_CLS, dict(lr=lr_at(0)), params, grads, torch.float64,
        lambda c: dict(lr=lr_at(c), lambd=lambd_at(c), t0=t0_at(c)),
    )
    tx = asgd(lr=lr_at, lambd=lambd_at, t0=t0_at)
    j, j_states = P.run_jax(tx, params, grads, torch.float64, states=True)
    assert P.rel_err(j, t) <= P.TOL[torch.float64]
    for leaf, x in enumerate(averaged_params(j_states[-1])):
        assert P.max_rel(np.asarray(x), t_states[-1][leaf]["ax"]) <= P.TOL[torch.float64]


def test_array_hyperparameters():
    kw = dict(lr=0.05, lambd=0.01, alpha=0.6, t0=4.0, weight_decay=0.1)
    params, grads = P.problem(torch.float64, 20)
    t = P.run_torch(TORCH_CLS, kw, params, grads, torch.float64)
    j = P.run_jax(asgd(**P.array_kwargs(kw)), params, grads, torch.float64)
    assert P.rel_err(j, t) <= P.TOL[torch.float64]


def test_unchecked_like_torch():
    """torch does not validate lambd, alpha or t0; neither does asgd."""
    kw = dict(lambd=-1.0, alpha=-2.0, t0=-5.0)
    TORCH_CLS([torch.zeros(2, requires_grad=True)], **kw)
    asgd(**kw)

"""RAdam beyond the shared table (tests/optim_db.py): state, the rectification switch, schedules."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from jaxupdate.optim.radam import radam
from jaxupdate.transforms.nadam_radam import TorchRAdamState, radam_rho
from tests import parity as P
from tests.oracle import run_jax_states, run_torch_states

TORCH_CLS = torch.optim.RAdam


@pytest.mark.parametrize("dtype", [torch.float64, torch.complex128], ids=["f64", "c128"])
def test_state_matches_torch(dtype):
    """step, exp_avg and exp_avg_sq after every step (complex state in torch's real view)."""
    kw = dict(lr=0.01, weight_decay=0.1, maximize=True)
    params, grads = P.problem(dtype, 12)
    _, t_states = run_torch_states(TORCH_CLS, kw, params, grads, dtype)
    _, j_states = run_jax_states(radam(**kw), params, grads, dtype)
    for ts, js in zip(t_states, j_states, strict=True):
        s = P.find_state(js, TorchRAdamState)
        for leaf, t in enumerate(ts):
            assert int(P.step_count(js)) == float(t["step"])
            for key in ("exp_avg", "exp_avg_sq"):
                err = P.max_rel(getattr(s, key)[leaf], P.as_real(t[key]))
                assert err <= P.TOL[torch.float64], (key, err)


@pytest.mark.parametrize("betas", [(0.9, 0.0), (0.9, 0.5), (0.0, 0.99)])
def test_rectification_switch(betas):
    """beta2 = 0 and 0.5 never rectify (rho_inf <= 5); 0.99 switches at step 6 (beta1 = 0)."""
    kw = dict(lr=0.01, betas=betas)
    rho_inf = 2 / (1 - betas[1]) - 1
    switch = [rho_inf - 2 * t * betas[1] ** t / (1 - betas[1] ** t) > 5 for t in (5, 6)]
    assert switch == ([False, False] if rho_inf <= 5 else [False, True])
    P.assert_parity(TORCH_CLS, radam, kw, torch.float64, steps=12)


def test_rho_float32_has_no_cancellation():
    """x64 off: rho_t stays within a few float32 ulps of torch's double formula."""

    def torch_rho(beta2, t):
        rho_inf = 2 / (1 - beta2) - 1
        return rho_inf, rho_inf - 2 * t * beta2**t / (1 - beta2**t)

    t = np.arange(1, 3001, dtype=np.float64)
    with jax.enable_x64(False):
        steps = jnp.arange(1, 3001, dtype=jnp.float32)
        for beta2 in (0.0, 0.3, 0.5, 0.9, 0.99, 0.999, 0.9999):
            rho_inf, rho_t = radam_rho(beta2, steps)
            assert rho_t.dtype == jnp.float32
            ref_inf, ref = torch_rho(beta2, t)
            assert abs(float(rho_inf) - ref_inf) <= 1e-6 * ref_inf
            assert np.max(np.abs(np.asarray(rho_t, np.float64) - ref) / ref) < 2e-6, beta2
            # an array beta2 (its log taken at run time) holds the float32 value of beta2
            b32 = jnp.asarray(beta2, jnp.float32)
            _, ref = torch_rho(float(b32), t)
            _, rho_arr = radam_rho(b32, steps)
            assert np.max(np.abs(np.asarray(rho_arr, np.float64) - ref) / ref) < 2e-6, beta2
    # torch's own formula in float32 would be off by ~1e-4 near the switch for beta2 = 0.999
    b = np.float32(0.999)
    naive = (np.float32(2) / (1 - b) - 1) - 2 * np.float32(6) * b**6 / (1 - b**6)
    assert abs(float(naive) - torch_rho(0.999, 6.0)[1]) > 1e-5


def test_jit_scan_no_python_flags():
    """The whole trajectory inside one lax.scan (state only, no Python-side flags)."""
    kw = dict(lr=0.01, weight_decay=0.1, decoupled_weight_decay=True, maximize=True)
    params, grads = P.problem(torch.float64, 30)
    t = P.run_torch(TORCH_CLS, kw, params, grads, torch.float64)
    j, _ = P.run_jax_scan(radam(**kw), params, grads)
    assert P.rel_err(j, t) <= P.TOL[torch.float64]


def test_schedules_match_torch_group_values():
    """lr and betas as schedules equal setting torch's group values before each step."""
    def lr_at(c):
        return 0.02 * 0.9**c

    def beta1_at(c):
        return 0.9 - 0.01 * c

    def beta2_at(c):
        return 0.99 - 0.001 * c

    params, grads = P.problem(torch.float64, 20)
    t, _ = run_torch_states(
        TORCH_CLS, dict(lr=lr_at(0), weight_decay=0.1), params, grads, torch.float64,
        lambda c: dict(lr=lr_at(c), betas=(beta1_at(c), beta2_at(c))),
    )
    tx = radam(lr=lr_at, betas=(beta1_at, beta2_at), weight_decay=0.1)
    assert P.rel_err(P.run_jax(tx, params, grads, torch.float64), t) <= P.TOL[torch.float64]


def test_array_hyperparameters():
    kw = dict(lr=0.01, betas=(0.8, 0.99), eps=1e-6, weight_decay=0.1)
    params, grads = P.problem(torch.float64, 20)
    t = P.run_torch(TORCH_CLS, kw, params, grads, torch.float64)
    j = P.run_jax(radam(**P.array_kwargs(kw)), params, grads, torch.float64)
    assert P.rel_err(j, t) <= P.TOL[torch.float64]


def test_without_params():
    """update(grads, state) without params: the same step up to rounding (one add less)."""
    P.assert_without_params(TORCH_CLS, radam, dict(lr=0.01, maximize=True))
    with pytest.raises(ValueError, match="needs the current parameters"):
        tx = radam(weight_decay=0.1, decoupled_weight_decay=True)
        tx.update([jnp.ones(2)], tx.init([jnp.ones(2)]))


def test_float32_without_x64():
    kw = dict(lr=0.01, weight_decay=0.1, decoupled_weight_decay=True, betas=(0.9, 0.99))
    P.assert_float32_without_x64(TORCH_CLS, radam, kw)


def test_float_and_array_betas_mix_like_torch():
    """torch's RAdam (unlike Adam) accepts a float beside a 1-element tensor."""
    TORCH_CLS([torch.zeros(2, requires_grad=True)], betas=(0.9, torch.tensor(0.99)))
    radam(betas=(0.9, np.array(0.99)))

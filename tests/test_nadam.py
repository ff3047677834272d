"""NAdam beyond the shared table (tests/optim_db.py): state, float32 mu_product, schedules, scan."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest
import torch

from jaxupdate.optim.nadam import nadam
from jaxupdate.transforms.nadam_radam import TorchNAdamState
from tests import parity as P
from tests.oracle import run_jax_states, run_torch_states

TORCH_CLS = torch.optim.NAdam


@pytest.mark.parametrize("dtype", [torch.float64, torch.complex128], ids=["f64", "c128"])
def test_state_matches_torch(dtype):
    """mu_product (a float32 scalar in torch), step, exp_avg and exp_avg_sq after every step."""
    kw = dict(lr=0.01, weight_decay=0.1, momentum_decay=0.05)
    params, grads = P.problem(dtype, 25)
    _, t_states = run_torch_states(TORCH_CLS, kw, params, grads, dtype)
    _, j_states = run_jax_states(nadam(**kw), params, grads, dtype)
    for ts, js in zip(t_states, j_states, strict=True):
        s = P.find_state(js, TorchNAdamState)
        for leaf, t in enumerate(ts):
            assert t["mu_product"].dtype == np.float32 == s.mu_product.dtype
            assert float(s.mu_product) == float(t["mu_product"])
            assert int(P.step_count(js)) == float(t["step"])
            for key in ("exp_avg", "exp_avg_sq"):
                err = P.max_rel(getattr(s, key)[leaf], P.as_real(t[key]))
                assert err <= P.TOL[torch.float64], (key, err)


def test_float32_mu_product_is_what_torch_keeps():
    """A float64 mu_product would move the float64 trajectory by ~1e-9: measurable, not noise."""
    params, grads = P.problem(torch.float64, 30)
    t = P.run_torch(TORCH_CLS, dict(lr=0.01), params, grads, torch.float64)
    j = P.run_jax(nadam(lr=0.01), params, grads, torch.float64)
    assert P.rel_err(j, t) <= P.TOL[torch.float64]
    # torch with its scalar state in float64 (default dtype float64) is another trajectory
    t64 = P.run_torch_float64_scalars(TORCH_CLS, dict(lr=0.01), params, grads, torch.float64)
    assert P.rel_err(t64, t) > 100 * P.TOL[torch.float64]


def test_jit_scan_no_python_flags():
    """The whole trajectory inside one lax.scan (state only, no Python-side flags)."""
    kw = dict(lr=0.01, weight_decay=0.1, decoupled_weight_decay=True, maximize=True)
    params, grads = P.problem(torch.float64, 30)
    t = P.run_torch(TORCH_CLS, kw, params, grads, torch.float64)
    j, _ = P.run_jax_scan(nadam(**kw), params, grads)
    assert P.rel_err(j, t) <= P.TOL[torch.float64]


def test_schedules_match_torch_group_values():
    """lr and momentum_decay as schedules equal setting torch's group values before each step."""
    def lr_at(c):
        return 0.02 * 0.9**c

    def md_at(c):
        return 4e-3 + 1e-3 * c

    def beta1_at(c):
        return 0.9 - 0.01 * c

    params, grads = P.problem(torch.float64, 20)
    t, _ = run_torch_states(
        TORCH_CLS, dict(lr=lr_at(0), weight_decay=0.1), params, grads, torch.float64,
        lambda c: dict(lr=lr_at(c), momentum_decay=md_at(c), betas=(beta1_at(c), 0.999)),
    )
    tx = nadam(lr=lr_at, momentum_decay=md_at, betas=(beta1_at, 0.999), weight_decay=0.1)
    assert P.rel_err(P.run_jax(tx, params, grads, torch.float64), t) <= P.TOL[torch.float64]


def test_array_hyperparameters():
    kw = dict(lr=0.01, betas=(0.8, 0.99), eps=1e-6, weight_decay=0.1, momentum_decay=0.01)
    params, grads = P.problem(torch.float64, 20)
    t = P.run_torch(TORCH_CLS, kw, params, grads, torch.float64)
    j = P.run_jax(nadam(**P.array_kwargs(kw)), params, grads, torch.float64)
    assert P.rel_err(j, t) <= P.TOL[torch.float64]


def test_without_params():
    """update(grads, state) without params: the same step up to rounding (one add less)."""
    P.assert_without_params(TORCH_CLS, nadam, dict(lr=0.01, maximize=True))
    with pytest.raises(ValueError, match="needs the current parameters"):
        tx = nadam(weight_decay=0.1, decoupled_weight_decay=True)
        tx.update([jnp.ones(2)], tx.init([jnp.ones(2)]))


def test_float32_without_x64():
    P.assert_float32_without_x64(
        TORCH_CLS, nadam, dict(lr=0.01, weight_decay=0.1, decoupled_weight_decay=True)
    )


def test_float_and_array_betas_mix_like_torch():
    """torch's NAdam (unlike Adam) accepts a float beside a 1-element tensor."""
    TORCH_CLS([torch.zeros(2, requires_grad=True)], betas=(0.9, torch.tensor(0.99)))
    nadam(betas=(0.9, np.array(0.99)))

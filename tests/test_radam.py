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
from tests.oracle import states_every_step

TORCH_CLS = torch.optim.RAdam


@pytest.mark.parametrize("dtype", [torch.float64, torch.complex128], ids=["f64", "c128"])
def test_state_matches_torch(dtype):
    """step, exp_avg and exp_avg_sq after every step (complex state in torch's real view)."""
    kw = dict(lr=0.01, weight_decay=0.1, maximize=True)
    keys = ("exp_avg", "exp_avg_sq")
    states_every_step(TORCH_CLS, radam, kw, TorchRAdamState, keys, dtype, 12)


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


def test_float_and_array_betas_mix_like_torch():
    """torch's RAdam (unlike Adam) accepts a float beside a 1-element tensor."""
    TORCH_CLS([torch.zeros(2, requires_grad=True)], betas=(0.9, torch.tensor(0.99)))
    radam(betas=(0.9, np.array(0.99)))

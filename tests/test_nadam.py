"""NAdam beyond the shared table (tests/optim_db.py): state, float32 mu_product, schedules, scan."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from jaxupdate.optim.nadam import nadam
from jaxupdate.transforms.nadam_radam import TorchNAdamState
from tests import parity as P
from tests.oracle import states_every_step

TORCH_CLS = torch.optim.NAdam


@pytest.mark.parametrize("dtype", [torch.float64, torch.complex128], ids=["f64", "c128"])
def test_state_matches_torch(dtype):
    """mu_product (a float32 scalar in torch), step, exp_avg and exp_avg_sq after every step."""
    kw = dict(lr=0.01, weight_decay=0.1, momentum_decay=0.05)
    keys = ("exp_avg", "exp_avg_sq")
    for s, ts in states_every_step(TORCH_CLS, nadam, kw, TorchNAdamState, keys, dtype, 25):
        for t in ts:
            assert t["mu_product"].dtype == np.float32 == s.mu_product.dtype
            assert float(s.mu_product) == float(t["mu_product"])


def test_float32_mu_product_is_what_torch_keeps():
    """A float64 mu_product would move the float64 trajectory by ~1e-9: measurable, not noise."""
    params, grads = P.problem(torch.float64, 30)
    t = P.run_torch(TORCH_CLS, dict(lr=0.01), params, grads, torch.float64)
    j = P.run_jax(nadam(lr=0.01), params, grads, torch.float64)
    assert P.rel_err(j, t) <= P.TOL[torch.float64]
    # torch with its scalar state in float64 (default dtype float64) is another trajectory
    t64 = P.run_torch_float64_scalars(TORCH_CLS, dict(lr=0.01), params, grads, torch.float64)
    assert P.rel_err(t64, t) > 100 * P.TOL[torch.float64]


def test_float_and_array_betas_mix_like_torch():
    """torch's NAdam (unlike Adam) accepts a float beside a 1-element tensor."""
    TORCH_CLS([torch.zeros(2, requires_grad=True)], betas=(0.9, torch.tensor(0.99)))
    nadam(betas=(0.9, np.array(0.99)))

"""Parity of jaxupdate's adamax with torch.optim.Adamax, its state and its construction errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.testing._internal import common_optimizers as co

from jaxupdate.optim.adamax import adamax
from jaxupdate.transforms.adaptive import TorchAdamaxState
from tests import parity as P
from tests.parity import assert_parity

TORCH = torch.optim.Adamax

# all pairs of option values (betas (0, 0): exp_avg = g, exp_inf = |g| + eps), plus torch's table
GRID = P.pairwise(
    lr=[0.05],
    betas=[(0.9, 0.999), (0.5, 0.9), (0.0, 0.0)],
    eps=[1e-8, 1e-1],
    weight_decay=[0, 0.1],
    maximize=[False, True],
)


@pytest.mark.parametrize("kwargs", P.torch_table(co.optim_inputs_func_adamax))
@pytest.mark.parametrize("dtype", P.DTYPES, ids=P.DTYPE_IDS)
def test_torch_table(kwargs, dtype):
    assert_parity(TORCH, adamax, kwargs, dtype)


@pytest.mark.parametrize("kwargs", GRID, ids=[P.kw_id(kw) for kw in GRID])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
def test_option_grid(kwargs, dtype):
    assert_parity(TORCH, adamax, kwargs, dtype, steps=40)


def test_option_grid_complex():
    """torch 2.13 views complex parameters as real pairs: |g| and the max are per component."""
    for i, kw in enumerate(GRID):
        assert_parity(TORCH, adamax, kw, torch.complex128 if i % 2 else torch.complex64, steps=20)


def test_complex_is_componentwise_not_modulus():
    """exp_inf of a complex parameter is max over real and imaginary parts separately."""
    import jax.numpy as jnp

    tx = adamax(lr=0.1, betas=(0.0, 0.0), eps=0.0)
    p = jnp.array([1.0 + 1.0j])
    updates, state = tx.update(jnp.array([3.0 - 4.0j]), tx.init(p), p)
    block = P.find_state(state, TorchAdamaxState)
    np.testing.assert_array_equal(block.exp_inf, [[3.0, 4.0]])
    np.testing.assert_allclose(updates, [-0.1 + 0.1j])


@pytest.mark.parametrize("dtype", [torch.float64, torch.complex128], ids=["f64", "c128"])
def test_state_matches_torch(dtype):
    P.assert_state_matches(
        TORCH, adamax, dict(betas=(0.8, 0.95), weight_decay=0.1), TorchAdamaxState,
        ["exp_avg", "exp_inf"], dtype,
    )


def test_lr_schedule_matches_torch_group_lr():
    P.assert_schedule_parity(TORCH, adamax, dict(weight_decay=0.1), lambda c: 0.05 * 0.9**c)


def test_array_and_scheduled_hyperparameters():
    """1-element arrays and schedules for every float hyperparameter give torch's numbers."""
    params, grads = P.problem(torch.float64, 20)
    kw = dict(lr=0.05, betas=(0.8, 0.95), eps=1e-3, weight_decay=0.1)
    arrays = {k: (tuple(np.array([b]) for b in v) if k == "betas" else np.array([v]))
              for k, v in kw.items()}
    const = lambda v: (lambda c: v + 0.0 * c)  # noqa: E731
    schedules = {k: (tuple(const(b) for b in v) if k == "betas" else const(v))
                 for k, v in kw.items()}
    mixed = dict(kw, betas=(0.8, np.array(0.95)))  # torch's Adamax accepts a float and a tensor
    for ju_kw in (arrays, schedules, mixed):
        P.assert_trajectory_parity(TORCH, adamax, kw, params, grads, torch.float64, ju_kw)


def test_signature_matches_torch():
    P.assert_signature_matches(TORCH, adamax)


@pytest.mark.parametrize("err", P.error_cases(co.optim_error_inputs_func_adamax))
def test_torch_error_table(err):
    P.check_torch_error(TORCH, adamax, err)


@pytest.mark.parametrize(
    "kwargs,message",
    [
        (dict(lr=-1e-3), "Invalid learning rate: -0.001"),
        (dict(eps=-1.0), "Invalid epsilon value: -1.0"),
        (dict(betas=(1.0, 0.9)), "Invalid beta parameter at index 0: 1.0"),
        (dict(betas=(-0.1, 0.9)), "Invalid beta parameter at index 0: -0.1"),
        (dict(betas=(0.9, 1.5)), "Invalid beta parameter at index 1: 1.5"),
        (dict(weight_decay=-0.1), "Invalid weight_decay value: -0.1"),
    ],
)
def test_errors_match_torch_wording(kwargs, message):
    P.check_same_error(TORCH, adamax, kwargs, message)

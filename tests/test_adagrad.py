"""Parity of jaxupdate's adagrad with torch.optim.Adagrad, its state and its construction errors."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest
import torch
from torch.testing._internal import common_optimizers as co

from jaxupdate.optim.adagrad import adagrad
from jaxupdate.transforms.adaptive import TorchAdagradState
from tests import parity as ac
from tests.parity import assert_parity

TORCH = torch.optim.Adagrad

# every value of every option meets every value of every other (all pairs), on top of
# torch's own table
GRID = ac.pairwise(
    lr=[0.05, 0.5],
    lr_decay=[0, 0.5],
    weight_decay=[0, 0.1],
    initial_accumulator_value=[0, 0.1],
    eps=[1e-10, 1e-2],
    maximize=[False, True],
)


@pytest.mark.parametrize("kwargs", ac.torch_table(co.optim_inputs_func_adagrad))
@pytest.mark.parametrize("dtype", ac.DTYPES, ids=ac.DTYPE_IDS)
def test_torch_table(kwargs, dtype):
    assert_parity(TORCH, adagrad, kwargs, dtype)


@pytest.mark.parametrize("kwargs", GRID, ids=[ac.kw_id(kw) for kw in GRID])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
def test_option_grid(kwargs, dtype):
    assert_parity(TORCH, adagrad, kwargs, dtype, steps=40)


def test_option_grid_complex():
    """torch views complex parameters as real pairs; sum starts at (iav, iav)."""
    for i, kw in enumerate(GRID):
        assert_parity(TORCH, adagrad, kw, torch.complex128 if i % 2 else torch.complex64, steps=20)


@pytest.mark.parametrize("dtype", [torch.float64, torch.complex128], ids=["f64", "c128"])
def test_state_matches_torch(dtype):
    """`sum` (started at initial_accumulator_value, not 0) and `step` equal torch's state."""
    kw = dict(lr=0.1, lr_decay=0.3, initial_accumulator_value=0.7, weight_decay=0.1)
    ac.assert_state_matches(TORCH, adagrad, kw, TorchAdagradState, ["sum"], dtype)


def test_initial_sum_is_initial_accumulator_value():
    params = {"w": jnp.zeros(3), "z": jnp.zeros(2, jnp.complex64)}
    state = adagrad(initial_accumulator_value=0.25).init(params)
    block = ac.find_state(state, TorchAdagradState)
    np.testing.assert_array_equal(block.sum["w"], np.full(3, 0.25))
    np.testing.assert_array_equal(block.sum["z"], np.full((2, 2), 0.25, np.float32))


def test_lr_schedule_matches_torch_group_lr():
    """clr = lr_t / (1 + (t - 1) * lr_decay), lr_t read each step as torch reads group["lr"]."""
    ac.assert_schedule_parity(TORCH, adagrad, dict(lr_decay=0.2, weight_decay=0.1),
                              lambda c: 0.1 * 0.9**c)


def test_array_and_scheduled_hyperparameters():
    """1-element arrays and schedules for every float hyperparameter give torch's numbers."""
    params, grads = ac.problem(torch.float64, 20)
    kw = dict(lr=0.1, lr_decay=0.5, weight_decay=0.1, initial_accumulator_value=0.2, eps=1e-3)
    arrays = {k: np.array([v]) for k, v in kw.items()}
    schedules = {k: (lambda c, v=v: v + 0.0 * c) for k, v in kw.items()}
    for ju_kw in (arrays, schedules):
        ac.assert_trajectory_parity(TORCH, adagrad, kw, params, grads, torch.float64, ju_kw)


def test_update_without_params():
    """Without weight decay, `update` does not need the parameters."""
    g = {"w": jnp.array([3.0, -4.0])}
    tx = adagrad(lr=0.1, lr_decay=0.5)
    state = tx.init(g)
    u1, s1 = tx.update(g, state)
    u2, s2 = tx.update(g, state, g)
    np.testing.assert_array_equal(u1["w"], u2["w"])
    np.testing.assert_allclose(u1["w"], [-0.1, 0.1], rtol=1e-6)
    u3, _ = tx.update(g, s1)
    # second step: clr = 0.1 / 1.5, sum = 2 g**2
    np.testing.assert_allclose(u3["w"], -0.1 / 1.5 / np.sqrt(2) * np.sign([3.0, -4.0]), rtol=1e-6)


def test_signature_matches_torch():
    ac.assert_signature_matches(TORCH, adagrad)


@pytest.mark.parametrize("err", ac.error_cases(co.optim_error_inputs_func_adagrad))
def test_torch_error_table(err):
    ac.check_torch_error(TORCH, adagrad, err)


@pytest.mark.parametrize(
    "kwargs,message",
    [
        (dict(lr=-0.1), "Invalid learning rate: -0.1"),
        (dict(lr_decay=-1e-3), "Invalid lr_decay value: -0.001"),
        (dict(weight_decay=-1), "Invalid weight_decay value: -1"),
        (dict(initial_accumulator_value=-0.5),
         "Invalid initial_accumulator_value value: -0.5"),
        (dict(eps=-1e-10), "Invalid epsilon value: -1e-10"),
    ],
)
def test_errors_match_torch_wording(kwargs, message):
    ac.check_same_error(TORCH, adagrad, kwargs, message)

"""Parity of jaxupdate's adadelta with torch.optim.Adadelta, its state and its errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.testing._internal import common_optimizers as co

from jaxupdate.optim.adadelta import adadelta
from jaxupdate.transforms.adaptive import TorchAdadeltaState
from tests import parity as P
from tests.parity import assert_parity

TORCH = torch.optim.Adadelta

# all pairs of option values (rho at both ends of its closed range), on top of torch's table
GRID = P.pairwise(
    lr=[1.0, 0.1],
    rho=[0.9, 0.0, 1.0],
    eps=[1e-6, 1e-2],
    weight_decay=[0, 0.1],
    maximize=[False, True],
)


@pytest.mark.parametrize("kwargs", P.torch_table(co.optim_inputs_func_adadelta))
@pytest.mark.parametrize("dtype", P.DTYPES, ids=P.DTYPE_IDS)
def test_torch_table(kwargs, dtype):
    assert_parity(TORCH, adadelta, kwargs, dtype)


@pytest.mark.parametrize("kwargs", GRID, ids=[P.kw_id(kw) for kw in GRID])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
def test_option_grid(kwargs, dtype):
    assert_parity(TORCH, adadelta, kwargs, dtype, steps=40)


def test_option_grid_complex():
    """torch views complex parameters as real pairs: both averages are per real component."""
    for i, kw in enumerate(GRID):
        assert_parity(TORCH, adadelta, kw, torch.complex128 if i % 2 else torch.complex64, steps=20)


@pytest.mark.parametrize("dtype", [torch.float64, torch.complex128], ids=["f64", "c128"])
def test_state_matches_torch(dtype):
    P.assert_state_matches(
        TORCH, adadelta, dict(rho=0.8, weight_decay=0.1), TorchAdadeltaState,
        ["square_avg", "acc_delta"], dtype,
    )


def test_lr_schedule_matches_torch_group_lr():
    P.assert_schedule_parity(TORCH, adadelta, dict(rho=0.9), lambda c: 1.0 * 0.9**c)


def test_array_and_scheduled_hyperparameters():
    """1-element arrays and schedules for every float hyperparameter give torch's numbers."""
    params, grads = P.problem(torch.float64, 20)
    kw = dict(lr=0.5, rho=0.8, eps=1e-4, weight_decay=0.1)
    arrays = {k: np.array([v]) for k, v in kw.items()}
    schedules = {k: (lambda c, v=v: v + 0.0 * c) for k, v in kw.items()}
    for ju_kw in (arrays, schedules):
        P.assert_trajectory_parity(TORCH, adadelta, kw, params, grads, torch.float64, ju_kw)


def test_signature_matches_torch():
    P.assert_signature_matches(TORCH, adadelta)


@pytest.mark.parametrize("err", P.error_cases(co.optim_error_inputs_func_adadelta))
def test_torch_error_table(err):
    P.check_torch_error(TORCH, adadelta, err)


@pytest.mark.parametrize(
    "kwargs,message",
    [
        (dict(lr=-1.0), "Invalid learning rate: -1.0"),
        (dict(rho=-0.1), "Invalid rho value: -0.1"),
        (dict(rho=1.5), "Invalid rho value: 1.5"),
        (dict(eps=-1e-6), "Invalid epsilon value: -1e-06"),
        (dict(weight_decay=-0.5), "Invalid weight_decay value: -0.5"),
    ],
)
def test_errors_match_torch_wording(kwargs, message):
    P.check_same_error(TORCH, adadelta, kwargs, message)

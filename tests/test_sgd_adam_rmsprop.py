"""Parity of ju.sgd / adam / adamw / rmsprop with torch.optim, and torch's construction errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.testing._internal import common_optimizers as co

import jaxupdate as ju
from tests.parity import (
    DTYPE_IDS,
    DTYPES,
    assert_parity,
    assert_signature_matches,
    check_same_error,
    check_torch_error,
    error_cases,
    grid,
    kw_id,
    torch_table,
)

OPTIMS = {
    "sgd": (torch.optim.SGD, ju.sgd, co.optim_inputs_func_sgd, co.optim_error_inputs_func_sgd),
    "adam": (torch.optim.Adam, ju.adam, co.optim_inputs_func_adam, co.optim_error_inputs_func_adam),
    "adamw": (
        torch.optim.AdamW,
        ju.adamw,
        co.optim_inputs_func_adamw,
        co.optim_error_inputs_func_adamw,
    ),
    "rmsprop": (
        torch.optim.RMSprop,
        ju.rmsprop,
        co.optim_inputs_func_rmsprop,
        co.optim_error_inputs_func_rmsprop,
    ),
}


# A grid over every option of each optimizer (torch's own table comes on top of it).
GRIDS = {
    "sgd": [
        kw
        for kw in grid(
            lr=[0.05],
            momentum=[0.0, 0.9],
            dampening=[0.0, 0.3],
            weight_decay=[0.0, 0.1],
            nesterov=[False, True],
            maximize=[False, True],
        )
        if not (kw["nesterov"] and (kw["momentum"] == 0 or kw["dampening"] != 0))
    ],
    "adam": grid(
        lr=[0.01],
        betas=[(0.9, 0.999), (0.5, 0.9)],
        eps=[1e-8, 1e-3],
        weight_decay=[0.0, 0.1],
        amsgrad=[False, True],
        maximize=[False, True],
        decoupled_weight_decay=[False, True],
    ),
    "adamw": grid(
        lr=[0.01], weight_decay=[0.0, 0.01, 0.5], amsgrad=[False, True], maximize=[False, True]
    ),
    "rmsprop": grid(
        lr=[0.01],
        alpha=[0.99, 0.5],
        eps=[1e-8, 1e-2],
        weight_decay=[0.0, 0.1],
        momentum=[0.0, 0.9],
        centered=[False, True],
        maximize=[False, True],
    ),
}


TABLE = [
    (name, p) for name, o in OPTIMS.items() for p in torch_table(o[2], f"{name}-torch-")
]


@pytest.mark.parametrize(
    "name,kwargs", [(n, p.values[0]) for n, p in TABLE], ids=[p.id for _, p in TABLE]
)
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_torch_table(name, kwargs, dtype):
    torch_cls, ju_fn = OPTIMS[name][:2]
    assert_parity(torch_cls, ju_fn, kwargs, dtype)


GRID = [(name, kw) for name, kws in GRIDS.items() for kw in kws]


@pytest.mark.parametrize(
    "name,kwargs",
    GRID,
    ids=[f"{n}-{kw_id(kw)}" for n, kw in GRID],
)
@pytest.mark.parametrize("dtype", DTYPES[:2], ids=DTYPE_IDS[:2])
def test_option_grid(name, kwargs, dtype):
    torch_cls, ju_fn = OPTIMS[name][:2]
    assert_parity(torch_cls, ju_fn, kwargs, dtype, steps=40)


@pytest.mark.parametrize("name", list(OPTIMS))
def test_grid_complex(name):
    """Every option also on complex parameters (torch views them as real pairs)."""
    torch_cls, ju_fn = OPTIMS[name][:2]
    for kw in GRIDS[name][:: max(1, len(GRIDS[name]) // 12)]:
        assert_parity(torch_cls, ju_fn, kw, torch.complex128, steps=20)
        assert_parity(torch_cls, ju_fn, kw, torch.complex64, steps=20)


@pytest.mark.parametrize("name", list(OPTIMS))
def test_defaults_match_torch(name):
    """Same argument names, order, defaults and default types as torch (minus kernel-choice
    arguments): ``weight_decay=0`` as torch writes it, not ``0.0``."""
    assert_signature_matches(*OPTIMS[name][:2])


ERRORS = [
    pytest.param(name, p.values[0], id=p.id)
    for name, o in OPTIMS.items()
    for p in error_cases(o[3], f"{name}-")
]


@pytest.mark.parametrize("name,err", ERRORS)
def test_torch_error_table(name, err):
    """torch's optim_error_inputs_func, one for one: same exception type, same message."""
    check_torch_error(*OPTIMS[name][:2], err)


@pytest.mark.parametrize(
    "fn,kwargs,message",
    [
        (ju.sgd, dict(lr=-1.0), "Invalid learning rate: -1.0"),
        (ju.sgd, dict(lr=np.array([1e-3, 1e-3])), "Tensor lr must be 1-element"),
        (ju.sgd, dict(momentum=-0.5), "Invalid momentum value: -0.5"),
        (ju.sgd, dict(weight_decay=-1), "Invalid weight_decay value: -1"),
        (
            ju.sgd,
            dict(momentum=0.0, nesterov=True),
            "Nesterov momentum requires a momentum and zero dampening",
        ),
        (
            ju.sgd,
            dict(momentum=0.9, dampening=0.1, nesterov=True),
            "Nesterov momentum requires a momentum and zero dampening",
        ),
        (ju.adam, dict(betas=(1.0, 0.0)), "Invalid beta parameter at index 0: 1.0"),
        (ju.adam, dict(betas=(0.9, 1.0)), "Invalid beta parameter at index 1: 1.0"),
        (ju.adam, dict(eps=-1e-8), "Invalid epsilon value: -1e-08"),
        (ju.adamw, dict(lr=-0.1), "Invalid learning rate: -0.1"),
        (
            ju.adam,
            dict(betas=(0.9, np.array(0.99))),
            "betas must be either both floats or both Tensors",
        ),
        (ju.rmsprop, dict(alpha=-0.5), "Invalid alpha value: -0.5"),
        (ju.rmsprop, dict(eps=-1.0), "Invalid epsilon value: -1.0"),
        (ju.rmsprop, dict(momentum=-1.0), "Invalid momentum value: -1.0"),
    ],
)
def test_errors_match_torch_wording(fn, kwargs, message):
    torch_cls = {
        ju.sgd: torch.optim.SGD,
        ju.adam: torch.optim.Adam,
        ju.adamw: torch.optim.AdamW,
        ju.rmsprop: torch.optim.RMSprop,
    }[fn]
    check_same_error(torch_cls, fn, kwargs, message)

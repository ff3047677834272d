"""Parity of ju.sgd / adam / adamw / rmsprop with torch.optim, and torch's construction errors."""

from __future__ import annotations

import itertools
import re

import numpy as np
import pytest
import torch
from torch.testing._internal import common_optimizers as co

import jaxupdate as ju
from tests.parity import TORCH_ONLY_KWARGS, assert_parity, to_jax_kwargs

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


def _grid(**axes):
    keys = list(axes)
    return [dict(zip(keys, vals)) for vals in itertools.product(*axes.values())]


# A grid over every option of each optimizer (torch's own table comes on top of it).
GRIDS = {
    "sgd": [
        kw
        for kw in _grid(
            lr=[0.05],
            momentum=[0.0, 0.9],
            dampening=[0.0, 0.3],
            weight_decay=[0.0, 0.1],
            nesterov=[False, True],
            maximize=[False, True],
        )
        if not (kw["nesterov"] and (kw["momentum"] == 0 or kw["dampening"] != 0))
    ],
    "adam": _grid(
        lr=[0.01],
        betas=[(0.9, 0.999), (0.5, 0.9)],
        eps=[1e-8, 1e-3],
        weight_decay=[0.0, 0.1],
        amsgrad=[False, True],
        maximize=[False, True],
        decoupled_weight_decay=[False, True],
    ),
    "adamw": _grid(
        lr=[0.01], weight_decay=[0.0, 0.01, 0.5], amsgrad=[False, True], maximize=[False, True]
    ),
    "rmsprop": _grid(
        lr=[0.01],
        alpha=[0.99, 0.5],
        eps=[1e-8, 1e-2],
        weight_decay=[0.0, 0.1],
        momentum=[0.0, 0.9],
        centered=[False, True],
        maximize=[False, True],
    ),
}


def _torch_table(name):
    """torch's own configs for the optimizer (CPU), minus kernel-choice-only entries."""
    out = []
    for oi in OPTIMS[name][2](device="cpu", dtype=torch.float64):
        out.append(pytest.param(oi.kwargs, id=f"{name}-torch-{oi.desc.replace(' ', '_')}"))
    return out


TABLE = [(name, p) for name in OPTIMS for p in _torch_table(name)]


@pytest.mark.parametrize(
    "name,kwargs", [(n, p.values[0]) for n, p in TABLE], ids=[p.id for _, p in TABLE]
)
@pytest.mark.parametrize(
    "dtype", [torch.float64, torch.float32, torch.complex128], ids=["f64", "f32", "c128"]
)
def test_torch_table(name, kwargs, dtype):
    torch_cls, ju_fn = OPTIMS[name][:2]
    assert_parity(torch_cls, ju_fn, kwargs, dtype)


GRID = [(name, kw) for name, kws in GRIDS.items() for kw in kws]


@pytest.mark.parametrize(
    "name,kwargs",
    GRID,
    ids=[f"{n}-" + "-".join(f"{k}={v}" for k, v in kw.items()) for n, kw in GRID],
)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
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
    """Same argument names, order and defaults as torch (minus kernel-choice arguments)."""
    import inspect

    torch_cls, ju_fn = OPTIMS[name][:2]
    t_params = [
        p
        for p in inspect.signature(torch_cls.__init__).parameters.values()
        if p.name not in ("self", "params", *TORCH_ONLY_KWARGS)
    ]
    j_params = list(inspect.signature(ju_fn).parameters.values())
    assert [p.name for p in j_params] == [p.name for p in t_params]
    for tp, jp in zip(t_params, j_params):
        assert tp.kind == jp.kind, tp.name
        assert tp.default == jp.default, (tp.name, tp.default, jp.default)


def _error_cases():
    cases = []
    for name, (_, _, _, err_fn) in OPTIMS.items():
        for e in err_fn(device="cpu", dtype=torch.float64):
            oi = e.optimizer_error_input
            cases.append(pytest.param(name, e, id=f"{name}-{oi.desc.replace(' ', '_')}"))
    return cases


@pytest.mark.parametrize("name,err", _error_cases())
def test_torch_error_table(name, err):
    """torch's optim_error_inputs_func, one for one: same exception type, same message."""
    oi = err.optimizer_error_input
    if oi.params is not None:
        pytest.skip(
            "about torch's `params` argument (param groups, names): jaxupdate takes pytrees"
        )
    if err.error_on != co.OptimizerErrorEnum.CONSTRUCTION_ERROR:
        pytest.skip("raised by torch's step(), not its constructor")
    if any(k in oi.kwargs for k in TORCH_ONLY_KWARGS):
        pytest.skip("about torch kernel choices (foreach/fused/capturable), not the mathematics")
    ju_fn = OPTIMS[name][1]
    with pytest.raises(err.error_type, match=err.error_regex):
        ju_fn(**to_jax_kwargs(oi.kwargs))
    # and torch agrees on this input (guards against a drifting table)
    with pytest.raises(err.error_type, match=err.error_regex):
        OPTIMS[name][0]([torch.zeros(2, requires_grad=True)], **oi.kwargs)


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
    with pytest.raises(ValueError, match="^" + message + "$"):
        fn(**kwargs)
    # the same input in torch raises the same message
    torch_cls = {
        ju.sgd: torch.optim.SGD,
        ju.adam: torch.optim.Adam,
        ju.adamw: torch.optim.AdamW,
        ju.rmsprop: torch.optim.RMSprop,
    }[fn]
    t_kwargs = {k: (torch.tensor(v) if isinstance(v, np.ndarray) else v) for k, v in kwargs.items()}
    if "betas" in t_kwargs:
        t_kwargs["betas"] = tuple(
            torch.tensor(b) if isinstance(b, np.ndarray) else b for b in kwargs["betas"]
        )
    with pytest.raises(ValueError, match=re.escape(message).replace("\\\\", "\\")):
        torch_cls([torch.zeros(2, requires_grad=True)], **t_kwargs)

"""Every optimizer of ``tests/optim_db.py`` against torch: the same tests for each entry.

torch's own config table (float64, float32, complex128), the entry's option grid (float64,
float32; a sample on complex128 and complex64), torch's argument names and defaults, torch's
error table and exact wording, the state after 15 steps, an lr schedule read as torch reads
``group["lr"]``, and every float hyperparameter as a 1-element array and as a schedule.
"""

from __future__ import annotations

import jax.numpy as jnp
import pytest
import torch

from tests import parity as P
from tests.optim_db import OPTIMS
from tests.oracle import run_torch_states


def _params(select, make):
    """pytest params over the entries: ``make(info)`` yields (values, id) pairs."""
    return [
        pytest.param(info, *values, id=f"{info.name}-{vid}")
        for info in OPTIMS
        if select(info)
        for values, vid in make(info)
    ]


TORCH_TABLE = _params(
    lambda o: True,
    lambda o: [((p.values[0],), p.id) for p in P.torch_table(o.inputs_fn)],
)


@pytest.mark.parametrize("info,kwargs", TORCH_TABLE)
@pytest.mark.parametrize("dtype", P.DTYPES, ids=P.DTYPE_IDS)
def test_torch_table(info, kwargs, dtype):
    P.assert_parity(info.torch_cls, info.ju_fn, kwargs, dtype)


GRID = _params(
    lambda o: True,
    lambda o: [((kw,), P.kw_id(kw, skip=o.id_skip)) for kw in o.grid],
)


@pytest.mark.parametrize("info,kwargs", GRID)
@pytest.mark.parametrize("dtype", P.DTYPES[:2], ids=P.DTYPE_IDS[:2])
def test_option_grid(info, kwargs, dtype):
    P.assert_parity(info.torch_cls, info.ju_fn, kwargs, dtype, steps=40)


def _complex_sample(o):
    # at most a dozen grid entries: every option value still meets complex parameters
    return [((kw,), P.kw_id(kw, skip=o.id_skip)) for kw in o.grid[:: max(1, len(o.grid) // 12)]]


@pytest.mark.parametrize("info,kwargs", _params(lambda o: True, _complex_sample))
@pytest.mark.parametrize("dtype", [torch.complex128, torch.complex64], ids=["c128", "c64"])
def test_grid_complex(info, kwargs, dtype):
    """torch views complex parameters as pairs of reals (view_as_real) in every optimizer."""
    P.assert_parity(info.torch_cls, info.ju_fn, kwargs, dtype, steps=20)


@pytest.mark.parametrize("info", OPTIMS, ids=[o.name for o in OPTIMS])
def test_defaults_match_torch(info):
    """Same argument names, order, kinds, defaults and default types as torch (minus the
    kernel-choice arguments): ``weight_decay=0`` as torch writes it, not ``0.0``."""
    P.assert_signature_matches(info.torch_cls, info.ju_fn)


ERRORS = _params(
    lambda o: True,
    lambda o: [((p.values[0],), p.id) for p in P.error_cases(o.errors_fn)],
)


@pytest.mark.parametrize("info,err", ERRORS)
def test_torch_error_table(info, err):
    """torch's optim_error_inputs_func, one for one: same exception type, same message."""
    P.check_torch_error(info.torch_cls, info.ju_fn, err)


WORDING = _params(
    lambda o: True,
    lambda o: [((kw, msg), f"{i}-{P.kw_id(kw)}") for i, (kw, msg) in enumerate(o.wording)],
)


@pytest.mark.parametrize("info,kwargs,message", WORDING)
def test_errors_match_torch_wording(info, kwargs, message):
    P.check_same_error(info.torch_cls, info.ju_fn, kwargs, message)


@pytest.mark.parametrize("info", [o for o in OPTIMS if o.state], ids=lambda o: o.name)
@pytest.mark.parametrize("dtype", [torch.float64, torch.complex128], ids=["f64", "c128"])
def test_state_matches_torch(info, dtype):
    kwargs, state_cls, keys = info.state
    P.assert_state_matches(info.torch_cls, info.ju_fn, kwargs, state_cls, keys, dtype)


@pytest.mark.parametrize("info", [o for o in OPTIMS if o.schedule], ids=lambda o: o.name)
def test_lr_schedule_matches_torch_group_lr(info):
    kwargs, schedule = info.schedule
    P.assert_schedule_parity(info.torch_cls, info.ju_fn, kwargs, schedule)


def _constant(v):
    return lambda count: v + 0.0 * count


def _at(v, count):
    """A hyperparameter's value at ``count``: schedules called, also inside tuples (betas)."""
    if isinstance(v, tuple):
        return tuple(_at(x, count) for x in v)
    return v(count) if callable(v) else v


@pytest.mark.parametrize("info", [o for o in OPTIMS if o.group_schedules], ids=lambda o: o.name)
def test_schedules_match_torch_group_values(info):
    """Hyperparameters as schedules equal setting torch's group values before each step."""
    kw, schedules = info.group_schedules
    params, grads = P.problem(torch.float64, 20)
    t, _ = run_torch_states(
        info.torch_cls, {**kw, **{k: _at(v, 0) for k, v in schedules.items()}}, params, grads,
        torch.float64, lambda c: {k: _at(v, c) for k, v in schedules.items()},
    )
    j = P.run_jax(info.ju_fn(**kw, **schedules), params, grads, torch.float64)
    assert P.rel_err(j, t) <= P.TOL[torch.float64]


@pytest.mark.parametrize("info", [o for o in OPTIMS if o.without_params], ids=lambda o: o.name)
def test_without_params(info):
    """update(grads, state) without params: the same step up to rounding (one add less)."""
    P.assert_without_params(info.torch_cls, info.ju_fn, info.without_params)


@pytest.mark.parametrize(
    "info", [o for o in OPTIMS if o.float32_without_x64], ids=lambda o: o.name
)
def test_float32_without_x64(info):
    P.assert_float32_without_x64(info.torch_cls, info.ju_fn, info.float32_without_x64)


@pytest.mark.parametrize(
    "info", [o for o in OPTIMS if o.needs_params is not None], ids=lambda o: o.name
)
def test_update_needs_params(info):
    tx = info.ju_fn(**info.needs_params)
    with pytest.raises(ValueError, match="needs the current parameters"):
        tx.update([jnp.ones(2)], tx.init([jnp.ones(2)]))


@pytest.mark.parametrize("info", [o for o in OPTIMS if o.scan], ids=lambda o: o.name)
def test_jit_scan_no_python_flags(info):
    """The whole trajectory inside one jitted lax.scan (state only, no Python-side flags)."""
    params, grads = P.problem(torch.float64, 30)
    t = P.run_torch(info.torch_cls, info.scan, params, grads, torch.float64)
    j, _ = P.run_jax_scan(info.ju_fn(**info.scan), params, grads)
    assert P.rel_err(j, t) <= P.TOL[torch.float64]


@pytest.mark.parametrize("info", [o for o in OPTIMS if o.hparams], ids=lambda o: o.name)
def test_array_and_scheduled_hyperparameters(info):
    """1-element arrays and schedules for every float hyperparameter give torch's numbers."""
    params, grads = P.problem(torch.float64, 20)
    kw = info.hparams
    arrays = P.array_kwargs(kw)
    schedules = {
        k: tuple(map(_constant, v)) if isinstance(v, tuple) else _constant(v)
        for k, v in kw.items()
    }
    for ju_kw in (arrays, schedules):
        P.assert_trajectory_parity(
            info.torch_cls, info.ju_fn, kw, params, grads, torch.float64, ju_kw
        )

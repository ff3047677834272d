"""Checks shared by tests/test_adagrad.py, test_adadelta.py, test_adamax.py and test_rprop.py.

Each function compares one jaxupdate optimizer with its torch.optim class: signature, torch's
construction-error table, state buffers after some steps, and schedules of the learning rate.
"""

from __future__ import annotations

import inspect
import itertools

import jax
import numpy as np
import pytest
import torch
from torch.testing._internal import common_optimizers as co

from tests.parity import (
    JAX_DTYPE,
    TOL,
    TORCH_ONLY_KWARGS,
    problem,
    rel_err,
    run_jax,
    run_torch,
    to_jax_kwargs,
)

DTYPES = [torch.float64, torch.float32, torch.complex128]
DTYPE_IDS = ["f64", "f32", "c128"]


def grid(**axes):
    keys = list(axes)
    return [dict(zip(keys, vals, strict=True)) for vals in itertools.product(*axes.values())]


def pairwise(**axes):
    """A few configs in which every value of every option meets every value of every other.

    Greedy all-pairs covering of the full product (deterministic): 5 two-valued options take
    about 6-8 configs instead of 32, each option still tried in combination with all others.
    """
    keys = list(axes)
    full = [tuple(c) for c in itertools.product(*(range(len(v)) for v in axes.values()))]

    def pairs(c):
        return {(i, c[i], j, c[j]) for i, j in itertools.combinations(range(len(keys)), 2)}

    todo = set().union(*(pairs(c) for c in full)) if len(keys) > 1 else set()
    chosen = [full[0]]
    todo -= pairs(full[0])
    while todo:
        best = max(full, key=lambda c: len(pairs(c) & todo))
        chosen.append(best)
        todo -= pairs(best)
    for i, vals in enumerate(axes.values()):  # single-option axes: every value at least once
        for v in range(len(vals)):
            if not any(c[i] == v for c in chosen):
                chosen.append(tuple(v if k == i else 0 for k in range(len(keys))))
    return [{k: axes[k][c[i]] for i, k in enumerate(keys)} for c in chosen]


def kw_id(kw):
    return "-".join(f"{k}={v}" for k, v in kw.items()) or "defaults"


def torch_table(inputs_fn):
    """torch's own optim_inputs_func configs (CPU) as pytest params."""
    return [
        pytest.param(oi.kwargs, id=oi.desc.replace(" ", "_"))
        for oi in inputs_fn(device="cpu", dtype=torch.float64)
    ]


def assert_signature_matches(torch_cls, ju_fn):
    """Same argument names, order, kinds and defaults as torch (minus kernel-choice ones)."""
    t_params = [
        p
        for p in inspect.signature(torch_cls.__init__).parameters.values()
        if p.name not in ("self", "params", *TORCH_ONLY_KWARGS)
    ]
    j_params = list(inspect.signature(ju_fn).parameters.values())
    assert [p.name for p in j_params] == [p.name for p in t_params]
    for tp, jp in zip(t_params, j_params, strict=True):
        assert tp.kind == jp.kind, tp.name
        assert tp.default == jp.default, (tp.name, tp.default, jp.default)
        assert type(tp.default) is type(jp.default), (tp.name, tp.default, jp.default)


def error_cases(err_fn):
    """torch's optim_error_inputs_func entries as pytest params (skips decided in the test)."""
    return [
        pytest.param(e, id=e.optimizer_error_input.desc.replace(" ", "_"))
        for e in err_fn(device="cpu", dtype=torch.float64)
    ]


def check_torch_error(torch_cls, ju_fn, err):
    """One entry of torch's error table: same exception type and message, torch agreeing."""
    oi = err.optimizer_error_input
    if oi.params is not None:
        pytest.skip("about torch's `params` argument (param groups, names): not pytrees")
    if err.error_on != co.OptimizerErrorEnum.CONSTRUCTION_ERROR:
        pytest.skip("raised by torch's step(), not its constructor")
    if any(k in oi.kwargs for k in TORCH_ONLY_KWARGS):
        pytest.skip("about torch kernel choices (foreach/fused/capturable), not the mathematics")
    with pytest.raises(err.error_type, match=err.error_regex):
        ju_fn(**to_jax_kwargs(oi.kwargs))
    with pytest.raises(err.error_type, match=err.error_regex):
        torch_cls([torch.zeros(2, requires_grad=True)], **oi.kwargs)


def check_same_error(torch_cls, ju_fn, kwargs, message):
    """jaxupdate and torch both raise ValueError with exactly ``message``."""
    with pytest.raises(ValueError) as ju_err:
        ju_fn(**kwargs)
    with pytest.raises(ValueError) as t_err:
        torch_cls([torch.zeros(2, requires_grad=True)], **kwargs)
    assert str(ju_err.value) == message
    assert str(t_err.value) == message


def find_state(state, cls):
    """The one state of type ``cls`` inside a (chained, nested) optimizer state."""
    found = [
        s
        for s in jax.tree.leaves(state, is_leaf=lambda x: isinstance(x, cls))
        if isinstance(s, cls)
    ]
    assert len(found) == 1, found
    return found[0]


def assert_state_matches(torch_cls, ju_fn, kwargs, state_cls, keys, dtype, steps=15):
    """After ``steps`` steps, torch's state[key] equals jaxupdate's state field of that name.

    Complex parameters' buffers are compared in torch's ``view_as_real`` layout, the layout
    jaxupdate keeps them in; ``count`` is compared with torch's ``step``.
    """
    params, grads = problem(dtype, steps)
    tp = [torch.tensor(p).to(dtype).requires_grad_() for p in params]
    opt = torch_cls(tp, **kwargs)
    for g in grads:
        for t, gg in zip(tp, g, strict=True):
            t.grad = torch.tensor(gg).to(dtype)
        opt.step()

    tx = ju_fn(**to_jax_kwargs(kwargs))
    jdt = JAX_DTYPE[dtype]
    jp = [jax.numpy.asarray(p, jdt) for p in params]
    state = tx.init(jp)
    step = jax.jit(tx.update)
    for g in grads:
        updates, state = step([jax.numpy.asarray(x, jdt) for x in g], state, jp)
        jp = jax.tree.map(lambda p, u: p + u, jp, updates)
    block = find_state(state, state_cls)
    assert int(block.count) == steps
    for i, t in enumerate(tp):
        assert float(opt.state[t]["step"]) == steps
        for key in keys:
            want = opt.state[t][key]
            want = (torch.view_as_real(want) if want.is_complex() else want).numpy()
            got = np.asarray(getattr(block, key)[i])
            assert got.shape == want.shape, (key, got.shape, want.shape)
            scale = max(float(np.max(np.abs(want))) if want.size else 0.0, 1e-30)
            err = float(np.max(np.abs(got - want))) / scale if want.size else 0.0
            assert err <= TOL[dtype], f"state[{key!r}] rel err {err:.2e}"


def assert_schedule_parity(torch_cls, ju_fn, kwargs, schedule, dtype=torch.float64, steps=25):
    """jaxupdate with ``lr=schedule`` equals torch with group['lr'] = schedule(count) per step."""
    params, grads = problem(dtype, steps)
    t = run_torch(torch_cls, kwargs, params, grads, dtype, lr_at=schedule)
    j = run_jax(ju_fn(**to_jax_kwargs(kwargs), lr=schedule), params, grads, dtype)
    err = rel_err(j, t)
    assert err <= TOL[dtype], f"rel err {err:.3e}"
    return err


def assert_trajectory_parity(torch_cls, ju_fn, kwargs, params, grads, dtype, ju_kwargs=None):
    """Parity on hand-made parameters and gradients (e.g. gradients with exact zeros)."""
    t = run_torch(torch_cls, kwargs, params, grads, dtype)
    tx = ju_fn(**(to_jax_kwargs(kwargs) if ju_kwargs is None else ju_kwargs))
    j = run_jax(tx, params, grads, dtype)
    err = rel_err(j, t)
    assert err <= TOL[dtype], f"rel err {err:.3e}"
    return err

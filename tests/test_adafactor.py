"""Parity of adafactor with torch.optim.Adafactor, its state, hyperparameter forms and errors."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from torch.testing._internal import common_optimizers as co

import jaxupdate as ju
from jaxupdate.optim.adafactor import adafactor
from jaxupdate.transforms.adafactor import TorchAdafactorState
from tests import parity as P

# tests.parity.SHAPES: a (3, 4) matrix, a (5,) vector, a 0-d scalar and a (2, 3, 2) tensor, so
# both the factored (ndim >= 2, incl. a batch axis) and the full-variance (ndim 0, 1) paths run.


@pytest.mark.parametrize("kwargs", P.torch_table(co.optim_inputs_func_adafactor))
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
def test_torch_table(kwargs, dtype):
    P.assert_parity(torch.optim.Adafactor, adafactor, kwargs, dtype)


# Each option at a non-default value at least once, in combination. lr=0.3 makes
# rho = min(lr, 1/sqrt(t)) switch branch at t = 12; d=1 keeps the update clipping active;
# eps2=2 exceeds the parameters' RMS (~1); grad_scale=1e-3 with eps1=1e-2 makes both eps1
# clamps active (row_var means and variances ~1e-6 < eps1, eps1**2 = 1e-4).
GRID = [
    (dict(lr=0.3), 1.0),
    (dict(lr=0.3, weight_decay=0.1, maximize=True, d=1.5), 1.0),
    (dict(beta2_decay=-0.5, d=10.0), 1.0),
    (dict(beta2_decay=0.0, weight_decay=0.1), 1.0),
    (dict(eps=(1e-2, 1e-3)), 1e-3),
    (dict(eps=(1e-2, 2.0), lr=0.3, maximize=True, beta2_decay=-0.6), 1e-3),
    (dict(eps=(0.0, 2.0), d=2.0, weight_decay=0.05), 1.0),
    (dict(eps=(None, 0.0), lr=0.05, beta2_decay=-1.0), 1e3),
]


@pytest.mark.parametrize(
    "kwargs,grad_scale", GRID, ids=[f"{kw}-g{s:g}".replace(" ", "") for kw, s in GRID]
)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
def test_option_grid(kwargs, grad_scale, dtype):
    P.assert_parity(
        torch.optim.Adafactor, adafactor, kwargs, dtype, steps=30, grad_scale=grad_scale
    )


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
def test_tensor_lr(dtype):
    """An array lr is torch's tensor lr: float32 scalar arithmetic while rho == lr."""
    kwargs = dict(lr=torch.tensor(0.3), weight_decay=0.1)
    P.assert_parity(torch.optim.Adafactor, adafactor, kwargs, dtype)


def test_hyperparameters_as_arrays_and_schedules():
    """1-element float64 arrays give the Python-float trajectory; a schedule lr is torch with
    the group's lr set before each step."""
    dtype = torch.float64
    params, grads = P.problem(dtype, 25)
    kwargs = dict(lr=0.3, beta2_decay=-0.7, eps=(1e-3, 1e-2), d=1.5, weight_decay=0.1)
    t_traj = P.run_torch(torch.optim.Adafactor, kwargs, params, grads, dtype)
    arrays = dict(
        lr=np.array([0.3]),
        beta2_decay=np.array([-0.7]),
        eps=(np.array([1e-3]), np.array([1e-2])),
        d=np.array([1.5]),
        weight_decay=np.array([0.1]),
    )
    j_traj = P.run_jax(adafactor(**arrays), params, grads, dtype)
    assert P.rel_err(j_traj, t_traj) <= P.TOL[dtype]

    def sched(count):
        return 0.4 * 0.9 ** count

    t_traj = P.run_torch(
        torch.optim.Adafactor, dict(lr=0.4, weight_decay=0.1), params, grads, dtype, lr_at=sched
    )
    j_traj = P.run_jax(adafactor(lr=sched, weight_decay=0.1), params, grads, dtype)
    assert P.rel_err(j_traj, t_traj) <= P.TOL[dtype]


def test_state_matches_torch():
    """row_var / col_var for ndim >= 2, variance otherwise, with torch's shapes and values."""
    dtype = torch.float64
    params, grads = P.problem(dtype, 5)
    opt, tp = P.torch_after(torch.optim.Adafactor, dict(weight_decay=0.1), params, grads)
    tx = adafactor(weight_decay=0.1)
    jp = [jnp.asarray(p) for p in params]
    state = tx.init(jp)
    step = jax.jit(tx.update)
    for g in grads:
        updates, state = step([jnp.asarray(x) for x in g], state, jp)
        jp = ju.apply_updates(jp, updates)
    (fr,) = [s for s in state if isinstance(s, TorchAdafactorState)]
    assert int(ju.transforms.step_count(state)) == len(grads)
    for i, t in enumerate(tp):
        ts = opt.state[t]
        for key in ("row_var", "col_var", "variance"):
            ours = getattr(fr, key)[i]
            if key not in ts:
                assert ours is None, (i, key)
                continue
            assert ours.shape == tuple(ts[key].shape), (i, key)
            np.testing.assert_allclose(np.asarray(ours), ts[key].numpy(), rtol=1e-13, atol=0)


def test_eps1_none_takes_first_parameters_dtype():
    """torch sets eps1 = finfo(dtype).eps from the first parameter and keeps it for the others.

    With gradients ~1e-5 the row_var mean (~1e-10) falls under float32's eps (1.2e-7) but not
    float64's, so the float64 matrix moves differently when it follows a float32 parameter.
    """
    rng = np.random.default_rng(3)
    p32, p64 = rng.standard_normal(4), rng.standard_normal((3, 4))
    grads = [(1e-5 * rng.standard_normal(4), 1e-5 * rng.standard_normal((3, 4))) for _ in range(10)]
    ta = torch.tensor(p32, dtype=torch.float32, requires_grad=True)
    tb = torch.tensor(p64, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.Adafactor([ta, tb])
    tx = adafactor()
    jp = [jnp.asarray(p32, jnp.float32), jnp.asarray(p64, jnp.float64)]
    state = tx.init(jp)
    for ga, gb in grads:
        ta.grad, tb.grad = torch.tensor(ga, dtype=torch.float32), torch.tensor(gb)
        opt.step()
        updates, state = tx.update([jnp.asarray(ga, jnp.float32), jnp.asarray(gb)], state, jp)
        jp = ju.apply_updates(jp, updates)
    assert jp[0].dtype == jnp.float32 and jp[1].dtype == jnp.float64
    assert P.rel_err([[np.asarray(jp[1])]], [[tb.detach().numpy()]]) <= P.TOL[torch.float64]
    assert P.rel_err([[np.asarray(jp[0])]], [[ta.detach().numpy()]]) <= P.TOL[torch.float32]
    # and the float64 matrix does differ from a run with float64's own eps
    alone = adafactor()
    pb = jnp.asarray(p64)
    st = alone.init(pb)
    for _, gb in grads:
        u, st = alone.update(jnp.asarray(gb), st, pb)
        pb = ju.apply_updates(pb, u)
    assert P.rel_err([[np.asarray(pb)]], [[tb.detach().numpy()]]) > 1e-6


def test_float32_state_and_jit_without_retrace():
    tx = adafactor(weight_decay=0.1)
    params = {"w": jnp.ones((3, 4), jnp.float32), "b": jnp.ones(4, jnp.float32)}
    state = tx.init(params)
    step, traces = P.counted_step(tx)
    for _ in range(3):
        params, state = step(jax.tree.map(jnp.ones_like, params), state, params)
    assert len(traces) == 1
    assert all(x.dtype == jnp.float32 for x in jax.tree.leaves((params, state)) if x.ndim)


def test_defaults_match_torch():
    P.assert_signature_matches(torch.optim.Adafactor, adafactor)


@pytest.mark.parametrize("err", P.error_cases(co.optim_error_inputs_func_adafactor))
def test_torch_error_table(err):
    """torch's optim_error_inputs_func_adafactor: same exception type and message.

    Construction errors are raised by ``adafactor(...)``; torch's step errors about the
    parameters (complex ones) by ``init``, the first time the parameters are seen.
    """
    oi = err.optimizer_error_input
    if any(k in oi.kwargs for k in P.TORCH_ONLY_KWARGS):
        pytest.skip("about torch kernel choices, not the mathematics")
    if oi.params is None:
        assert err.error_on == co.OptimizerErrorEnum.CONSTRUCTION_ERROR
        with pytest.raises(err.error_type, match=err.error_regex):
            adafactor(**P.to_jax_kwargs(oi.kwargs))
        with pytest.raises(err.error_type, match=err.error_regex):
            torch.optim.Adafactor([torch.zeros(2, requires_grad=True)], **oi.kwargs)
        return
    jparams = P.jax_params(oi.params)
    if jparams is None:
        pytest.skip("about torch's `params` argument (groups, names, duplicates)")
    tx = adafactor(**P.to_jax_kwargs(oi.kwargs))
    with pytest.raises(err.error_type, match=err.error_regex):
        tx.init(jparams)
    # a state built from real parameters rejects complex gradients too
    state = tx.init([jnp.zeros(p.shape, jnp.float32) for p in jparams])
    with pytest.raises(err.error_type, match=err.error_regex):
        tx.update(jparams, state, jparams)
    # and torch agrees on this input
    opt = torch.optim.Adafactor(oi.params, **oi.kwargs)
    with pytest.raises(err.error_type, match=err.error_regex):
        opt.step()


@pytest.mark.parametrize(
    "kwargs,message",
    [
        (dict(lr=-0.1), "Learning rate should be >= 0 but is: -0.1"),
        (dict(beta2_decay=0.5), "beta2_decay should be <= 0 but is: 0.5"),
        (dict(eps=(-1.0, 1e-3)), "epsilon1 should be >= 0 but is: -1.0"),
        (dict(eps=(None, -1e-3)), "epsilon2 should be >= 0 but is: -0.001"),
        (dict(d=0.5), "Clipping threshold d should be >= 1 but is: 0.5"),
        (dict(weight_decay=-0.1), "weight_decay should be >= 0 but is: -0.1"),
        (dict(lr=np.array([1e-2, 1e-2])), "Tensor lr must be 1-element"),
    ],
)
def test_errors_match_torch_wording(kwargs, message):
    P.check_same_error(torch.optim.Adafactor, adafactor, kwargs, message)

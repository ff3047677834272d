"""Parity of muon with torch.optim.Muon: bfloat16 Newton-Schulz, state, forms and errors."""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from torch.optim._muon import _zeropower_via_newtonschulz as torch_newtonschulz
from torch.testing._internal import common_optimizers as co

from jaxupdate.interop.parity import shapes_for
from jaxupdate.optim.muon import muon
from jaxupdate.transforms.muon import TorchMuonState, zeropower_via_newtonschulz
from tests import parity as P

# Muon takes matrices only: wide, tall (transposed inside Newton-Schulz) and square ones, as
# its declaration tells the parity harness.
SHAPES = shapes_for("Muon")

# Tolerance. Newton-Schulz runs in bfloat16, but each of its operations is reproduced rounding
# for rounding (bfloat16 products accumulated in float32 and rounded once; addmm's
# beta * C + alpha * A @ B as torch's fused multiply-add, rounded once), and on small matrices
# the float32 accumulations are exact, so our bfloat16 iterates are bit-identical to torch's
# (test_newtonschulz_bit_exact; 0 of 2,600 random inputs of up to 6x6 differ) and the parameters
# agree to rounding: measured worst 1.2e-15 (float64) and 1e-10 (float32) relative over torch's
# table and the grid below. Hence the standard tolerance tests.parity.TOL, not a bfloat16 one.


@pytest.mark.parametrize("kwargs", P.torch_table(co.optim_inputs_func_muon))
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
def test_torch_table(kwargs, dtype):
    P.assert_parity(torch.optim.Muon, muon, kwargs, dtype, shapes=SHAPES)


# Each option at a non-default value at least once, in combination.
GRID = [
    dict(lr=0.02, nesterov=False),
    dict(lr=0.02, adjust_lr_fn="original", momentum=0.0),
    dict(lr=0.02, adjust_lr_fn="match_rms_adamw", weight_decay=0.0),
    dict(lr=0.02, adjust_lr_fn="match_rms_adamw", nesterov=False, momentum=0.5, eps=0.5),
    dict(lr=0.05, ns_steps=1, weight_decay=0.3),
    dict(lr=0.05, ns_steps=0, ns_coefficients=(3.0, -3.2, 1.2), eps=1e-3),
]


@pytest.mark.parametrize("kwargs", GRID, ids=[str(kw).replace(" ", "") for kw in GRID])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
def test_option_grid(kwargs, dtype):
    P.assert_parity(torch.optim.Muon, muon, kwargs, dtype, steps=30, shapes=SHAPES)


# Larger matrices. The addmm epilogue is reproduced exactly (one fused rounding), but a matrix
# product of k > ~16 bfloat16 terms rounds its float32 partial sums, and the summation order of
# torch's oneDNN GEMM is not XLA's (nor is XLA's own the same inside and outside jit); a last-bit
# float32 difference flips a bfloat16 rounding in about 1 element in 1000 of a product, and
# the iteration spreads such one-ulp (2**-8 relative) flips, so the orthogonalized update
# differs from torch's by a few bfloat16 ulps on some elements (measured: 3 of 10 random
# 64x48 inputs give any difference, worst 1.5% of the largest element). Each step moves the
# parameters by lr * ratio * O, so the trajectory error is bfloat16 rounding times the step
# size: measured 4.8e-5 relative (float64 and float32) after 20 steps at lr=0.02 on these
# shapes. 3e-4 leaves a 6x margin and is still ~50x below the relative size of one step
# (lr * ratio * |O| / |param| ~ 1.5e-2), so a wrong coefficient, transposition, lr adjustment
# or momentum form fails it.
BIG_SHAPES = ((64, 48), (32, 96))
BF16_TOL = 3e-4


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
def test_larger_matrices_within_bfloat16_rounding(dtype):
    params, grads = P.problem(dtype, 20, shapes=BIG_SHAPES)
    kwargs = dict(lr=0.02, adjust_lr_fn="match_rms_adamw")
    t_traj = P.run_torch(torch.optim.Muon, kwargs, params, grads, dtype)
    j_traj = P.run_jax(muon(**kwargs), params, grads, dtype)
    err = P.rel_err(j_traj, t_traj)
    assert err <= BF16_TOL, err


@pytest.mark.parametrize("shape", [(3, 4), (4, 3), (5, 5), (2, 6), (6, 2), (6, 6)])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
def test_newtonschulz_bit_exact(shape, dtype):
    """Identical bfloat16 operation order: bit-identical iterates on small matrices (where the
    float32 accumulations of the products are exact, so their summation order cannot matter)."""
    rng = np.random.default_rng(sum(shape))
    coefficients = (3.4445, -4.7750, 2.0315)
    ns = jax.jit(zeropower_via_newtonschulz, static_argnums=(1, 2, 3))
    for _ in range(4):
        g = rng.standard_normal(shape)
        ref = torch_newtonschulz(torch.tensor(g, dtype=dtype), coefficients, 5, 1e-7)
        ours = ns(jnp.asarray(g, {torch.float64: jnp.float64}.get(dtype, jnp.float32)),
                  coefficients, 5, 1e-7)
        assert ours.dtype == jnp.bfloat16 and ours.shape == shape
        np.testing.assert_array_equal(np.asarray(ours.astype(jnp.float32)), ref.float().numpy())


def test_schedules_and_arrays():
    dtype = torch.float64
    params, grads = P.problem(dtype, 20, shapes=SHAPES)

    def sched(count):
        return 0.03 * 0.9 ** count

    t_traj = P.run_torch(torch.optim.Muon, dict(lr=0.03), params, grads, dtype, lr_at=sched)
    j_traj = P.run_jax(muon(lr=sched), params, grads, dtype)
    assert P.rel_err(j_traj, t_traj) <= P.TOL[dtype]
    # float64 1-element arrays are Python floats
    kwargs = dict(lr=0.02, weight_decay=0.2, momentum=0.8, eps=1e-3)
    t_traj = P.run_torch(torch.optim.Muon, kwargs, params, grads, dtype)
    arrays = {k: np.array([v]) for k, v in kwargs.items()}
    j_traj = P.run_jax(muon(**arrays, ns_coefficients=(np.array(3.4445), -4.775, 2.0315)),
                     params, grads, dtype)
    assert P.rel_err(j_traj, t_traj) <= P.TOL[dtype]


def test_state_matches_torch_and_jit_without_retrace():
    dtype = torch.float64
    params, grads = P.problem(dtype, 6, shapes=SHAPES)
    opt, tp = P.torch_after(torch.optim.Muon, dict(lr=0.02), params, grads)
    tx = muon(lr=0.02)
    jp = [jnp.asarray(p) for p in params]
    state = tx.init(jp)
    step, traces = P.counted_step(tx)
    for g in grads:
        jp, state = step([jnp.asarray(x) for x in g], state, jp)
    assert len(traces) == 1
    (ms,) = [s for s in state if isinstance(s, TorchMuonState)]
    for ours, t in zip(ms.momentum_buffer, tp, strict=True):
        np.testing.assert_allclose(
            np.asarray(ours), opt.state[t]["momentum_buffer"].numpy(), rtol=1e-14, atol=0
        )
    assert all(x.dtype == jnp.float64 for x in jp)


def test_defaults_match_torch():
    P.assert_signature_matches(torch.optim.Muon, muon)


@pytest.mark.parametrize("err", P.error_cases(co.optim_error_inputs_func_muon))
def test_torch_error_table(err):
    """torch's optim_error_inputs_func_muon: same exception type and message.

    Hyperparameter errors come from ``muon(...)``; torch's errors about the parameters
    (non-matrices at construction, complex ones at the first step) from ``init``, the first
    time a transformation sees the parameters, and from ``update``.
    """
    oi = err.optimizer_error_input
    if any(k in oi.kwargs for k in P.TORCH_ONLY_KWARGS):
        pytest.skip("about torch kernel choices, not the mathematics")
    jparams = None if oi.params is None else P.jax_params(oi.params)
    if oi.params is not None and jparams is None:
        pytest.skip("about torch's `params` argument (groups, names, duplicates)")
    try:
        tx = muon(**P.to_jax_kwargs(oi.kwargs))
    except err.error_type as e:
        assert err.error_on == co.OptimizerErrorEnum.CONSTRUCTION_ERROR
        assert re.search(err.error_regex, str(e))
    else:
        if jparams is None:
            pytest.fail(f"muon({oi.kwargs}) did not raise {err.error_type.__name__}")
        with pytest.raises(err.error_type, match=err.error_regex):
            tx.init(jparams)
        state = tx.init([jnp.zeros((2, 3), jnp.float32) for _ in jparams])
        with pytest.raises(err.error_type, match=err.error_regex):
            tx.update(jparams, state, jparams)
    # and torch agrees on this input, at construction or at the first step
    t_params = oi.params if oi.params is not None else [torch.zeros(2, 2, requires_grad=True)]
    with pytest.raises(err.error_type, match=err.error_regex):
        torch.optim.Muon(t_params, **oi.kwargs).step()


@pytest.mark.parametrize(
    "kwargs,message,torch_on_step",
    [
        (dict(lr=-0.1), "Learning rate should be >= 0 but is: -0.1", False),
        (dict(momentum=-0.5), "momentum should be >= 0 but is: -0.5", False),
        (dict(weight_decay=-1.0), "weight decay should be >= 0 but is: -1.0", False),
        (dict(adjust_lr_fn="x"), "Adjust learning rate function x is not supported", False),
        (dict(lr=np.array([1e-3, 1e-3])), "Tensor lr must be 1-element", False),
        # torch raises these two from step(); a transformation reports them when built
        (dict(ns_steps=100),
         "Number of steps must be less than 100 for computational efficiency", True),
        (dict(ns_coefficients=(1.0, 2.0)),
         "Coefficients must be a tuple of exactly 3 values", True),
    ],
)
def test_errors_match_torch_wording(kwargs, message, torch_on_step):
    P.check_same_error(
        torch.optim.Muon, muon, kwargs, message, shape=(2, 2), torch_on_step=torch_on_step
    )


def test_non_matrix_message():
    """torch's wording, with the array's shape where torch prints ``torch.Size([...])``."""
    tx = muon()
    with pytest.raises(ValueError, match=r"^Muon only supports 2D parameters whereas we found "
                       r"a parameter with size: \(4,\)$"):
        tx.init({"w": jnp.ones((2, 2)), "b": jnp.ones(4)})

"""Parity of jaxupdate's rprop with torch.optim.Rprop, its state and its construction errors."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest
import torch

from jaxupdate.optim.rprop import rprop
from jaxupdate.transforms.adaptive import TorchRpropState
from tests import parity as P

TORCH = torch.optim.Rprop



def _sign_pattern_problem(dtype, steps=30, seed=3):
    """Gradients with exact zeros and runs of equal signs: every branch of torch's sign rule."""
    params, grads = P.problem(dtype, steps, seed=seed)
    rng = np.random.default_rng(seed)
    out = []
    for g in grads:
        new = []
        for x in g:
            keep = rng.random(np.shape(x)) < 0.7
            # mostly positive gradients, so signs repeat and step sizes grow to the bound
            new.append(np.where(keep, np.abs(x) + 0.1 * x, 0.0 * x))
        out.append(new)
    return params, out


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.complex128],
                         ids=["f64", "f32", "c128"])
def test_zero_gradients_and_repeated_signs(dtype):
    params, grads = _sign_pattern_problem(dtype)
    for kw in (dict(), dict(etas=(0.3, 2.0), step_sizes=(1e-4, 0.3), maximize=True)):
        P.assert_trajectory_parity(TORCH, rprop, kw, params, grads, dtype)


def test_lr_schedule_seeds_step_size_once():
    """torch fills step_size from the group's lr at its first step and never reads lr again."""
    sched = lambda c: 0.05 * 0.5**c  # noqa: E731
    P.assert_schedule_parity(TORCH, rprop, dict(), sched)
    # the schedule's value at count 0 only: same trajectory as a constant lr
    params, grads = P.problem(torch.float64, 10)
    P.assert_trajectory_parity(TORCH, rprop, dict(lr=0.05), params, grads, torch.float64,
                                dict(lr=sched))


def test_first_step_and_sign_change_by_hand():
    tx = rprop(lr=0.1, etas=(0.5, 2.0), step_sizes=(0.01, 0.3))
    p = jnp.zeros(3)
    state = tx.init(p)
    u, state = tx.update(jnp.array([1.0, -1.0, 0.0]), state)
    np.testing.assert_allclose(u, [-0.1, 0.1, 0.0])  # prev = 0: step_size = lr, sign(g)
    u, state = tx.update(jnp.array([2.0, 1.0, 1.0]), state)
    # same sign: 0.2; changed sign: 0.05 and no move; zero product: step_size kept
    np.testing.assert_allclose(u, [-0.2, 0.0, -0.1])
    block = P.find_state(state, TorchRpropState)
    np.testing.assert_allclose(block.step_size, [0.2, 0.05, 0.1])
    np.testing.assert_array_equal(block.prev, [2.0, 0.0, 1.0])
    u, state = tx.update(jnp.array([3.0, 1.0, 1.0]), state)
    # prev was zeroed after the change: factor 1; others grow, clamped at 0.3
    np.testing.assert_allclose(u, [-0.3, -0.05, -0.2])



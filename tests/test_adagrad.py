"""Parity of jaxupdate's adagrad with torch.optim.Adagrad, its state and its construction errors."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import torch

from jaxupdate.optim.adagrad import adagrad
from jaxupdate.transforms.adaptive import TorchAdagradState
from tests import parity as ac

TORCH = torch.optim.Adagrad



def test_initial_sum_is_initial_accumulator_value():
    params = {"w": jnp.zeros(3), "z": jnp.zeros(2, jnp.complex64)}
    state = adagrad(initial_accumulator_value=0.25).init(params)
    block = ac.find_state(state, TorchAdagradState)
    np.testing.assert_array_equal(block.sum["w"], np.full(3, 0.25))
    np.testing.assert_array_equal(block.sum["z"], np.full((2, 2), 0.25, np.float32))


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



"""Parity of jaxupdate's adamax with torch.optim.Adamax, its state and its construction errors."""

from __future__ import annotations

import numpy as np
import torch

from jaxupdate.optim.adamax import adamax
from jaxupdate.transforms.adaptive import TorchAdamaxState
from tests import parity as P

TORCH = torch.optim.Adamax



def test_complex_is_componentwise_not_modulus():
    """exp_inf of a complex parameter is max over real and imaginary parts separately."""
    import jax.numpy as jnp

    tx = adamax(lr=0.1, betas=(0.0, 0.0), eps=0.0)
    p = jnp.array([1.0 + 1.0j])
    updates, state = tx.update(jnp.array([3.0 - 4.0j]), tx.init(p), p)
    block = P.find_state(state, TorchAdamaxState)
    np.testing.assert_array_equal(block.exp_inf, [[3.0, 4.0]])
    np.testing.assert_allclose(updates, [-0.1 + 0.1j])




def test_float_beside_array_beta_like_torch():
    """torch's Adamax (unlike Adam) accepts a float beside a 1-element tensor in betas."""
    params, grads = P.problem(torch.float64, 20)
    kw = dict(lr=0.05, betas=(0.8, 0.95), eps=1e-3, weight_decay=0.1)
    P.assert_trajectory_parity(TORCH, adamax, kw, params, grads, torch.float64,
                               dict(kw, betas=(0.8, np.array(0.95))))

"""Test-wide setup: float64 in JAX (the parity oracle runs torch in float64 too)."""

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402

jax.config.update("jax_enable_x64", True)


import pytest  # noqa: E402
import torch  # noqa: E402


@pytest.fixture
def torch_one_thread():
    """torch on one thread (``pytestmark = pytest.mark.usefixtures("torch_one_thread")``): its
    OpenMP workers spin-wait for milliseconds per kernel when other processes share the cores
    (for tiny problems; results do not depend on it)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)

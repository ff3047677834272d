"""Test-wide setup: float64 in JAX (the parity oracle runs torch in float64 too)."""

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402

jax.config.update("jax_enable_x64", True)

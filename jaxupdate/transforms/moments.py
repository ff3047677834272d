"""Moment estimates in torch's operation order: Adam's first/second moments, RMSprop's averages."""

from __future__ import annotations

from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp
import optax

from jaxupdate._hparams import resolve
from jaxupdate.numerics import bias_correction, cast, ema_square, leaf_map, lerp, step_float
from jaxupdate.transforms.common import init_count


class TorchAdamState(NamedTuple):
    count: jax.Array
    exp_avg: optax.Updates
    exp_avg_sq: optax.Updates
    max_exp_avg_sq: Optional[optax.Updates]


def scale_by_torch_adam(
    betas=(0.9, 0.999), eps=1e-8, amsgrad: bool = False
) -> optax.GradientTransformationExtraArgs:
    """Adam's direction ``(m / bc1) / (sqrt(v_hat) / sqrt(bc2) + eps)``, ``_single_tensor_adam``.

    ``m.lerp_(g, 1 - beta1)``; ``v = v * beta2 + (1 - beta2) * g * g``; with ``amsgrad`` the
    running maximum is taken of the raw ``v`` (before bias correction, unlike optax's
    ``amsgrad``), then bias-corrected. Bias corrections use ``step = count + 1``.
    """
    beta1, beta2 = betas

    def init_fn(params):
        zeros = lambda: jax.tree.map(jnp.zeros_like, params)  # noqa: E731
        return TorchAdamState(init_count(), zeros(), zeros(), zeros() if amsgrad else None)

    def update_fn(updates, state, params=None, **extra_args):
        del params, extra_args
        b1 = resolve(beta1, state.count)
        b2 = resolve(beta2, state.count)
        e = resolve(eps, state.count)
        step = step_float(state.count)
        inv_bc1 = 1.0 / bias_correction(b1, step)
        bc2_sqrt = jnp.sqrt(bias_correction(b2, step))

        mu = leaf_map(lambda m, g: lerp(m, g, 1.0 - b1), state.exp_avg, updates)
        nu = leaf_map(lambda v, g: ema_square(v, g, b2), state.exp_avg_sq, updates)
        if amsgrad:
            nu_max = leaf_map(jnp.maximum, state.max_exp_avg_sq, nu)
        else:
            nu_max = None

        def direction(m, v):
            denom = jnp.sqrt(v) / cast(bc2_sqrt, v) + cast(e, v)
            return (cast(inv_bc1, m) * m) / denom

        out = leaf_map(direction, mu, nu_max if amsgrad else nu)
        return out, TorchAdamState(optax.safe_increment(state.count), mu, nu, nu_max)

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


class TorchRMSState(NamedTuple):
    count: jax.Array
    square_avg: optax.Updates
    grad_avg: Optional[optax.Updates]


def scale_by_torch_rms(alpha=0.99, eps=1e-8, centered: bool = False):
    """RMSprop's direction ``g / (sqrt(square_avg [- grad_avg**2]) + eps)``, eps outside the sqrt.

    ``square_avg = square_avg * alpha + (1 - alpha) * g * g``; with ``centered``,
    ``grad_avg.lerp_(g, 1 - alpha)`` and the variance ``square_avg - grad_avg**2`` is used.
    """

    def init_fn(params):
        zeros = lambda: jax.tree.map(jnp.zeros_like, params)  # noqa: E731
        return TorchRMSState(init_count(), zeros(), zeros() if centered else None)

    def update_fn(updates, state, params=None, **extra_args):
        del params, extra_args
        a = resolve(alpha, state.count)
        e = resolve(eps, state.count)
        sq = leaf_map(lambda s, g: ema_square(s, g, a), state.square_avg, updates)
        if centered:
            ga = leaf_map(lambda m, g: lerp(m, g, 1.0 - a), state.grad_avg, updates)
            avg = leaf_map(lambda s, m: jnp.sqrt(s - m * m), sq, ga)
        else:
            ga = None
            avg = leaf_map(jnp.sqrt, sq)
        out = leaf_map(lambda g, d: g / (d + cast(e, d)), updates, avg)
        return out, TorchRMSState(optax.safe_increment(state.count), sq, ga)

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)

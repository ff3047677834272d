"""Moment estimates in torch's operation order: Adam's first/second moments, RMSprop's averages."""

from __future__ import annotations

from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp
import optax

from jaxupdate._hparams import resolve
from jaxupdate.numerics import (
    addcdiv_term,
    addcmul,
    bias_correction,
    cast,
    ema_square,
    leaf_map,
    lerp,
    step_float,
    true_divide,
)
from jaxupdate.transforms.common import block, chain_count, schedules_in, warn_deprecated


class TorchAdamState(NamedTuple):
    exp_avg: optax.Updates
    exp_avg_sq: optax.Updates
    max_exp_avg_sq: Optional[optax.Updates]


def scale_by_torch_adam(
    betas=(0.9, 0.999), eps=1e-8, amsgrad: bool = False, *, lr=None
) -> optax.GradientTransformationExtraArgs:
    """Adam's direction ``(m / bc1) / (sqrt(v_hat) / sqrt(bc2) + eps)``, ``_single_tensor_adam``.

    ``m.lerp_(g, 1 - beta1)``; ``v = v * beta2 + (1 - beta2) * g * g``; with ``amsgrad`` the
    running maximum is taken of the raw ``v`` (before bias correction, unlike optax's
    ``amsgrad``), then bias-corrected. Bias corrections use ``step = count + 1``. Follow it
    with ``scale_by_learning_rate(lr)``; :func:`torch_adam_update` rounds ``lr`` as torch does.
    ``lr=`` is deprecated: it returns :func:`torch_adam_update`.

    Example: ``optax.chain(scale_by_torch_adam(), scale_by_learning_rate(1e-3))``.
    """
    if lr is not None:
        warn_deprecated("scale_by_torch_adam(lr=...)", "torch_adam_update(lr, ...)")
        return torch_adam_update(lr, betas, eps, amsgrad)
    return _torch_adam(None, betas, eps, amsgrad)


def torch_adam_update(
    lr=1e-3, betas=(0.9, 0.999), eps=1e-8, amsgrad: bool = False
) -> optax.GradientTransformationExtraArgs:
    """Adam's update, ``lr`` included: ``((-lr / bc1) * m) / denom``, ``_single_tensor_adam``.

    ``denom = sqrt(v) / sqrt(bc2) + eps`` (``v``: the running maximum with ``amsgrad``), as
    :func:`scale_by_torch_adam`; the output is torch's step itself,
    ``param.addcdiv_(exp_avg, denom, value=-lr / bc1)``, each operation rounded as torch's CPU
    kernels (see ``numerics.addcdiv_term``), for ``apply_updates`` to add. ``lr`` must sit
    inside the ``addcdiv_`` (multiplied before the division) to give torch's rounding, which
    a direction followed by ``scale_by_learning_rate`` cannot.

    Example: ``optax.chain(torch_adam_update(1e-3))`` is Adam without weight decay.
    """
    return _torch_adam(lr, betas, eps, amsgrad)


def _torch_adam(lr, betas, eps, amsgrad):
    beta1, beta2 = betas

    def init_fn(params):
        zeros = lambda: jax.tree.map(jnp.zeros_like, params)  # noqa: E731
        return TorchAdamState(zeros(), zeros(), zeros() if amsgrad else None)

    def update_fn(updates, state, params=None, count=None, **extra_args):
        del params, extra_args
        count = chain_count(count, "scale_by_torch_adam")
        b1 = resolve(beta1, count)
        b2 = resolve(beta2, count)
        e = resolve(eps, count)
        step = step_float(count)
        bc1 = bias_correction(b1, step)
        bc2_sqrt = jnp.sqrt(bias_correction(b2, step))

        mu = leaf_map(lambda m, g: lerp(m, g, 1.0 - b1), state.exp_avg, updates)
        nu = leaf_map(lambda v, g: ema_square(v, g, b2), state.exp_avg_sq, updates)
        if amsgrad:
            nu_max = leaf_map(jnp.maximum, state.max_exp_avg_sq, nu)
        else:
            nu_max = None

        # torch: step_size = lr / bias_correction1, in Python double precision
        value = (1.0 / bc1) if lr is None else -(resolve(lr, count) / bc1)

        def direction(m, v):
            # torch: (exp_avg_sq.sqrt() / bias_correction2_sqrt).add_(eps), a true division
            denom = true_divide(jnp.sqrt(v), cast(bc2_sqrt, v)) + cast(e, v)
            return addcdiv_term(value, m, denom)

        out = leaf_map(direction, mu, nu_max if amsgrad else nu)
        return out, TorchAdamState(mu, nu, nu_max)

    # bias corrections read the step
    return block(init_fn, update_fn, needs_count=True)


class TorchRMSState(NamedTuple):
    square_avg: optax.Updates
    grad_avg: Optional[optax.Updates]


def scale_by_torch_rms(alpha=0.99, eps=1e-8, centered: bool = False, *, lr=None):
    """RMSprop's direction ``g / (sqrt(square_avg [- grad_avg**2]) + eps)``, eps outside the sqrt.

    ``square_avg = square_avg * alpha + (1 - alpha) * g * g``; with ``centered``,
    ``grad_avg.lerp_(g, 1 - alpha)`` and the variance ``square_avg - grad_avg**2`` is used.
    RMSprop with momentum follows it with ``scale_by_torch_momentum`` and
    ``scale_by_learning_rate(lr)``; without momentum use :func:`torch_rmsprop_update`.
    ``lr=`` is deprecated: it returns :func:`torch_rmsprop_update`.

    Example: ``optax.chain(scale_by_torch_rms(), scale_by_learning_rate(1e-2))``.
    """
    if lr is not None:
        warn_deprecated("scale_by_torch_rms(lr=...)", "torch_rmsprop_update(lr, ...)")
        return torch_rmsprop_update(lr, alpha, eps, centered)
    return _torch_rms(None, alpha, eps, centered)


def torch_rmsprop_update(lr=1e-2, alpha=0.99, eps=1e-8, centered: bool = False):
    """RMSprop's update without momentum, ``lr`` included: ``(-lr * g) / avg``.

    ``avg = sqrt(square_avg [- grad_avg**2]) + eps`` as in :func:`scale_by_torch_rms`; the
    output is torch's step itself, ``param.addcdiv_(grad, avg, value=-lr)`` (``lr``
    multiplied before the division, as torch rounds it), for ``apply_updates`` to add.

    Example: ``optax.chain(torch_rmsprop_update(1e-2))`` is RMSprop without momentum.
    """
    return _torch_rms(lr, alpha, eps, centered)


def _torch_rms(lr, alpha, eps, centered):

    def init_fn(params):
        zeros = lambda: jax.tree.map(jnp.zeros_like, params)  # noqa: E731
        return TorchRMSState(zeros(), zeros() if centered else None)

    def update_fn(updates, state, params=None, count=None, **extra_args):
        del params, extra_args
        a = resolve(alpha, count)
        e = resolve(eps, count)
        sq = leaf_map(lambda s, g: ema_square(s, g, a), state.square_avg, updates)
        if centered:
            ga = leaf_map(lambda m, g: lerp(m, g, 1.0 - a), state.grad_avg, updates)
            # torch: square_avg.addcmul(grad_avg, grad_avg, value=-1).sqrt_()
            avg = leaf_map(lambda s, m: jnp.sqrt(addcmul(s, -1.0, m, m)), sq, ga)
        else:
            ga = None
            avg = leaf_map(jnp.sqrt, sq)
        value = 1.0 if lr is None else -resolve(lr, count)
        out = leaf_map(lambda g, d: addcdiv_term(value, g, d + cast(e, d)), updates, avg)
        return out, TorchRMSState(sq, ga)

    return block(init_fn, update_fn, needs_count=schedules_in(lr, alpha, eps))

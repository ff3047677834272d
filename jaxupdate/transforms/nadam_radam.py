"""NAdam's and RAdam's full steps, in the operation order of torch's ``_single_tensor_*``.

Both optimizers fold ``lr`` into their scalar coefficients (NAdam's two ``addcdiv_`` calls,
RAdam's ``exp_avg / bc1 * lr * adaptive * rect``), and torch applies decoupled weight decay
to the parameter before that step. Splitting them into "direction, then
``scale_by_learning_rate``, then ``decoupled_weight_decay``" would round differently, so each
block here returns the whole update ``new_param - param`` (exact whenever the step is smaller
than the parameter, so ``apply_updates`` lands on torch's new parameter). Coupled weight
decay and ``maximize`` act on the gradient and stay separate blocks in front of these.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from jaxupdate._hparams import is_number, resolve, scalar_dtype
from jaxupdate.numerics import (
    addcdiv_term,
    bias_correction,
    cast,
    delta,
    ema_square,
    leaf_map,
    lerp,
    scale,
    step_float,
    true_divide,
    unfused,
    wide_updates,
)
from jaxupdate.transforms.common import block, chain_count

# torch keeps ``step`` and NAdam's ``mu_product`` as tensors of ``_get_scalar_dtype()``:
# float32 under torch's default dtype. ``mu_product *= mu`` therefore rounds to float32 at
# every step, and the float64 trajectories depend on that rounding (about 1e-8 relative).
TORCH_SCALAR_DTYPE = jnp.float32


def _zeros(params):
    return jax.tree.map(jnp.zeros_like, params)


def _base(params, lr, weight_decay):
    """The parameters the step is added to: torch's ``param.mul_(1 - lr * weight_decay)``."""
    if weight_decay is None:
        return params
    factor = 1.0 - lr * weight_decay
    # rounded before the step is added, as torch's in-place mul_ (no fused multiply-add)
    return leaf_map(lambda p: scale(p, factor), params)


class TorchNAdamState(NamedTuple):
    mu_product: jax.Array
    exp_avg: optax.Updates
    exp_avg_sq: optax.Updates


def torch_nadam_update(
    lr, betas=(0.9, 0.999), eps=1e-8, momentum_decay=4e-3, decoupled_weight_decay=None
) -> optax.GradientTransformationExtraArgs:
    """NAdam's update as in ``_single_tensor_nadam`` (``lr`` and decoupled decay included).

    With ``t = count + 1``::

        mu      = beta1 * (1 - 0.5 * 0.96 ** (t * momentum_decay))
        mu_next = beta1 * (1 - 0.5 * 0.96 ** ((t + 1) * momentum_decay))
        mu_product = float32(mu_product * mu)               # a float32 tensor in torch
        m = lerp(m, g, 1 - beta1); v = beta2 * v + (1 - beta2) * g * g
        denom = sqrt(v / (1 - beta2 ** t)) + eps
        param = param * (1 - lr * wd)                       # decoupled_weight_decay=wd only
        param = param + (-lr * (1 - mu) / (1 - mu_product)) * g / denom
        param = param + (-lr * mu_next / (1 - mu_product * mu_next)) * m / denom

    The output is ``new_param - param`` given ``params``; without them (and without
    decoupled decay), the sum of the two terms.
    """
    beta1, beta2 = betas

    def init_fn(params):
        return TorchNAdamState(jnp.ones([], TORCH_SCALAR_DTYPE), _zeros(params), _zeros(params))

    def update_fn(updates, state, params=None, count=None, **extra_args):
        wide = wide_updates(extra_args)
        count = chain_count(count, "torch_nadam_update")
        b1, b2 = resolve(beta1, count), resolve(beta2, count)
        lr_t, e, md = resolve(lr, count), resolve(eps, count), resolve(momentum_decay, count)
        step = step_float(count)
        bc2 = bias_correction(b2, step)
        mu = b1 * (1.0 - 0.5 * (0.96 ** (step * md)))
        mu_next = b1 * (1.0 - 0.5 * (0.96 ** ((step + 1) * md)))
        # torch: mu_product *= mu on a float32 tensor, the Python double cast to float32 first
        mu_product = state.mu_product * jnp.asarray(mu, TORCH_SCALAR_DTYPE)
        mp = jnp.asarray(mu_product, scalar_dtype())  # _get_value(mu_product)
        coef_grad = (-lr_t * (1.0 - mu)) / (1.0 - mp)
        coef_avg = (-lr_t * mu_next) / (1.0 - mp * mu_next)

        exp_avg = leaf_map(lambda m, g: lerp(m, g, 1.0 - b1), state.exp_avg, updates)
        exp_avg_sq = leaf_map(lambda v, g: ema_square(v, g, b2), state.exp_avg_sq, updates)
        denoms = leaf_map(
            # torch: exp_avg_sq.div(bias_correction2).sqrt(), a true division
            lambda v: jnp.sqrt(true_divide(v, cast(bc2, v))) + cast(e, v), exp_avg_sq
        )

        # torch's addcdiv_: param + (value * t1) / t2, one addcdiv_ after the other
        def term(coef, t, d):
            return addcdiv_term(coef, t, d)

        new_state = TorchNAdamState(mu_product, exp_avg, exp_avg_sq)
        if params is None:
            if decoupled_weight_decay is not None:
                raise ValueError(
                    "decoupled weight_decay needs the current parameters: "
                    "call tx.update(grads, opt_state, params)"
                )
            out = leaf_map(
                lambda g, m, d: term(coef_grad, g, d) + term(coef_avg, m, d),
                updates, exp_avg, denoms,
            )
            return out, new_state
        wd = None if decoupled_weight_decay is None else resolve(decoupled_weight_decay, count)
        base = _base(params, lr_t, wd)
        out = leaf_map(
            lambda b, p, g, m, d: delta(b + term(coef_grad, g, d) + term(coef_avg, m, d), p, wide),
            base, params, updates, exp_avg, denoms,
        )
        return out, new_state

    return block(init_fn, update_fn, needs_count=True)  # bias corrections read the step


class TorchRAdamState(NamedTuple):
    exp_avg: optax.Updates
    exp_avg_sq: optax.Updates


def _q_series(x):
    """``1 - x / expm1(x)`` for ``0 <= x < 0.5`` (Bernoulli series, error below 1e-9)."""
    x2 = x * x
    return x * (0.5 - x * (1 / 12 - x2 * (1 / 720 - x2 * (1 / 30240 - x2 / 1209600))))


def _r_series(lam):
    """``coth(lam / 2) - 2 / lam`` for ``0 < lam < 0.5``."""
    l2 = lam * lam
    return lam * (1 / 6 - l2 * (1 / 360 - l2 * (1 / 15120 - l2 / 604800)))


def radam_rho(beta2, step):
    """RAdam's ``(rho_inf, rho_t)``, the maximum and current length of the approximated SMA.

    torch, in Python double precision::

        rho_inf = 2 / (1 - beta2) - 1
        rho_t   = rho_inf - 2 * step * beta2 ** step / (1 - beta2 ** step)

    With float64 scalars (``jax_enable_x64``) that formula is used as is. In float32 it
    cancels catastrophically (``rho_inf`` is 1999 for ``beta2 = 0.999`` while ``rho_t`` starts
    at 1, so ``rho_t`` would carry an absolute error near 1e-4 and the ``rho_t > 5`` switch
    could flip). There it is computed, with ``lam = -log(beta2)`` and ``x = step * lam``, as
    ``rho_t = (2 / lam) * (1 - x / expm1(x)) + (coth(lam / 2) - 2 / lam)``: a sum of two
    positive terms, each evaluated without cancellation (series below 0.5), so ``rho_t``
    keeps a few float32 ulps of relative accuracy.
    """
    dt = scalar_dtype()
    step = jnp.asarray(step, dt)
    rho_inf = 2.0 / (1.0 - beta2) - 1.0
    if dt == jnp.float64:
        rho_t = rho_inf - 2 * step * (jnp.asarray(beta2, dt) ** step) / bias_correction(
            beta2, step
        )
        return jnp.asarray(rho_inf, dt), rho_t
    if is_number(beta2):
        lam = -math.log(beta2) if beta2 > 0 else math.inf
    else:
        lam = -jnp.log(jnp.asarray(beta2, dt))
    lam = jnp.asarray(lam, dt)
    rho_inf = jnp.asarray(rho_inf, dt)
    x = step * lam
    small_x = x < 0.5
    x_big = jnp.clip(x, 0.5, 80.0)  # x / expm1(x) is below 1e-33 past 80
    q = jnp.where(small_x, _q_series(jnp.minimum(x, 0.5)), 1.0 - x_big / jnp.expm1(x_big))
    small_lam = lam < 0.5
    lam_big = jnp.maximum(lam, 0.5)
    r = jnp.where(small_lam, _r_series(jnp.minimum(lam, 0.5)), rho_inf - 2.0 / lam_big)
    # beta2 = 0: lam = inf, 2 / lam = 0 and r = 1, so rho_t = 1 as in torch
    return rho_inf, (2.0 / lam) * q + r


def torch_radam_update(
    lr, betas=(0.9, 0.999), eps=1e-8, decoupled_weight_decay=None
) -> optax.GradientTransformationExtraArgs:
    """RAdam's update as in ``_single_tensor_radam`` (``lr`` and decoupled decay included).

    With ``t = count + 1`` and ``(rho_inf, rho_t)`` from :func:`radam_rho`::

        m = lerp(m, g, 1 - beta1); v = beta2 * v + (1 - beta2) * g * g
        m_hat = m / (1 - beta1 ** t)
        param = param * (1 - lr * wd)                       # decoupled_weight_decay=wd only
        if rho_t > 5:
            rect = sqrt((rho_t - 4) (rho_t - 2) rho_inf / ((rho_inf - 4) (rho_inf - 2) rho_t))
            adaptive = (1 / (sqrt(v) + eps)) * sqrt(1 - beta2 ** t)   # torch's float / tensor
            param = param - m_hat * lr * adaptive * rect
        else:
            param = param - m_hat * lr

    The ``rho_t > 5`` switch is a ``jnp.where`` on state, so it survives ``jit``. The output
    is ``new_param - param`` given ``params``; without them (and without decoupled decay),
    the negated step.
    """
    beta1, beta2 = betas

    def init_fn(params):
        return TorchRAdamState(_zeros(params), _zeros(params))

    def update_fn(updates, state, params=None, count=None, **extra_args):
        wide = wide_updates(extra_args)
        count = chain_count(count, "torch_radam_update")
        b1, b2 = resolve(beta1, count), resolve(beta2, count)
        lr_t, e = resolve(lr, count), resolve(eps, count)
        step = step_float(count)
        bc1 = bias_correction(b1, step)
        bc2_sqrt = jnp.sqrt(bias_correction(b2, step))
        rho_inf, rho_t = radam_rho(b2, step)
        adaptive = rho_t > 5.0
        # evaluated on both sides of the switch: keep the unused side finite
        ratio = ((rho_t - 4) * (rho_t - 2) * rho_inf) / (
            (rho_inf - 4) * (rho_inf - 2) * rho_t
        )
        rect = jnp.sqrt(jnp.where(adaptive, ratio, 1.0))

        exp_avg = leaf_map(lambda m, g: lerp(m, g, 1.0 - b1), state.exp_avg, updates)
        exp_avg_sq = leaf_map(lambda v, g: ema_square(v, g, b2), state.exp_avg_sq, updates)

        def step_of(m, v):
            # torch: exp_avg / bias_correction1 (a true division), then * lr
            sgd_like = true_divide(m, cast(bc1, m)) * cast(lr_t, m)
            inv = 1 / (jnp.sqrt(v) + cast(e, v))  # torch: float / tensor = reciprocal * float
            rectified = (sgd_like * (inv * cast(bc2_sqrt, v))) * cast(rect, m)
            # rounded before param.add_(step, alpha=-1.0) subtracts it (no fused multiply-add)
            return unfused(jnp.where(adaptive, rectified, sgd_like))

        steps = leaf_map(step_of, exp_avg, exp_avg_sq)
        new_state = TorchRAdamState(exp_avg, exp_avg_sq)
        if params is None:
            if decoupled_weight_decay is not None:
                raise ValueError(
                    "decoupled weight_decay needs the current parameters: "
                    "call tx.update(grads, opt_state, params)"
                )
            return leaf_map(jnp.negative, steps), new_state
        wd = None if decoupled_weight_decay is None else resolve(decoupled_weight_decay, count)
        base = _base(params, lr_t, wd)
        # torch: param.add_(step, alpha=-1.0), i.e. base - step rounded once
        out = leaf_map(lambda b, p, s: delta(b - s, p, wide), base, params, steps)
        return out, new_state

    return block(init_fn, update_fn, needs_count=True)  # bias corrections read the step


__all__ = [
    "TORCH_SCALAR_DTYPE",
    "TorchNAdamState",
    "TorchRAdamState",
    "radam_rho",
    "torch_nadam_update",
    "torch_radam_update",
]

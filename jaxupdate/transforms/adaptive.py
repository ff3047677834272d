"""Per-coordinate adaptive step rules: Adagrad's sum, Adadelta's averages, Adamax's exp_inf, Rprop.

Each block follows torch's ``_single_tensor_<name>`` operation by operation. Where torch ends
with ``param.addcdiv_(t1, t2, value=-clr)`` (Adagrad, Adamax), the block takes ``lr`` and returns
the whole update ``(-clr * t1) / t2``: torch's CPU ``addcdiv`` computes
``param + (value * t1) / t2``, so ``apply_updates`` (``param + update``) then rounds exactly as
torch does. Adadelta returns a direction for ``scale_by_learning_rate``; Rprop returns its update.

State field names are torch's state keys (``sum``, ``square_avg``, ``acc_delta``, ``exp_avg``,
``exp_inf``, ``prev``, ``step_size``), plus ``count`` (torch's ``step`` before its increment).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from jaxupdate._hparams import resolve
from jaxupdate.numerics import (
    addcmul,
    bias_correction,
    cast,
    leaf_map,
    lerp,
    step_float,
    true_divide,
)
from jaxupdate.transforms.common import block, chain_count, init_count, schedules_in


def _full_like(params, value):
    return jax.tree.map(lambda p: jnp.full_like(p, cast(value, p)), params)


# --------------------------------------------------------------------------------------------
# Adagrad


class TorchAdagradState(NamedTuple):
    sum: optax.Updates


def torch_adagrad_update(
    lr=1e-2, lr_decay=0.0, eps=1e-10, initial_accumulator_value=0.0
) -> optax.GradientTransformationExtraArgs:
    """Adagrad's update ``-clr * g / (sqrt(sum) + eps)`` with torch's decayed learning rate.

    ``sum`` starts at ``initial_accumulator_value`` (its value at ``count = 0`` if scheduled)
    and grows by ``g * g``; ``clr = lr / (1 + (step - 1) * lr_decay)`` with ``step = count + 1``.
    The output is the update itself (lr applied): torch's ``param.addcdiv_(g, std, value=-clr)``.
    """

    def init_fn(params):
        return TorchAdagradState(
            _full_like(params, resolve(initial_accumulator_value, init_count()))
        )

    def update_fn(updates, state, params=None, count=None, **extra_args):
        del params, extra_args
        count = chain_count(count, "torch_adagrad_update")
        e = resolve(eps, count)
        # torch: clr = lr / (1 + (step - 1) * lr_decay), in Python double precision
        done = jnp.asarray(count, step_float(count).dtype)
        clr = resolve(lr, count) / (1.0 + done * resolve(lr_decay, count))
        sums = leaf_map(lambda s, g: addcmul(s, 1.0, g, g), state.sum, updates)

        def update(g, s):
            std = jnp.sqrt(s) + cast(e, s)
            return (cast(-clr, g) * g) / std

        out = leaf_map(update, updates, sums)
        return out, TorchAdagradState(sums)

    return block(init_fn, update_fn, needs_count=True)  # the lr decay reads the step


# --------------------------------------------------------------------------------------------
# Adadelta


class TorchAdadeltaState(NamedTuple):
    square_avg: optax.Updates
    acc_delta: optax.Updates


def _torch_sign(x):
    """torch.sign: 0 for NaN (jnp.sign gives NaN), so Rprop leaves a NaN-gradient element be."""
    return jnp.where(jnp.isnan(x), jnp.zeros_like(x), jnp.sign(x))


def scale_by_torch_adadelta(rho=0.9, eps=1e-6) -> optax.GradientTransformationExtraArgs:
    """Adadelta's direction ``sqrt(acc_delta + eps) / sqrt(square_avg + eps) * g``.

    ``square_avg = square_avg * rho + (1 - rho) * g * g`` first; the direction uses the old
    ``acc_delta``, which then becomes ``acc_delta * rho + (1 - rho) * delta * delta``. eps sits
    inside both square roots (torch's order). Follow with ``scale_by_learning_rate(lr)``.
    """

    def init_fn(params):
        zeros = lambda: jax.tree.map(jnp.zeros_like, params)  # noqa: E731
        return TorchAdadeltaState(zeros(), zeros())

    def update_fn(updates, state, params=None, count=None, **extra_args):
        del params, extra_args
        r = resolve(rho, count)
        e = resolve(eps, count)
        keep = 1.0 - r

        # torch: square_avg.mul_(rho).addcmul_(grad, grad, value=1 - rho)
        sq = leaf_map(
            lambda v, g: addcmul(v * cast(r, v), keep, g, g), state.square_avg, updates
        )

        def delta(g, v, a):
            std = jnp.sqrt(v + cast(e, v))
            # torch: delta.div_(std).mul_(grad); a true division (XLA would rewrite
            # sqrt(x) / sqrt(y) as sqrt(x) * rsqrt(y), another rounding)
            return true_divide(jnp.sqrt(a + cast(e, a)), std) * g

        deltas = leaf_map(delta, updates, sq, state.acc_delta)
        acc = leaf_map(
            lambda a, d: addcmul(a * cast(r, a), keep, d, d), state.acc_delta, deltas
        )
        return deltas, TorchAdadeltaState(sq, acc)

    return block(init_fn, update_fn, needs_count=schedules_in(rho, eps))


# --------------------------------------------------------------------------------------------
# Adamax


class TorchAdamaxState(NamedTuple):
    exp_avg: optax.Updates
    exp_inf: optax.Updates


def torch_adamax_update(
    lr=2e-3, betas=(0.9, 0.999), eps=1e-8
) -> optax.GradientTransformationExtraArgs:
    """Adamax's update ``-lr / (1 - beta1**t) * exp_avg / exp_inf``.

    ``exp_avg.lerp_(g, 1 - beta1)``; ``exp_inf = max(exp_inf * beta2, |g| + eps)`` (eps inside
    the maximum, as torch; so ``exp_inf >= eps``). The output is the update itself (lr applied):
    torch's ``param.addcdiv_(exp_avg, exp_inf, value=-clr)``.
    """
    beta1, beta2 = betas

    def init_fn(params):
        zeros = lambda: jax.tree.map(jnp.zeros_like, params)  # noqa: E731
        return TorchAdamaxState(zeros(), zeros())

    def update_fn(updates, state, params=None, count=None, **extra_args):
        del params, extra_args
        count = chain_count(count, "torch_adamax_update")
        b1 = resolve(beta1, count)
        b2 = resolve(beta2, count)
        e = resolve(eps, count)
        clr = resolve(lr, count) / bias_correction(b1, step_float(count))

        mu = leaf_map(lambda m, g: lerp(m, g, 1.0 - b1), state.exp_avg, updates)
        inf = leaf_map(
            lambda u, g: jnp.maximum(u * cast(b2, u), jnp.abs(g) + cast(e, g)),
            state.exp_inf,
            updates,
        )
        out = leaf_map(lambda m, u: (cast(-clr, m) * m) / u, mu, inf)
        return out, TorchAdamaxState(mu, inf)

    return block(init_fn, update_fn, needs_count=True)  # the bias correction reads the step


# --------------------------------------------------------------------------------------------
# Rprop


class TorchRpropState(NamedTuple):
    prev: optax.Updates
    step_size: optax.Updates


def torch_rprop_update(
    lr=1e-2, etas=(0.5, 1.2), step_sizes=(1e-6, 50.0)
) -> optax.GradientTransformationExtraArgs:
    """Rprop's update ``-sign(g) * step_size`` with torch's sign-change rule.

    ``step_size`` starts at ``lr`` (a schedule's value at ``count = 0``: torch fills it from the
    group's lr when the state is created, at the first step, and never reads lr again). Each
    step, with ``s = sign(g * prev)``: ``step_size *= etaplus`` where ``s > 0``, ``etaminus``
    where ``s < 0``, unchanged where ``s == 0``, then clamped to ``step_sizes``; where the sign
    changed, ``g`` is set to zero for this step (no move) and stored as ``prev``.
    """
    etaminus, etaplus = etas
    step_size_min, step_size_max = step_sizes

    def init_fn(params):
        zeros = jax.tree.map(jnp.zeros_like, params)
        return TorchRpropState(zeros, _full_like(params, resolve(lr, init_count())))

    def update_fn(updates, state, params=None, count=None, **extra_args):
        del params, extra_args
        em = resolve(etaminus, count)
        ep = resolve(etaplus, count)
        lo = resolve(step_size_min, count)
        hi = resolve(step_size_max, count)

        def one(g, prev, size):
            s = _torch_sign(g * prev)
            # torch: sign[sign.gt(0)] = etaplus; sign[sign.lt(0)] = etaminus; sign[sign.eq(0)] = 1
            factor = jnp.where(
                s > 0, cast(ep, s), jnp.where(s < 0, cast(em, s), jnp.where(s == 0, 1, s))
            )
            size = jnp.clip(size * factor, cast(lo, size), cast(hi, size))
            # torch: grad[sign.eq(etaminus)] = 0
            g = jnp.where(factor == cast(em, factor), jnp.zeros_like(g), g)
            return -(_torch_sign(g) * size), g, size

        res = leaf_map(one, updates, state.prev, state.step_size)
        treedef = jax.tree.structure(updates)
        out, prev, size = (
            jax.tree.unflatten(treedef, [r[i] for r in treedef.flatten_up_to(res)])
            for i in range(3)
        )
        return out, TorchRpropState(prev, size)

    return block(init_fn, update_fn, needs_count=schedules_in(etas, step_sizes))

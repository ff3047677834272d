"""Adafactor's building blocks in torch's operation order (``_single_tensor_adafactor``).

``scale_by_torch_factored_rms`` keeps the factored second moment (row and column means of
``g * g`` over the last two axes for leaves with ``ndim >= 2``, the full ``g * g`` otherwise)
and returns ``g / sqrt(v_hat)``; ``torch_adafactor_update`` turns that into the
parameter change: relative step size, update clipping by ``d`` and decoupled weight decay.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from jaxupdate._hparams import is_schedule, is_static_zero, resolve, scalar_dtype
from jaxupdate.numerics import add_scaled, cast, delta, leaf_map, lerp, step_float, wide_updates
from jaxupdate.transforms.common import block, chain_count, require_params


class TorchAdafactorState(NamedTuple):
    """torch's per-parameter state: ``row_var``/``col_var`` for leaves with ``ndim >= 2``
    (``None`` elsewhere), ``variance`` for leaves with ``ndim < 2`` (``None`` elsewhere)."""

    row_var: optax.Updates
    col_var: optax.Updates
    variance: optax.Updates


def _norm(x, axis=None, keepdims=False):
    """torch's ``x.norm(2, dim)``: ``sqrt(sum(x * x))`` in the dtype of ``x``."""
    return jnp.sqrt(jnp.sum(x * x, axis=axis, keepdims=keepdims))


def scale_by_torch_factored_rms(
    beta2_decay=-0.8, eps1=None
) -> optax.GradientTransformationExtraArgs:
    """Adafactor's ``U_t = g / max(sqrt(v_hat), eps1)``, as torch computes it.

    With ``w = step ** beta2_decay`` (torch's ``one_minus_beta2_t``), for leaves with
    ``ndim >= 2``::

        row_var = lerp(row_var, norm(g, axis=-1) ** 2 / g.shape[-1], w)
        col_var = lerp(col_var, norm(g, axis=-2) ** 2 / g.shape[-2], w)
        v_hat = row_var * col_var / max(mean(row_var, axis=-2), eps1)

    and ``variance = lerp(variance, g * g, w)``, ``v_hat = variance`` otherwise; then
    ``U = rsqrt(max(v_hat, eps1 * eps1)) * g``. torch squares the norm (it does not sum the
    squares directly) and so does this. ``eps1=None`` is the machine epsilon of the dtype of
    the first leaf: torch sets it once per step from its first parameter and keeps it for the
    others.
    """

    def init_fn(params):
        leaves, treedef = jax.tree.flatten(params)

        def zeros_at(pred, shape_fn):
            zeros = [jnp.zeros(shape_fn(p.shape), p.dtype) if pred(p) else None for p in leaves]
            return jax.tree.unflatten(treedef, zeros)

        factored = lambda p: p.ndim > 1  # noqa: E731
        return TorchAdafactorState(
            zeros_at(factored, lambda s: s[:-1] + (1,)),
            zeros_at(factored, lambda s: s[:-2] + (1,) + s[-1:]),
            zeros_at(lambda p: not factored(p), lambda s: s),
        )

    def update_fn(updates, state, params=None, count=None, **extra_args):
        del params, extra_args
        count = chain_count(count, "scale_by_torch_factored_rms")
        leaves, treedef = jax.tree.flatten(updates)
        if not leaves:
            return updates, state
        w = step_float(count) ** resolve(beta2_decay, count)
        if eps1 is None:
            e1 = float(jnp.finfo(leaves[0].dtype).eps)
        else:
            e1 = resolve(eps1, count)
        rows = treedef.flatten_up_to(state.row_var)
        cols = treedef.flatten_up_to(state.col_var)
        variances = treedef.flatten_up_to(state.variance)
        out, new_rows, new_cols, new_vars = [], [], [], []
        for g, row_var, col_var, variance in zip(leaves, rows, cols, variances, strict=True):
            if g.ndim > 1:
                row_mean = jnp.square(_norm(g, axis=-1, keepdims=True)) / g.shape[-1]
                row_var = lerp(row_var, row_mean, cast(w, g))
                col_mean = jnp.square(_norm(g, axis=-2, keepdims=True)) / g.shape[-2]
                col_var = lerp(col_var, col_mean, cast(w, g))
                # torch: row_var @ col_var, an outer product (one rounding per element)
                var_estimate = row_var * col_var
                row_var_mean = jnp.mean(row_var, axis=-2, keepdims=True)
                var_estimate = var_estimate / jnp.maximum(row_var_mean, cast(e1, g))
            else:
                variance = lerp(variance, g * g, cast(w, g))
                var_estimate = variance
            # torch squares eps1 in Python precision, then clamps and takes rsqrt (1 / sqrt)
            clamped = jnp.maximum(var_estimate, cast(e1 * e1, g))
            out.append((1 / jnp.sqrt(clamped)) * g)
            new_rows.append(row_var)
            new_cols.append(col_var)
            new_vars.append(variance)
        new_state = TorchAdafactorState(
            jax.tree.unflatten(treedef, new_rows),
            jax.tree.unflatten(treedef, new_cols),
            jax.tree.unflatten(treedef, new_vars),
        )
        return jax.tree.unflatten(treedef, out), new_state

    return block(init_fn, update_fn, needs_count=True)  # the decay rate reads the step



def torch_adafactor_update(
    lr=1e-2, eps2=1e-3, d=1.0, weight_decay=0.0
) -> optax.GradientTransformationExtraArgs:
    """Adafactor's parameter change from ``U`` (the output of the factored RMS block).

    As torch, per leaf, with ``t = count + 1`` and all scalars in Python (double) precision::

        rho = min(lr, 1 / sqrt(t))
        alpha = max(eps2, norm(param) / sqrt(param.size)) * rho      # before weight decay
        if weight_decay != 0: param = param * (1 - lr * weight_decay)
        denom = max(1, norm(U) / (sqrt(U.size) * d))
        param = param - (alpha / denom) * U

    The returned update is the new parameter minus the old one (exact while the step is
    smaller than the parameter), so ``apply_updates`` lands on torch's rounding.

    An array ``lr`` behaves as torch's tensor ``lr``: while ``rho`` is ``lr`` (Python's
    ``min`` returns the tensor), ``alpha``, ``alpha / denom`` and ``1 - lr * weight_decay``
    are tensor arithmetic in ``lr``'s dtype (``torch.tensor(0.01)`` is float32).
    """
    decay = not is_static_zero(weight_decay)
    lr_dtype = None if is_schedule(lr) else getattr(lr, "dtype", None)

    def init_fn(params):
        del params
        return optax.EmptyState()

    def update_fn(updates, state, params=None, count=None, **extra_args):
        wide = wide_updates(extra_args)
        require_params(params, "adafactor")
        count = chain_count(count, "torch_adafactor_update")
        lr_t = resolve(lr, count)
        e2 = resolve(eps2, count)
        d_t = resolve(d, count)
        sdt = scalar_dtype()
        inv_sqrt_t = 1 / jnp.sqrt(step_float(count))
        if decay:
            wd = resolve(weight_decay, count)
            if lr_dtype is None:
                factor = 1 - lr_t * wd
            else:
                factor = 1 - lr_t.astype(lr_dtype) * jnp.asarray(wd, lr_dtype)

        def one(u, p):
            rms = _norm(p).astype(sdt) / (p.size**0.5)
            # Python's max(eps2, x) and max(1.0, x), as torch: the first argument when x is NaN
            m = jnp.where(rms > e2, rms, e2)
            ratio = _norm(u).astype(sdt) / ((u.size**0.5) * d_t)
            denom = jnp.where(ratio > 1.0, ratio, 1.0)
            if lr_dtype is None:
                alpha = m * jnp.minimum(lr_t, inv_sqrt_t)
                neg_alpha = -alpha / denom
            else:
                # Python's min(lr, 1 / sqrt(t)) is the float only when it is below lr
                lr_a = lr_t.astype(lr_dtype)
                from_lr = -(jnp.asarray(m, lr_dtype) * lr_a) / jnp.asarray(denom, lr_dtype)
                from_t = -(m * inv_sqrt_t) / denom
                neg_alpha = jnp.where(inv_sqrt_t < lr_t, from_t, from_lr.astype(sdt))
            p_new = p * cast(factor, p) if decay else p
            return delta(add_scaled(p_new, neg_alpha, u), p, wide)

        updates = leaf_map(one, updates, params)
        return updates, state

    return block(init_fn, update_fn, needs_count=True)  # the relative step reads the step

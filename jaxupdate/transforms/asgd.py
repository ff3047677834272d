"""ASGD's step and running average of the parameters, as torch's ``_single_tensor_asgd``.

torch keeps ``step``, ``eta`` and ``mu`` as tensors of ``_get_scalar_dtype()`` (float32 under
torch's default dtype): ``eta`` is rounded to float32 when stored and read back as that
float32 value, which moves float64 trajectories by about 1e-8 relative, so the state here
keeps them in float32 too.

Unlike the other blocks, this one takes complex leaves itself instead of running under
``complex_as_real``: its ``ax`` is the averaged *parameter*, handed back to users (see
``jaxupdate.optim.asgd.averaged_params``), so it is stored like torch's ``state['ax']``, in
the parameter's own dtype and shape; the arithmetic runs on the real view, as torch's.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from jaxupdate._hparams import resolve, scalar_dtype
from jaxupdate.numerics import add_scaled, cast, delta, leaf_map, step_float, unfused, wide_updates
from jaxupdate.transforms.common import block, chain_count, init_count, require_params
from jaxupdate.transforms.nadam_radam import TORCH_SCALAR_DTYPE


class TorchASGDState(NamedTuple):
    eta: jax.Array
    mu: jax.Array
    ax: optax.Params


def _as_real(x):
    return jnp.stack([jnp.real(x), jnp.imag(x)], axis=-1) if jnp.iscomplexobj(x) else x


def _like(x_real, ref):
    return jax.lax.complex(x_real[..., 0], x_real[..., 1]) if jnp.iscomplexobj(ref) else x_real


def torch_asgd_update(
    lr=1e-2, lambd=1e-4, alpha=0.75, t0=1e6
) -> optax.GradientTransformationExtraArgs:
    """ASGD's parameter step and averaging; the output is ``new_param - param``.

    With ``t = count + 1`` (``eta`` starts at ``lr``, ``mu`` at 1, ``ax`` at 0)::

        param = param * (1 - lambd * eta)
        param = param - eta * g                           # torch's add_(g, alpha=-eta)
        ax = param if mu == 1 else ax + (param - ax) * mu
        eta = float32(lr / (1 + lambd * lr * t) ** alpha)
        mu  = float32(1 / max(1, t - t0))

    Needs ``params``. Coupled weight decay and ``maximize`` act on ``g`` before this block.
    """

    def init_fn(params):
        # torch creates eta from the group's lr when the state is created (first step)
        eta = jnp.asarray(resolve(lr, init_count()), TORCH_SCALAR_DTYPE)
        return TorchASGDState(
            eta,
            jnp.ones([], TORCH_SCALAR_DTYPE),
            jax.tree.map(jnp.zeros_like, params),
        )

    def update_fn(updates, state, params=None, count=None, **extra_args):
        require_params(params, "asgd")
        wide = wide_updates(extra_args)
        count = chain_count(count, "torch_asgd_update")
        eta = jnp.asarray(state.eta, scalar_dtype())  # _get_value(eta): the float32 value
        decay = 1 - resolve(lambd, count) * eta
        averaging = state.mu != 1  # torch: `if mu.item() != 1`, else ax.copy_(param)

        def leaf(g, p, ax):
            g_r, p_r, ax_r = _as_real(g), _as_real(p), _as_real(ax)
            new = add_scaled(p_r * cast(decay, p_r), -eta, g_r)
            # ax.add_(param.sub(ax).mul_(mu)), mu a float32 tensor promoted to the dtype
            avg = ax_r + unfused((new - ax_r) * state.mu.astype(ax_r.dtype))
            new_ax = jnp.where(averaging, avg, new)
            return delta(_like(new, p), p, wide), _like(new_ax, p)

        pairs = leaf_map(leaf, updates, params, state.ax)
        treedef = jax.tree.structure(updates)
        out, new_ax = (
            jax.tree.unflatten(treedef, [r[i] for r in treedef.flatten_up_to(pairs)])
            for i in range(2)
        )

        step = step_float(count)
        lr_t, lambd_t = resolve(lr, count), resolve(lambd, count)
        new_eta = lr_t / ((1 + lambd_t * lr_t * step) ** resolve(alpha, count))
        new_mu = 1 / jnp.maximum(1.0, step - resolve(t0, count))
        new_state = TorchASGDState(
            jnp.asarray(new_eta, TORCH_SCALAR_DTYPE),
            jnp.asarray(new_mu, TORCH_SCALAR_DTYPE),
            new_ax,
        )
        return out, new_state

    return block(init_fn, update_fn, needs_count=True)  # eta and mu read the step


__all__ = ["TorchASGDState", "torch_asgd_update"]

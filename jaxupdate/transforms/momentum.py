"""torch's heavy-ball / Nesterov momentum buffer (SGD, RMSprop)."""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from jaxupdate._hparams import resolve
from jaxupdate.numerics import add_scaled, leaf_map, mul_scalar
from jaxupdate.transforms.common import block, chain_count, schedules_in


class TorchMomentumState(NamedTuple):
    momentum_buffer: optax.Updates


def scale_by_torch_momentum(
    momentum, dampening=0.0, nesterov: bool = False, *, first_step_copies: bool = True
) -> optax.GradientTransformationExtraArgs:
    """torch's momentum buffer.

    ``buf = g`` on the first step (torch creates it with ``grad.clone()``, so ``dampening``
    is not applied then), afterwards ``buf = buf * momentum + (1 - dampening) * g``; the
    output is ``buf``, or ``g + momentum * buf`` with ``nesterov``. The first-step rule reads
    the optimizer's step count (``count == 0``), so it survives ``jit``. With
    ``first_step_copies=False`` the buffer starts at zero and is always updated by the
    formula (RMSprop's buffer).
    """

    def init_fn(params):
        return TorchMomentumState(jax.tree.map(jnp.zeros_like, params))

    def update_fn(updates, state, params=None, count=None, **extra_args):
        del params, extra_args
        if first_step_copies:
            count = chain_count(count, "scale_by_torch_momentum")
        mom = resolve(momentum, count)
        keep = 1.0 - resolve(dampening, count)

        def new_buf(g, buf):
            # torch: buf.mul_(momentum).add_(grad, alpha=1 - dampening)
            later = add_scaled(mul_scalar(buf, mom), keep, g)
            if not first_step_copies:
                return later
            # lax.select with a scalar predicate: jnp.where's broadcasting, without its tracing
            # cost (once per leaf)
            dt = jnp.result_type(g, later)
            return jax.lax.select(count == 0, g.astype(dt), later.astype(dt))

        bufs = leaf_map(new_buf, updates, state.momentum_buffer)
        if nesterov:
            # torch: grad = grad.add(buf, alpha=momentum)
            out = leaf_map(lambda g, b: add_scaled(g, mom, b), updates, bufs)
        else:
            out = bufs
        return out, TorchMomentumState(bufs)

    # the first-step copy reads the step
    needs_count = first_step_copies or schedules_in(momentum, dampening)
    return block(init_fn, update_fn, needs_count=needs_count)

"""Gradient accumulation as torch's idiom: ``backward()`` k times, ``step()``, ``zero_grad()``.

torch accumulates by summing into ``.grad``::

    for i, (x, y) in enumerate(loader):
        loss_fn(model(x), y).backward()        # .grad += g_i   (the first one sets .grad = g_i)
        if (i + 1) % k == 0:
            optimizer.step()                   # steps with the SUM g_1 + ... + g_k
            optimizer.zero_grad()

:func:`accumulate_grads` wraps an optimizer so that one ``update`` is one ``backward()``: it
sums the gradients in torch's order and, every ``every_k``-th call, runs the optimizer on the sum
(other calls return zero updates and leave the optimizer's state untouched).

``optax.MultiSteps(tx, every_k_schedule=k)`` is different: it *averages* (a running mean of the
micro-batch gradients). It matches torch's loop only when torch divides each loss by ``k``
(``(loss / k).backward()``), and then up to rounding; with torch's plain summed ``.grad`` its
optimizer sees a gradient ``k`` times smaller (which changes the trajectory for SGD, and for
Adam through ``eps``). Use :func:`accumulate_grads` for torch's sum, or ``MultiSteps`` for the
``loss / k`` recipe -- and then mind that ``MultiSteps`` keeps its accumulator in float32 by
default: pass ``accumulator_dtype=jnp.float64`` for float64 parameters (measured: 1e-8 relative
drift from torch's float64 loop otherwise, 1e-16 with it)::

    tx = optax.MultiSteps(ju.adam(lr=1e-3), every_k_schedule=k, accumulator_dtype=jnp.float64)
    # == torch: (loss / k).backward() per micro-batch, step() and zero_grad() every k
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

__all__ = ["AccumulateGradsState", "accumulate_grads"]


class AccumulateGradsState(NamedTuple):
    """``mini_step``: backward calls since the last step (0 right after a step, torch's
    ``zero_grad``); ``gradient_step``: optimizer steps taken; ``grad``: the accumulated sum
    (torch's ``.grad``; stale when ``mini_step == 0``); ``inner_state``: the optimizer's."""

    mini_step: jax.Array
    gradient_step: jax.Array
    grad: Any
    inner_state: Any


def accumulate_grads(tx, every_k: int) -> optax.GradientTransformationExtraArgs:
    r"""Steps ``tx`` every ``every_k`` updates with the SUM of their gradients, as torch.

    Each ``update(grads, state, params)`` is one torch ``loss.backward()``::

        grad = grads if mini_step == 0 else grad + grads     # .grad after zero_grad, then +=
        if mini_step == every_k - 1:                         # optimizer.step(); zero_grad()
            updates, inner_state = tx.update(grad, inner_state, params)
            mini_step = 0
        else:
            updates = zeros                                  # parameters unchanged
            mini_step += 1

    ``params`` must be the current parameters (unchanged since the last step, as the zero
    updates leave them); extra arguments are passed on to ``tx``. Chain clipping inside, as
    torch clips the accumulated ``.grad`` right before ``step()``:
    ``accumulate_grads(optax.chain(ju.clip_grad_norm(1.0), ju.adam()), k)``.

    Contrast ``optax.MultiSteps``, which averages (see the module docstring).

    Args:
      tx: the optimizer (any optax ``GradientTransformation``).
      every_k: number of backward calls per optimizer step, an ``int >= 1``.

    Returns:
      A ``GradientTransformationExtraArgs`` with state :class:`AccumulateGradsState`.

    Example::

        >>> import jax, jax.numpy as jnp, jaxupdate as ju
        >>> tx = ju.accumulate_grads(ju.sgd(lr=0.1), every_k=4)
        >>> params = {"w": jnp.ones(3)}
        >>> state = tx.init(params)
        >>> for micro_batch in range(8):                 # two optimizer steps
        ...     grads = {"w": jnp.ones(3)}
        ...     updates, state = tx.update(grads, state, params)
        ...     params = ju.apply_updates(params, updates)
        >>> # params["w"] == 1 - 0.1 * 4 - 0.1 * 4 == 0.2 (the sum of 4 gradients per step)
    """
    if isinstance(every_k, bool) or not isinstance(every_k, int) or every_k < 1:
        raise ValueError(f"every_k must be an integer >= 1, got {every_k!r}")
    inner = optax.with_extra_args_support(tx)

    def init_fn(params):
        return AccumulateGradsState(
            mini_step=jnp.zeros([], jnp.int32),
            gradient_step=jnp.zeros([], jnp.int32),
            grad=jax.tree.map(jnp.zeros_like, params),
            inner_state=inner.init(params),
        )

    def update_fn(updates, state, params=None, **extra_args):
        first = state.mini_step == 0
        # after zero_grad(set_to_none=True) the first backward *sets* .grad (0 + g would turn
        # a -0.0 into +0.0), the following ones add in place
        grad = jax.tree.map(
            lambda a, g: jnp.where(first, g, a + g).astype(g.dtype), state.grad, updates
        )
        emit = state.mini_step == every_k - 1

        def do_step(operands):
            grad, inner_state = operands
            return inner.update(grad, inner_state, params, **extra_args)

        out_shape = jax.eval_shape(do_step, (grad, state.inner_state))

        def skip(operands):
            _, inner_state = operands
            zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), out_shape[0])
            return zeros, inner_state

        new_updates, inner_state = jax.lax.cond(emit, do_step, skip, (grad, state.inner_state))
        new_state = AccumulateGradsState(
            mini_step=jnp.where(emit, 0, state.mini_step + 1).astype(jnp.int32),
            gradient_step=jnp.where(
                emit, optax.safe_increment(state.gradient_step), state.gradient_step
            ),
            grad=jax.tree.map(lambda g, a: g.astype(a.dtype), grad, state.grad),
            inner_state=inner_state,
        )
        return new_updates, new_state

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)

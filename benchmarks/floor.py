"""``xla-floor``: the leanest hand-written jitted step of each benchmarked optimizer.

Each is the optimizer's algorithm in the fewest array operations, with optax's API (``update``
returns updates, the caller adds them with ``optax.apply_updates``), and none of jaxupdate's
torch-rounding care (one-rounding ``add`` with alpha, ``lerp``'s two formulas, infinite parameters,
input checks). It is what XLA makes of the smallest program one can write for the step, so it
separates what jaxupdate costs from what XLA costs:

- on CPU, XLA emits one kernel per output buffer (it has no multi-output fusion there): Adam is
  3 kernels per leaf (new ``p``, ``m``, ``v``), SGD with momentum, RMSprop and Adagrad 2; each
  kernel costs a few microseconds of dispatch, and compiling it about a millisecond;
- :func:`kernels_per_leaf` counts them in the optimized HLO; jaxupdate's step has exactly as many
  (``tests/test_benchmarks.py`` holds it there).

Not an optimizer to use: no validation, no schedules, float32 torch defaults only.
"""

from __future__ import annotations

import re
from typing import NamedTuple

from benchmarks.cases import Case

B1, B2, EPS = 0.9, 0.999, 1e-8  # torch's Adam defaults


def adam_m(m, g):
    """Adam's new first moment, fewest operations."""
    return m + (1 - B1) * (g - m)


def adam_v(v, g):
    """Adam's new second moment, fewest operations."""
    return B2 * v + (1 - B2) * g * g


def adam_update(m, v, step, lr):
    """Adam's update from the new moments at float ``step`` (1, 2, ...)."""
    import jax.numpy as jnp

    return -(lr / (1 - B1 ** step)) * m / (jnp.sqrt(v) / jnp.sqrt(1 - B2 ** step) + EPS)


class FloorState(NamedTuple):
    count: object
    bufs: tuple  # one tuple of parameter-shaped state arrays per state kind


def floor_tx(case: Case):
    """An optax ``GradientTransformation`` with the case's algorithm in the fewest operations."""
    import jax
    import jax.numpy as jnp
    import optax

    kw = case.torch_kwargs
    lr = kw["lr"]
    n_state = case.state_arrays

    def init(params):
        zeros = tuple(jax.tree.map(jnp.zeros_like, params) for _ in range(n_state))
        return FloorState(jnp.zeros([], jnp.int32), zeros)

    def update(grads, state, params=None):
        step = (state.count + 1).astype(jnp.float32)
        tree = jax.tree.map
        if case.name in ("adam", "adamw"):
            m, v = state.bufs
            m, v = tree(adam_m, m, grads), tree(adam_v, v, grads)
            u = tree(lambda m, v: adam_update(m, v, step, lr), m, v)
            if case.name == "adamw":
                wd = kw["weight_decay"]
                u = tree(lambda u, p: u - (lr * wd) * p, u, params)
            bufs = (m, v)
        elif case.name == "sgd_momentum":
            mu = kw["momentum"]
            (b,) = state.bufs
            b = tree(lambda b, g: jnp.where(state.count == 0, g, mu * b + g), b, grads)
            u = tree(lambda b: -lr * b, b)
            bufs = (b,)
        elif case.name == "rmsprop":
            alpha, eps = 0.99, 1e-8
            (s,) = state.bufs
            s = tree(lambda s, g: alpha * s + (1 - alpha) * g * g, s, grads)
            u = tree(lambda g, s: -lr * g / (jnp.sqrt(s) + eps), grads, s)
            bufs = (s,)
        elif case.name == "adagrad":
            eps = 1e-10
            (s,) = state.bufs
            s = tree(lambda s, g: s + g * g, s, grads)
            u = tree(lambda g, s: -lr * g / (jnp.sqrt(s) + eps), grads, s)
            bufs = (s,)
        else:
            raise KeyError(case.name)
        return u, FloorState(state.count + 1, bufs)

    return optax.GradientTransformation(init, update)


_ARRAY_KERNEL = re.compile(r"^\s*%\S+ = \S+\[[0-9,]+\]\S* (fusion|copy|custom-call)\(", re.M)


def array_kernels(tx, shapes) -> int:
    """Kernels over arrays (not scalars) in the optimized HLO of the donated, jitted step of
    ``tx`` over float32 parameters of ``shapes``."""
    import jax
    import jax.numpy as jnp
    import optax

    params = [jax.ShapeDtypeStruct(s, jnp.float32) for s in shapes]
    state = jax.eval_shape(tx.init, params)

    def step(params, state, grads):
        updates, state = tx.update(grads, state, params)
        return optax.apply_updates(params, updates), state

    text = jax.jit(step, donate_argnums=(0, 1)).lower(params, state, params).compile().as_text()
    entry = text[text.index("ENTRY"):]
    return len(_ARRAY_KERNEL.findall(entry))


def kernels_per_leaf(tx, shape=(8, 8), leaves: int = 4) -> float:
    """Array kernels XLA runs per parameter leaf: the difference between ``2 * leaves`` and
    ``leaves`` leaves, divided by ``leaves``."""
    one = array_kernels(tx, [shape] * leaves)
    two = array_kernels(tx, [shape] * (2 * leaves))
    return (two - one) / leaves

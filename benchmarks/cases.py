"""What is benchmarked: the optimizers, their nearest optax counterparts, and the parameter lists.

Every optimizer runs with torch's defaults (plus momentum for SGD, weight decay for AdamW) in
float32. ``bytes_per_param`` is the floor of memory traffic of one update step: each step reads the
parameter, its gradient and every state array, and writes back the parameter and the state arrays,
4 bytes each (Adam: read p, g, m, v and write p, m, v = 28 bytes).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

FLOAT32_BYTES = 4


@dataclass(frozen=True)
class Case:
    name: str  # key used on the command line and in the JSON
    label: str  # torch class name
    torch_kwargs: dict = field(default_factory=dict)
    state_arrays: int = 1  # parameter-sized state arrays (Adam: exp_avg, exp_avg_sq)
    optax_label: str = ""
    torch_fused: bool = True  # torch has a fused kernel for it (CPU)

    @property
    def bytes_per_param(self) -> int:
        # reads: param, grad, state; writes: param, state
        return FLOAT32_BYTES * (3 + 2 * self.state_arrays)

    def jaxupdate(self, fused: bool = False) -> Callable:
        from jaxupdate.optim.adagrad import adagrad
        from jaxupdate.optim.adam import adam, adamw
        from jaxupdate.optim.rmsprop import rmsprop
        from jaxupdate.optim.sgd import sgd

        fn = {"adam": adam, "adamw": adamw, "sgd_momentum": sgd, "rmsprop": rmsprop,
              "adagrad": adagrad}[self.name]
        return fn(**self.torch_kwargs, fused=fused) if fused else fn(**self.torch_kwargs)

    def jax_contender(self, name: str):
        """The transformation a JAX contender (``jaxupdate``, ``jaxupdate-fused``, ``optax``,
        ``xla-floor``) runs; ``jaxupdate-fused`` is stepped by ``ju.step`` (see
        :func:`step_fn`)."""
        if name == "jaxupdate":
            return self.jaxupdate()
        if name == "jaxupdate-fused":
            return self.jaxupdate(fused=True)
        if name == "optax":
            return self.optax()
        if name == "xla-floor":
            from benchmarks.floor import floor_tx

            return floor_tx(self)
        raise KeyError(f"not a JAX contender: {name!r}")

    def optax(self) -> Callable:
        import optax

        kw = self.torch_kwargs
        if self.name == "adam":
            return optax.adam(kw["lr"], b1=0.9, b2=0.999, eps=1e-8)
        if self.name == "adamw":
            return optax.adamw(kw["lr"], b1=0.9, b2=0.999, eps=1e-8, weight_decay=1e-2)
        if self.name == "sgd_momentum":
            return optax.sgd(kw["lr"], momentum=kw["momentum"])
        if self.name == "rmsprop":
            # torch: param -= lr * g / (sqrt(square_avg) + eps), alpha=0.99
            return optax.rmsprop(kw["lr"], decay=0.99, eps=1e-8, eps_in_sqrt=False)
        if self.name == "adagrad":
            return optax.adagrad(kw["lr"], initial_accumulator_value=0.0, eps=1e-10)
        raise KeyError(self.name)


CASES: dict[str, Case] = {
    c.name: c
    for c in (
        Case("adam", "Adam", {"lr": 1e-3}, 2, "optax.adam"),
        Case("adamw", "AdamW", {"lr": 1e-3, "weight_decay": 1e-2}, 2,
             "optax.adamw(weight_decay=1e-2)"),
        Case("sgd_momentum", "SGD", {"lr": 1e-3, "momentum": 0.9}, 1,
             "optax.sgd(momentum=0.9)"),
        Case("rmsprop", "RMSprop", {"lr": 1e-2}, 1, "optax.rmsprop(eps_in_sqrt=False)",
             torch_fused=False),
        Case("adagrad", "Adagrad", {"lr": 1e-2}, 1, "optax.adagrad(initial_accumulator_value=0)"),
    )
}


def make_shapes(size: int, leaves: int) -> list[tuple[int, ...]]:
    """About ``size`` float32 parameters in ``leaves`` arrays shaped like a network's.

    Leaves alternate between a 2-D weight ``(a * w, w)``, ``a`` cycling through 1, 2, 3, 4 (four
    distinct shapes, as in a transformer block), and its 1-D bias ``(a * w,)``; ``w`` is chosen so
    that the total is as close to ``size`` as whole numbers allow. Distinct shapes keep the
    benchmark honest for implementations that group or flatten leaves.
    """
    if leaves < 1 or size < leaves:
        raise ValueError(f"need 1 <= leaves <= size, got {leaves=} {size=}")
    n_weights = (leaves + 1) // 2
    n_biases = leaves - n_weights
    mult = [1 + k % 4 for k in range(n_weights)]
    a = sum(mult)
    b = sum(mult[:n_biases])
    # a * w**2 + b * w = size
    w = max(1, int((-b + math.sqrt(b * b + 4 * a * size)) / (2 * a)))
    shapes: list[tuple[int, ...]] = []
    for k in range(n_weights):
        shapes.append((mult[k] * w, w))
        if k < n_biases:
            shapes.append((mult[k] * w,))
    return shapes


def num_params(shapes) -> int:
    return sum(math.prod(s) for s in shapes)


def parse_count(text: str) -> int:
    """``"10M"`` -> 10_000_000; also ``k``/``G`` suffixes, plain integers and ``1e6``."""
    t = str(text).strip().upper().replace("_", "")
    scale = {"K": 10**3, "M": 10**6, "G": 10**9, "B": 10**9}
    if t and t[-1] in scale:
        return int(float(t[:-1]) * scale[t[-1]])
    return int(float(t))


def format_count(n: int) -> str:
    for unit, scale in (("G", 10**9), ("M", 10**6), ("k", 10**3)):
        if n >= scale and n % (scale // 10) == 0:
            v = n / scale
            return f"{v:g}{unit}"
    return f"{n:,}"


def step_fn(name: str, tx) -> Callable:
    """The step a JAX contender times: ``ju.step`` (one in-place pass) for ``jaxupdate-fused``,
    ``tx.update`` + ``apply_updates`` for the others; ``(params, state, grads) -> (params,
    state)``. The others are timed under ``jax.jit`` with donation (:func:`compiled_step`);
    ``jaxupdate-fused`` as users call it outside ``jit`` (ju.step compiles and donates per chunk
    of leaves)."""
    if name == "jaxupdate-fused":
        from jaxupdate.step import step

        return lambda params, state, grads: step(tx, params, grads, state)

    import optax

    def xla_step(params, state, grads):
        updates, state = tx.update(grads, state, params)
        return optax.apply_updates(params, updates), state

    return xla_step


def compiled_step(name: str, tx) -> Callable:
    """:func:`step_fn` ready to time: jitted with params and state donated, except
    ``jaxupdate-fused``, whose eager ``ju.step`` does that itself."""
    fn = step_fn(name, tx)
    if name == "jaxupdate-fused":
        return fn
    import jax

    return jax.jit(fn, donate_argnums=(0, 1))

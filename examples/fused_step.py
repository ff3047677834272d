"""torch's ``fused=True``: ``ju.adam(..., fused=True)`` stepped by ``ju.step``.

On CPU one numba-compiled XLA kernel updates every parameter and both moments in a single
in-place pass (needs ``pip install 'jaxupdate[fused]'``); on GPU ``ju.step`` runs the XLA path,
which XLA fuses itself. The numbers are those of ``fused=False``: this script trains the same
MLP both ways for 50 steps and checks that the parameters agree bit for bit, then does the
same through ``flax.nnx`` (``jaxupdate.nnx_optimizer.Optimizer``).

Run: ``python examples/fused_step.py``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

import jaxupdate as ju
from jaxupdate.nnx_optimizer import Optimizer

STEPS = 50
rng = np.random.default_rng(0)
X = rng.standard_normal((64, 16)).astype(np.float32)
Y = rng.standard_normal((64, 1)).astype(np.float32)


def init_params():
    r = np.random.default_rng(1)
    return {f"layer{i}": {"w": r.standard_normal((16, 16)).astype(np.float32) * 0.25,
                          "b": np.zeros(16, np.float32)} for i in range(10)} | {
        "out": {"w": r.standard_normal((16, 1)).astype(np.float32) * 0.25}}


def loss_fn(params, x, y):
    h = x
    for i in range(10):
        h = jnp.tanh(h @ params[f"layer{i}"]["w"] + params[f"layer{i}"]["b"])
    return jnp.mean((h @ params["out"]["w"] - y) ** 2)


def train(tx):
    params = jax.tree.map(jnp.asarray, init_params())
    opt_state = tx.init(params)

    # donate params and opt_state: the fused kernel then writes into their buffers
    @jax.jit
    def train_step(params, opt_state, x, y):
        loss, grads = jax.value_and_grad(loss_fn)(params, x, y)
        params, opt_state = ju.step(tx, params, grads, opt_state)
        return params, opt_state, loss

    train_step = jax.jit(train_step, donate_argnums=(0, 1))
    for _ in range(STEPS):
        params, opt_state, loss = train_step(params, opt_state, X, Y)
    return params, float(loss)


class MLP(nnx.Module):
    def __init__(self, rngs):
        self.a = nnx.Linear(16, 32, rngs=rngs)
        self.b = nnx.Linear(32, 1, rngs=rngs)

    def __call__(self, x):
        return self.b(jnp.tanh(self.a(x)))


def train_nnx(tx, optimizer_cls):
    model = MLP(nnx.Rngs(0))
    optimizer = optimizer_cls(model, tx, wrt=nnx.Param)

    @nnx.jit
    def train_step(model, optimizer, x, y):
        loss, grads = nnx.value_and_grad(lambda m: jnp.mean((m(x) - y) ** 2))(model)
        optimizer.update(model, grads)
        return loss

    for _ in range(STEPS):
        loss = train_step(model, optimizer, X, Y)
    return float(loss), np.asarray(model.a.kernel[...])


def main():
    fused_params, fused_loss = train(ju.adam(lr=1e-2, fused=True))
    plain_params, plain_loss = train(ju.adam(lr=1e-2))
    same = all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(fused_params),
                                                   jax.tree.leaves(plain_params)))
    print(f"jax.jit + ju.step: final loss fused {fused_loss:.6f}, fused=False {plain_loss:.6f}, "
          f"parameters bit-identical: {same}")
    loss_f, kernel_f = train_nnx(ju.adam(lr=1e-2, fused=True), Optimizer)
    loss_u, kernel_u = train_nnx(ju.adam(lr=1e-2), nnx.Optimizer)
    print(f"flax.nnx: final loss fused {loss_f:.6f}, nnx.Optimizer {loss_u:.6f}, kernels "
          f"max |diff| {np.max(np.abs(kernel_f - kernel_u)):.1e}")
    assert same


if __name__ == "__main__":
    main()

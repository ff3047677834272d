"""The seed walk-through's model as a flax.nnx module, trained 100 steps with ju.adam.

``nnx.Optimizer(model, ju.adam(...), wrt=nnx.Param)`` takes a jaxupdate transformation like any
optax one. When torch is installed, the same model is trained with ``torch.optim.Adam`` from
the same initial weights and both loss curves are compared.

Run: ``python examples/flax_nnx_training.py``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

import jaxupdate as ju

STEPS = 100
LR = 0.05
X = np.array([[1.0], [2.0], [3.0]], dtype=np.float32)
Y = np.array([[2.0], [4.0], [6.0]], dtype=np.float32)


def make_model(weight, bias):
    model = nnx.Linear(1, 1, rngs=nnx.Rngs(0))
    # nnx.Linear keeps the kernel as (in_features, out_features): torch's weight transposed.
    model.kernel[...] = jnp.asarray(weight.T)
    model.bias[...] = jnp.asarray(bias)
    return model


def train_jax(weight, bias, steps=STEPS):
    model = make_model(weight, bias)
    optimizer = nnx.Optimizer(model, ju.adam(lr=LR), wrt=nnx.Param)

    @nnx.jit
    def train_step(model, optimizer, x, y):
        def loss_fn(model):
            return jnp.mean((model(x) - y) ** 2)

        loss, grads = nnx.value_and_grad(loss_fn)(model)
        optimizer.update(model, grads)
        return loss

    losses = [float(train_step(model, optimizer, X, Y)) for _ in range(steps)]
    return np.array(losses), np.asarray(model.kernel[...]).T, np.asarray(model.bias[...])


def train_torch(weight, bias, steps=STEPS):
    import torch

    model = torch.nn.Linear(1, 1)
    with torch.no_grad():
        model.weight.copy_(torch.from_numpy(weight))
        model.bias.copy_(torch.from_numpy(bias))
    optimizer = torch.optim.Adam(model.parameters(), lr=LR)
    x, y = torch.from_numpy(X), torch.from_numpy(Y)
    losses = []
    for _ in range(steps):
        loss = torch.nn.functional.mse_loss(model(x), y)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    return np.array(losses), model.weight.detach().numpy(), model.bias.detach().numpy()


def main():
    rng = np.random.default_rng(0)
    weight = rng.uniform(-1, 1, (1, 1)).astype(np.float32)
    bias = rng.uniform(-1, 1, (1,)).astype(np.float32)
    losses, w, b = train_jax(weight, bias)
    print(f"flax.nnx + ju.adam: loss {losses[0]:.6f} -> {losses[-1]:.6f} after {STEPS} steps")
    print(f"  weight {w.ravel().tolist()}  bias {b.tolist()}")
    try:
        import torch  # noqa: F401
    except ImportError:
        print("(torch is not installed: skipping the comparison)")
        return 0
    t_losses, tw, tb = train_torch(weight, bias)
    print(f"torch.optim.Adam:   loss {t_losses[0]:.6f} -> {t_losses[-1]:.6f}")
    print(f"  weight {tw.ravel().tolist()}  bias {tb.tolist()}")
    loss_diff = float(np.max(np.abs(losses - t_losses) / np.maximum(np.abs(t_losses), 1e-12)))
    param_diff = float(max(np.max(np.abs(w - tw)), np.max(np.abs(b - tb))))
    print(f"largest relative loss difference over {STEPS} steps: {loss_diff:.2e}")
    print(f"largest parameter difference: {param_diff:.2e}")
    return 0 if param_diff < 1e-5 else 1


if __name__ == "__main__":
    jax.config.update("jax_platforms", "cpu")
    raise SystemExit(main())

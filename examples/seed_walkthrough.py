"""The classic one-step PyTorch example, written the JAX way with jaxupdate.

The PyTorch original it reproduces::

    model = nn.Linear(1, 1)
    criterion = nn.MSELoss()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    x = torch.tensor([[1.0], [2.0], [3.0]]); y = torch.tensor([[2.0], [4.0], [6.0]])
    outputs = model(x)                 # 1. forward
    loss = criterion(outputs, y)       # 2. loss
    loss.backward()                    # 3. backward: gradients accumulate into .grad
    optimizer.step()                   # 4. update
    optimizer.zero_grad()              # 5. reset .grad for the next step
    for name, param in model.named_parameters():
        print(f"Updated Parameter: {name}, {param.data}")

Run: ``python examples/seed_walkthrough.py`` (or ``make demo``). When torch is installed the
torch original runs too, from the same initial weights, and both are printed side by side.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

import jaxupdate as ju

LR = 0.01
X = np.array([[1.0], [2.0], [3.0]], dtype=np.float32)
Y = np.array([[2.0], [4.0], [6.0]], dtype=np.float32)


def initial_weights(seed: int = 0):
    """nn.Linear(1, 1)'s default init: U(-1/sqrt(fan_in), 1/sqrt(fan_in)) = U(-1, 1)."""
    rng = np.random.default_rng(seed)
    return {
        "weight": rng.uniform(-1.0, 1.0, size=(1, 1)).astype(np.float32),
        "bias": rng.uniform(-1.0, 1.0, size=(1,)).astype(np.float32),
    }


def forward(params, x):
    """nn.Linear: x @ W.T + b (torch stores the weight as (out_features, in_features))."""
    return x @ params["weight"].T + params["bias"]


def mse_loss(params, x, y):
    """nn.MSELoss() with its default reduction='mean'."""
    return jnp.mean((forward(params, x) - y) ** 2)


def jax_step(weights):
    params = jax.tree.map(jnp.asarray, weights)
    tx = ju.sgd(lr=LR)                                    # optim.SGD(model.parameters(), lr=0.01)
    opt_state = tx.init(params)

    # 1. forward and 2. loss: a pure function of the parameters, no hidden graph.
    # 3. backward: jax.grad returns the gradients as a fresh pytree, nothing is stored in params.
    loss, grads = jax.value_and_grad(mse_loss)(params, X, Y)
    # 4. update: the optimizer turns gradients into updates; params are immutable values.
    updates, opt_state = tx.update(grads, opt_state, params)
    params = ju.apply_updates(params, updates)
    # 5. zero_grad disappears: the next jax.grad call returns new gradients instead of adding
    #    to old ones, so there is nothing to reset.
    return float(loss), params, grads


def torch_step(weights):
    """The torch original, from the same initial weights; None when torch is not installed."""
    try:
        import torch
    except ImportError:
        return None
    model = torch.nn.Linear(1, 1)
    with torch.no_grad():
        model.weight.copy_(torch.from_numpy(weights["weight"]))
        model.bias.copy_(torch.from_numpy(weights["bias"]))
    criterion = torch.nn.MSELoss()
    optimizer = torch.optim.SGD(model.parameters(), lr=LR)
    outputs = model(torch.from_numpy(X))
    loss = criterion(outputs, torch.from_numpy(Y))
    loss.backward()
    optimizer.step()
    optimizer.zero_grad()
    return loss.item(), {n: p.detach().numpy().copy() for n, p in model.named_parameters()}


def main():
    weights = initial_weights()
    print("Initial parameters:", {k: v.tolist() for k, v in weights.items()})
    loss, params, grads = jax_step(weights)
    print("\njaxupdate (JAX):")
    print(f"  1-2. forward + MSE loss      = {loss:.6f}")
    shown = {k: np.asarray(v).tolist() for k, v in grads.items()}
    print(f"  3.   jax.grad                = {shown}")
    print("  4.   tx.update + apply_updates")
    print("  5.   (no zero_grad: gradients are fresh values)")
    for name in ("weight", "bias"):
        print(f"Updated Parameter: {name}, {np.asarray(params[name]).tolist()}")

    ref = torch_step(weights)
    if ref is None:
        print("\n(torch is not installed: skipping the side-by-side comparison)")
        return 0
    t_loss, t_params = ref
    print("\ntorch.optim (PyTorch original), same initial weights:")
    print(f"  loss = {t_loss:.6f}")
    for name in ("weight", "bias"):
        print(f"Updated Parameter: {name}, {t_params[name].tolist()}")
    print("\nSide by side:")
    worst = 0.0
    for name in ("weight", "bias"):
        j, t = np.asarray(params[name]), t_params[name]
        diff = float(np.max(np.abs(j - t)))
        worst = max(worst, diff)
        print(
            f"  {name:6s} jaxupdate={j.ravel().tolist()}  torch={t.ravel().tolist()}"
            f"  |diff|={diff:.2e}"
        )
    print(f"  loss   jaxupdate={loss:.8f}  torch={t_loss:.8f}  |diff|={abs(loss - t_loss):.2e}")
    print(f"Largest parameter difference: {worst:.2e}")
    return 0 if worst <= 1e-6 else 1


if __name__ == "__main__":
    raise SystemExit(main())

"""Optimizer configurations and trajectories shared by the fused-step tests."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

import jaxupdate as ju
from jaxupdate.fused import unflatten_state

# every fused optimizer and option (torch's names)
CASES = [
    ("adam", {}),
    ("adam", {"amsgrad": True}),
    ("adam", {"weight_decay": 0.1, "maximize": True}),
    ("adam", {"weight_decay": 0.1, "decoupled_weight_decay": True, "amsgrad": True}),
    ("adam", {"betas": (0.3, 0.9), "eps": 1e-3}),  # 1 - beta1 >= 0.5: lerp's other formula
    ("adamw", {}),
    ("adamw", {"amsgrad": True, "maximize": True, "weight_decay": 0.3}),
    ("sgd", {"lr": 0.1}),
    ("sgd", {"lr": 0.1, "momentum": 0.9}),
    ("sgd", {"lr": 0.1, "momentum": 0.9, "dampening": 0.2, "weight_decay": 0.01}),
    ("sgd", {"lr": 0.1, "momentum": 0.9, "nesterov": True, "maximize": True}),
    ("adagrad", {}),
    ("adagrad", {"lr_decay": 0.1, "weight_decay": 0.05, "initial_accumulator_value": 0.2}),
    ("adagrad", {"maximize": True, "eps": 1e-3}),
    ("rmsprop", {}),
    ("rmsprop", {"centered": True}),
    ("rmsprop", {"momentum": 0.9}),
    ("rmsprop", {"centered": True, "momentum": 0.9, "weight_decay": 0.1, "maximize": True}),
    ("rmsprop", {"alpha": 0.3}),  # 1 - alpha >= 0.5: lerp's other formula
]

# many leaves: odd lengths, 0-d, empty, 2-D; one realistic size (not a multiple of 16)
SHAPES = [(10_007,), (), (0,), (3, 0), (7, 13), (1,), (513,), (2, 3, 5)] + [(17,)] * 6


def case_id(case):
    name, kw = case
    return name + "-" + "-".join(f"{k}={v}" for k, v in kw.items())


def make(name, kw, fused):
    return getattr(ju, name)(**kw, fused=fused)


def problem(dtype, steps=6, seed=0, shapes=SHAPES):
    rng = np.random.default_rng(seed)
    params = {f"p{i}": rng.standard_normal(s).astype(dtype) for i, s in enumerate(shapes)}
    grads = [
        {k: rng.standard_normal(v.shape).astype(dtype) for k, v in params.items()}
        for _ in range(steps)
    ]
    return params, grads


def unfused_trajectory(tx, params, grads):
    """The XLA path: jitted tx.update + apply_updates, every step's params and state."""

    @jax.jit
    def one(p, g, s):
        u, s = tx.update(g, s, p)
        return ju.apply_updates(p, u), s

    p = jax.tree.map(jnp.asarray, params)
    s = tx.init(p)
    out = []
    for g in grads:
        p, s = one(p, g, s)
        out.append((p, s))
    return out


def fused_trajectory(tx, params, grads, jax_grads=True):
    """ju.step called eagerly (compiled once, params and state donated). ``jax_grads=False``
    passes the numpy gradients as they are (ju.step's general eager route; jax arrays take the
    route with the cached plan)."""
    p = jax.tree.map(jnp.asarray, params)
    s = tx.init(p)
    out = []
    for g in grads:
        p, s = ju.step(tx, p, jax.tree.map(jnp.asarray, g) if jax_grads else g, s)
        # a fused optimizer's flat state, compared per leaf (the values fused=False holds)
        out.append(jax.tree.map(np.asarray, (p, unflatten_state(s))))
    return out

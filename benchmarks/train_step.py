"""A whole training step: the walk-through's model scaled up, jaxupdate under ``jax.jit`` vs torch.

``examples/seed_walkthrough.py`` trains ``nn.Linear(1, 1)`` with ``nn.MSELoss`` and SGD. Here the
same loop (forward, MSE loss, backward, optimizer step) runs on an MLP ``d_in -> width x depth
(ReLU) -> 1`` on synthetic regression data, with torch's ``nn.Linear`` initialisation shared by
both sides:

- ``jaxupdate (jax.jit)``: one jitted function doing ``value_and_grad`` + ``tx.update`` +
  ``apply_updates``, params and optimizer state donated;
- ``torch eager``: ``zero_grad(); loss = mse(model(x), y); loss.backward(); opt.step()`` with the
  optimizer's default implementation (foreach on CPU);
- ``torch eager, fused``: the same with ``fused=True``.

The contenders are timed interleaved (each round: every contender in shuffled order, one untimed
hand-over step then one timed step, as in :func:`benchmarks.update_step.time_interleaved`) over
the same sequence of batches; steps per second come from the median step time. Each contender's
loss after the last step is recorded: the jax and torch trajectories start from the same weights
and see the same batches, so the losses agree up to float32 rounding (matmul summation order
differs; Adam's division by sqrt(v) amplifies it for near-zero gradients: ~1e-3 relative after
20 steps of the default model).

Run alone: ``python -m benchmarks.train_step [--width 1024 --depth 4 --batch 256]``.
"""

from __future__ import annotations

import argparse
import gc
import json
import time

import numpy as np

OPTIMIZERS = {
    # name: (torch class, kwargs) -- SGD with the walk-through's lr; Adam with torch's defaults
    "sgd": ("SGD", {"lr": 0.01}),
    "adam": ("Adam", {"lr": 1e-3}),
}


def layer_sizes(d_in: int, width: int, depth: int) -> list[tuple[int, int]]:
    dims = [d_in] + [width] * depth + [1]
    return list(zip(dims[:-1], dims[1:]))


def init_weights(d_in: int, width: int, depth: int, seed: int = 0) -> dict[str, np.ndarray]:
    """nn.Linear's default init: weight and bias ~ U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
    rng = np.random.default_rng(seed)
    out = {}
    for i, (fan_in, fan_out) in enumerate(layer_sizes(d_in, width, depth)):
        bound = 1.0 / np.sqrt(fan_in)
        out[f"{2 * i}.weight"] = rng.uniform(-bound, bound, (fan_out, fan_in)).astype(np.float32)
        out[f"{2 * i}.bias"] = rng.uniform(-bound, bound, (fan_out,)).astype(np.float32)
    return out


def synthetic_batches(d_in: int, batch: int, n_batches: int = 4, seed: int = 1):
    """A smooth nonlinear target plus noise: y = sin(x @ a) + 0.1 * noise."""
    rng = np.random.default_rng(seed)
    a = rng.standard_normal((d_in, 1)).astype(np.float32) / np.sqrt(d_in)
    out = []
    for _ in range(n_batches):
        x = rng.standard_normal((batch, d_in)).astype(np.float32)
        y = (np.sin(x @ a) + 0.1 * rng.standard_normal((batch, 1))).astype(np.float32)
        out.append((x, y))
    return out


def _jax_contender(weights, batches, opt_name):
    import jax
    import jax.numpy as jnp

    import jaxupdate as ju

    cls, kwargs = OPTIMIZERS[opt_name]
    tx = getattr(ju, cls.lower())(**kwargs)
    n_layers = len(weights) // 2

    def forward(params, x):
        for i in range(n_layers):
            x = x @ params[f"{2 * i}.weight"].T + params[f"{2 * i}.bias"]
            if i < n_layers - 1:
                x = jax.nn.relu(x)
        return x

    def loss_fn(params, x, y):
        return jnp.mean((forward(params, x) - y) ** 2)  # nn.MSELoss(), reduction='mean'

    def train_step(params, state, x, y):
        loss, grads = jax.value_and_grad(loss_fn)(params, x, y)
        updates, state = tx.update(grads, state, params)
        return ju.apply_updates(params, updates), state, loss

    step = jax.jit(train_step, donate_argnums=(0, 1))
    params = {k: jnp.asarray(v) for k, v in weights.items()}
    data = [(jnp.asarray(x), jnp.asarray(y)) for x, y in batches]
    box = {"params": params, "state": tx.init(params), "i": 0, "loss": None}

    def run():
        x, y = data[box["i"] % len(data)]
        box["params"], box["state"], loss = step(box["params"], box["state"], x, y)
        loss.block_until_ready()
        box["loss"], box["i"] = loss, box["i"] + 1

    return run, lambda: float(box["loss"])


def _torch_contender(weights, batches, opt_name, fused):
    import torch

    cls, kwargs = OPTIMIZERS[opt_name]
    n_layers = len(weights) // 2
    layers = []
    for i in range(n_layers):
        w = weights[f"{2 * i}.weight"]
        lin = torch.nn.Linear(w.shape[1], w.shape[0])
        with torch.no_grad():
            lin.weight.copy_(torch.from_numpy(w))
            lin.bias.copy_(torch.from_numpy(weights[f"{2 * i}.bias"]))
        layers.append(lin)
        if i < n_layers - 1:
            layers.append(torch.nn.ReLU())
    model = torch.nn.Sequential(*layers)
    criterion = torch.nn.MSELoss()
    flags = {"fused": True} if fused else {}
    optimizer = getattr(torch.optim, cls)(model.parameters(), **kwargs, **flags)
    data = [(torch.from_numpy(x), torch.from_numpy(y)) for x, y in batches]
    box = {"i": 0, "loss": None}

    def run():
        x, y = data[box["i"] % len(data)]
        optimizer.zero_grad()
        loss = criterion(model(x), y)
        loss.backward()
        optimizer.step()
        box["loss"], box["i"] = loss.detach(), box["i"] + 1

    return run, lambda: float(box["loss"])


class _Named:
    def __init__(self, name, run):
        self.name, self.run = name, run


def run_train_step(width=1024, depth=4, batch=256, d_in=128, rounds=15, warmup=2,
                   optimizers=("sgd", "adam"), progress=None, settle=1) -> dict:
    from benchmarks.update_step import time_interleaved

    weights = init_weights(d_in, width, depth)
    batches = synthetic_batches(d_in, batch)
    n_params = int(sum(v.size for v in weights.values()))
    result = {
        "model": f"MLP {d_in} -> {width} x {depth} (ReLU) -> 1, MSE loss",
        "d_in": d_in, "width": width, "depth": depth, "batch": batch,
        "params": n_params, "leaves": len(weights), "rounds": rounds, "warmup": warmup,
        "settle": settle,
        "results": [],
    }
    for opt_name in optimizers:
        contenders = {}
        first = {}
        builders = {
            "jaxupdate (jax.jit)": lambda o=opt_name: _jax_contender(weights, batches, o),
            "torch eager": lambda o=opt_name: _torch_contender(weights, batches, o, fused=False),
            "torch eager, fused": lambda o=opt_name: _torch_contender(weights, batches, o,
                                                                      fused=True),
        }
        unavailable = {}
        for name, build in builders.items():
            try:
                run, loss = build()
                t0 = time.perf_counter()
                run()
                first[name] = time.perf_counter() - t0
                contenders[name] = (run, loss)
            except (ImportError, RuntimeError, TypeError, ValueError) as e:
                unavailable[name] = f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"
        runs = [_Named(name, run) for name, (run, _) in contenders.items()]
        samples = time_interleaved(runs, rounds, warmup, settle)
        entry = {"optimizer": opt_name, "torch_class": OPTIMIZERS[opt_name][0],
                 "kwargs": OPTIMIZERS[opt_name][1], "contenders": {}, "unavailable": unavailable}
        for name, times in samples.items():
            med = float(np.median(times))
            entry["contenders"][name] = {
                "median_s": med,
                "min_s": min(times),
                "steps_per_s": 1.0 / med,
                "first_call_s": first[name],
                "final_loss": contenders[name][1](),
                "steps_run": 1 + warmup + rounds * (1 + settle),
            }
        c = entry["contenders"]
        if "jaxupdate (jax.jit)" in c:
            ju = c["jaxupdate (jax.jit)"]
            for other in ("torch eager", "torch eager, fused"):
                if other in c:
                    entry[f"speedup vs {other}"] = ju["steps_per_s"] / c[other]["steps_per_s"]
            if "torch eager" in c:
                a, b = ju["final_loss"], c["torch eager"]["final_loss"]
                entry["final_loss_rel_diff"] = abs(a - b) / max(abs(b), 1e-30)
        result["results"].append(entry)
        del contenders
        gc.collect()
        if progress is not None:
            progress.advance(1.0, f"train step {opt_name}")
    return result


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--width", type=int, default=1024)
    ap.add_argument("--depth", type=int, default=4)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--d-in", type=int, default=128)
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--optimizers", nargs="+", default=["sgd", "adam"], choices=list(OPTIMIZERS))
    args = ap.parse_args(argv)
    res = run_train_step(args.width, args.depth, args.batch, args.d_in, args.rounds,
                         optimizers=args.optimizers)
    print(json.dumps(res, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Update-step time: jaxupdate (jitted, donated) vs optax vs torch (foreach / fused), side by side.

Runs are interleaved (one timing of each contender per round) and medians are reported, as
ratios measured in one process. Usage::

    python -m benchmarks [--size 1000000] [--leaves 10 100] [--rounds 15] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

import jaxupdate as ju

CASES = {
    "adam": (lambda: ju.adam(lr=1e-3), lambda: optax.adam(1e-3), "Adam", {}),
    "adamw": (lambda: ju.adamw(lr=1e-3), lambda: optax.adamw(1e-3, weight_decay=1e-2), "AdamW", {}),
    "sgd_momentum": (
        lambda: ju.sgd(lr=1e-3, momentum=0.9),
        lambda: optax.sgd(1e-3, momentum=0.9),
        "SGD",
        {"momentum": 0.9},
    ),
    "rmsprop": (
        lambda: ju.rmsprop(lr=1e-3),
        lambda: optax.rmsprop(1e-3, decay=0.99, eps=1e-8, eps_in_sqrt=False),
        "RMSprop",
        {},
    ),
}


def _shapes(size, leaves):
    per = max(1, size // leaves)
    return [(per,)] * leaves


def _jax_step(tx, shapes):
    params = [jnp.ones(s, jnp.float32) for s in shapes]
    grads = [jnp.full(s, 1e-3, jnp.float32) for s in shapes]
    state = tx.init(params)

    def step(params, state, grads):
        updates, state = tx.update(grads, state, params)
        return optax.apply_updates(params, updates), state

    step = jax.jit(step, donate_argnums=(0, 1))
    box = [params, state]

    def run():
        box[0], box[1] = step(box[0], box[1], grads)
        jax.block_until_ready(box[0])

    t0 = time.perf_counter()
    run()
    return run, time.perf_counter() - t0


def _torch_step(cls_name, kwargs, shapes, impl):
    import torch

    params = [torch.ones(s, requires_grad=True) for s in shapes]
    for p in params:
        p.grad = torch.full(p.shape, 1e-3)
    flags = {"foreach": {"foreach": True}, "fused": {"fused": True}, "single": {"foreach": False}}
    opt = getattr(torch.optim, cls_name)(params, lr=1e-3, **kwargs, **flags[impl])
    return opt.step


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--size", type=int, default=1_000_000)
    ap.add_argument("--leaves", type=int, nargs="+", default=[10, 100])
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--optimizers", nargs="+", default=list(CASES))
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)

    rows = []
    for name in args.optimizers:
        ju_fn, optax_fn, torch_cls, torch_kw = CASES[name]
        for leaves in args.leaves:
            shapes = _shapes(args.size, leaves)
            contenders = {}
            contenders["jaxupdate"], ju_first = _jax_step(ju_fn(), shapes)
            contenders["optax"], _ = _jax_step(optax_fn(), shapes)
            for impl in ("foreach", "fused"):
                try:
                    contenders[f"torch-{impl}"] = _torch_step(torch_cls, torch_kw, shapes, impl)
                    contenders[f"torch-{impl}"]()
                except (ImportError, RuntimeError, TypeError):
                    pass
            times = {k: [] for k in contenders}
            for _ in range(args.rounds):  # interleaved: one run of each contender per round
                for k, fn in contenders.items():
                    t0 = time.perf_counter()
                    fn()
                    times[k].append(time.perf_counter() - t0)
            med = {k: statistics.median(v) for k, v in times.items()}
            rows.append({"optimizer": name, "size": args.size, "leaves": leaves,
                         "first_call_s": ju_first, "median_s": med})

    print(f"machine: {platform.machine()} {platform.processor() or ''} cpus={jax.device_count()} "
          f"backend={jax.default_backend()} numpy={np.__version__} jax={jax.__version__}")
    names = sorted({k for r in rows for k in r["median_s"]})
    print("| optimizer | params | leaves | " + " | ".join(f"{n} ms" for n in names) + " |")
    print("|---|---|---|" + "---|" * len(names))
    for r in rows:
        cells = [f"{r['median_s'][n] * 1e3:.2f}" if n in r["median_s"] else "-" for n in names]
        print(f"| {r['optimizer']} | {r['size']:,} | {r['leaves']} | " + " | ".join(cells) + " |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=2)


if __name__ == "__main__":
    main()

"""Experiment: does a flat, contiguous optimizer state make XLA's CPU step faster?

This measures the idea of flattening small leaves of one dtype into contiguous
buffers with the state kept flat. This script times Adam (float32, torch's defaults) written
four ways, all with optax's API (``update`` returns per-leaf updates, ``optax.apply_updates``
adds them), interleaved in one process, medians:

- ``per-leaf``: the leanest per-leaf step (:func:`benchmarks.floor.floor_tx`): 3 kernels per leaf;
- ``flat``: ``m`` and ``v`` kept as one flat buffer each; the gradients are concatenated, the
  moments and the update computed once over the flat buffer, and the update sliced back per leaf;
- ``flat-sliced``: the flat state, but every leaf's moments computed from slices and concatenated
  into the new flat buffers, and each parameter updated from slices of them (no flat gradient
  or update temporary);
- ``stacked-mv``: per leaf, ``m`` and ``v`` stacked in one ``(2, *shape)`` array, so that one
  kernel might write both (XLA adds a copy per leaf instead).

and prints the step time, compile time and kernel count of each. On the 2-core development
machine (jax 0.10.2) all three alternatives lose: ``flat`` materializes a parameter-sized
concatenated gradient and update per step, which the allocator hands out as fresh pages that
fault on every step (run with ``MALLOC_MMAP_THRESHOLD_=4294967296`` it only ties with
``per-leaf``); ``flat-sliced`` makes XLA compile concatenations of thousands of operands (tens
of seconds at 1,000 leaves) that run slower than the per-leaf kernels; ``stacked-mv`` saves a
kernel per leaf but XLA copies the stacked state to update it in place. Run::

    python -m benchmarks.flat_layout --leaves 100 1000 --size 10M
"""

from __future__ import annotations

import argparse
import re
import statistics
import time
from collections import Counter

from benchmarks.cases import CASES, make_shapes, parse_count
from benchmarks.floor import adam_m, adam_update, adam_v

LR = 1e-3


def variants(shapes):
    """``{name: (init, step)}``; ``step(params, state, grads) -> (params, state)``."""
    import jax
    import jax.numpy as jnp
    import numpy as np
    import optax

    from benchmarks.floor import floor_tx

    sizes = [int(np.prod(s)) for s in shapes]
    offs = np.cumsum([0] + sizes).tolist()
    total = offs[-1]

    def piece(flat, i, shape):
        return jax.lax.slice_in_dim(flat, offs[i], offs[i + 1]).reshape(shape)

    tx = floor_tx(CASES["adam"])

    def per_leaf(params, state, grads):
        updates, state = tx.update(grads, state, params)
        return optax.apply_updates(params, updates), state

    def flat_init(params):
        return (jnp.zeros(total, jnp.float32), jnp.zeros(total, jnp.float32),
                jnp.zeros([], jnp.int32))

    def flat(params, state, grads):
        m, v, count = state
        step = (count + 1).astype(jnp.float32)
        flat_g = jnp.concatenate([g.ravel() for g in grads])
        m, v = adam_m(m, flat_g), adam_v(v, flat_g)
        u = adam_update(m, v, step, LR)
        updates = [piece(u, i, p.shape) for i, p in enumerate(params)]
        return optax.apply_updates(params, updates), (m, v, count + 1)

    def flat_sliced(params, state, grads):
        m, v, count = state
        step = (count + 1).astype(jnp.float32)
        m = jnp.concatenate([adam_m(piece(m, i, g.shape), g).ravel()
                             for i, g in enumerate(grads)])
        v = jnp.concatenate([adam_v(piece(v, i, g.shape), g).ravel()
                             for i, g in enumerate(grads)])
        updates = [adam_update(piece(m, i, p.shape), piece(v, i, p.shape), step, LR)
                   for i, p in enumerate(params)]
        return optax.apply_updates(params, updates), (m, v, count + 1)

    def stacked_init(params):
        return ([jnp.zeros((2, *p.shape), jnp.float32) for p in params],
                jnp.zeros([], jnp.int32))

    def stacked(params, state, grads):
        mv, count = state
        step = (count + 1).astype(jnp.float32)
        mv = [jnp.stack([adam_m(a[0], g), adam_v(a[1], g)]) for a, g in zip(mv, grads)]
        updates = [adam_update(a[0], a[1], step, LR) for a in mv]
        return optax.apply_updates(params, updates), (mv, count + 1)

    return {"per-leaf": (tx.init, per_leaf), "stacked-mv": (stacked_init, stacked),
            "flat": (flat_init, flat),
            "flat-sliced": (flat_init, flat_sliced)}


def run(size: int, leaves: int, rounds: int = 11, names=None) -> dict:
    import jax
    import jax.numpy as jnp

    shapes = make_shapes(size, leaves)
    grads = [jnp.full(s, 1e-3, jnp.float32) for s in shapes]
    out, runners = {}, {}
    for name, (init, step) in variants(shapes).items():
        if names and name not in names:
            continue
        params = [jnp.ones(s, jnp.float32) for s in shapes]
        state = init(params)
        t0 = time.perf_counter()
        compiled = jax.jit(step, donate_argnums=(0, 1)).lower(params, state, grads).compile()
        compile_s = time.perf_counter() - t0
        text = compiled.as_text()
        entry = text[text.index("ENTRY"):]
        kinds = Counter(re.findall(r"= \S+\[[0-9,]+\]\S* (fusion|copy|concatenate)\(", entry))
        box = [params, state]

        def one(box=box, compiled=compiled):
            box[0], box[1] = compiled(box[0], box[1], grads)
            jax.block_until_ready(box)

        one()
        runners[name] = one
        out[name] = {"compile_s": compile_s, "array_kernels": dict(kinds), "samples_s": []}
    for _ in range(rounds):
        for name, one in runners.items():
            one()  # settle after the previous contender
            t0 = time.perf_counter()
            one()
            out[name]["samples_s"].append(time.perf_counter() - t0)
    for entry in out.values():
        entry["median_s"] = statistics.median(entry["samples_s"])
    return out


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", default="10M")
    ap.add_argument("--leaves", type=int, nargs="+", default=[100, 1000])
    ap.add_argument("--rounds", type=int, default=11)
    ap.add_argument("--variants", nargs="+",
                    choices=["per-leaf", "stacked-mv", "flat", "flat-sliced"])
    args = ap.parse_args(argv)
    size = parse_count(args.size)
    print("| leaves | layout | step ms | compile s | array kernels |")
    print("|---|---|---|---|---|")
    for leaves in args.leaves:
        for name, r in run(size, leaves, args.rounds, args.variants).items():
            kernels = ", ".join(f"{k} {v}" for k, v in sorted(r["array_kernels"].items()))
            print(f"| {leaves} | {name} | {r['median_s'] * 1e3:.2f} | {r['compile_s']:.2f} | "
                  f"{kernels} |", flush=True)


if __name__ == "__main__":
    main()

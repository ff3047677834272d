"""First call of a jitted update step, split into tracing, lowering and XLA compilation.

For each leaf count and JAX contender (``jaxupdate``, ``optax``, ``xla-floor``; Adam by
default) this times ``jax.jit(step).trace``, ``.lower()`` and ``.compile()`` on abstract
parameters (nothing allocated), each in a fresh subprocess so that no cache of an earlier
measurement helps. ``--cache`` also times a whole first call (arrays, compile, one step) twice
in two processes sharing a new persistent compilation cache directory: the second is what a
restarted run pays with ``jax.config.update("jax_compilation_cache_dir", path)``. Run::

    python -m benchmarks.first_call --leaves 500 1000 2000 --cache
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def measure(optimizer: str, contender: str, leaves: int, size: int) -> dict:
    """Seconds of trace / lower / compile of the donated jitted step, in this process."""
    import jax
    import jax.numpy as jnp

    from benchmarks.cases import CASES, make_shapes, step_fn

    tx = CASES[optimizer].jax_contender(contender)
    params = [jax.ShapeDtypeStruct(s, jnp.float32) for s in make_shapes(size, leaves)]
    state = jax.eval_shape(tx.init, params)
    step = step_fn(contender, tx)

    t0 = time.perf_counter()
    traced = jax.jit(step, donate_argnums=(0, 1)).trace(params, state, params)
    t1 = time.perf_counter()
    lowered = traced.lower()
    t2 = time.perf_counter()
    lowered.compile()
    t3 = time.perf_counter()
    return {"optimizer": optimizer, "contender": contender, "leaves": leaves, "size": size,
            "trace_s": t1 - t0, "lower_s": t2 - t1, "compile_s": t3 - t2}


def whole_first_call(optimizer: str, leaves: int, size: int, cache_dir: str,
                     contender: str = "jaxupdate") -> dict:
    """A contender's whole first call (trace, compile or cache load, one step), and the peak
    resident memory of the process (arrays included) after it. ``cache_dir=""``: no cache."""
    import resource

    import jax

    if cache_dir:
        jax.config.update("jax_compilation_cache_dir", cache_dir)
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    import jax.numpy as jnp

    from benchmarks.cases import CASES, compiled_step, make_shapes

    tx = CASES[optimizer].jax_contender(contender)
    t_numba = time.perf_counter()
    if contender == "jaxupdate-fused":
        # importing numba and loading the kernels from numba's on-disk cache (compiled once
        # per install): reported apart, as jax's own import is
        from jaxupdate.fused import _kernels

        assert _kernels.handler.address
    t_numba = time.perf_counter() - t_numba
    shapes = make_shapes(size, leaves)
    params = [jnp.ones(s, jnp.float32) for s in shapes]
    grads = [jnp.full(s, 1e-3, jnp.float32) for s in shapes]
    state = tx.init(params)
    jax.block_until_ready((params, state))
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024

    t0 = time.perf_counter()
    params, state = compiled_step(contender, tx)(params, state, grads)
    jax.block_until_ready(params)
    t = time.perf_counter() - t0
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {"optimizer": optimizer, "leaves": leaves, "contender": contender,
            "first_call_s": t, "numba_load_s": t_numba, "peak_rss_gb": rss / 1e9,
            "rss_growth_gb": (rss - rss0) / 1e9}


def _child(args: list[str]) -> dict:
    out = subprocess.run([sys.executable, "-m", "benchmarks.first_call", "--child", *args],
                         cwd=ROOT, capture_output=True, text=True, timeout=3600)
    lines = [ln for ln in out.stdout.splitlines() if ln.startswith("{")]
    if out.returncode or not lines:
        tail = (out.stderr or out.stdout).strip().splitlines()[-1:] or ["no output"]
        return {"error": f"exit {out.returncode}: {tail[0][:300]}"}
    return json.loads(lines[-1])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--optimizer", default="adam")
    ap.add_argument("--leaves", type=int, nargs="+", default=[100, 1000])
    ap.add_argument("--size", default="10M")
    ap.add_argument("--contenders", nargs="+", default=["jaxupdate", "optax", "xla-floor"])
    ap.add_argument("--cache", action="store_true",
                    help="also time jaxupdate's first call with a persistent cache, twice")
    ap.add_argument("--whole", action="store_true",
                    help="only time each contender's whole first call (arrays allocated, "
                         "trace + compile + one step) and its peak memory, no cache")
    ap.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)

    from benchmarks.cases import parse_count

    if args.child:
        kind, opt, leaves, size, extra, *contender = args.child
        if kind == "split":
            row = measure(opt, extra, int(leaves), int(size))
        else:
            row = whole_first_call(opt, int(leaves), int(size), extra, *contender)
        print(json.dumps(row))
        return 0
    size = parse_count(args.size)
    if args.whole:
        print("| leaves | contender | first call s | numba load s | peak RSS GB | "
              "RSS growth in the call GB |")
        print("|---|---|---|---|---|---|")
        for leaves in args.leaves:
            for c in args.contenders:
                r = _child(["whole", args.optimizer, str(leaves), str(size), "", c])
                if "error" in r:
                    print(f"| {leaves} | {c} | {r['error']} | | | |", flush=True)
                    continue
                print(f"| {leaves} | {c} | {r['first_call_s']:.2f} | {r['numba_load_s']:.2f} | "
                      f"{r['peak_rss_gb']:.2f} | {r['rss_growth_gb']:.2f} |", flush=True)
        return 0
    print("| leaves | contender | trace s | lower s | compile s |")
    print("|---|---|---|---|---|")
    for leaves in args.leaves:
        for c in args.contenders:
            r = _child(["split", args.optimizer, str(leaves), str(size), c])
            if "error" in r:
                print(f"| {leaves} | {c} | {r['error']} | | |", flush=True)
                continue
            print(f"| {leaves} | {c} | {r['trace_s']:.2f} | {r['lower_s']:.2f} | "
                  f"{r['compile_s']:.2f} |", flush=True)
    if args.cache:
        print("\n| leaves | jaxupdate first call, s: cold | restarted, persistent cache |")
        print("|---|---|---|")
        for leaves in args.leaves:
            with tempfile.TemporaryDirectory() as d:
                runs = [_child(["whole", args.optimizer, str(leaves), str(size), d])
                        for _ in range(2)]
            cells = [r.get("error") or f"{r['first_call_s']:.2f}" for r in runs]
            print(f"| {leaves} | {cells[0]} | {cells[1]} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

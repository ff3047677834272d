"""Peak memory of an update step, one contender per fresh subprocess.

Method (Linux): the child imports its library, compiles or warms up everything it will run (jax:
ahead-of-time ``lower().compile()`` of the parameter/gradient constructors, ``tx.init`` and the
donated step; torch: two steps of a 2-parameter optimizer of the same class and implementation),
then releases freed heap to the OS (``malloc_trim``) and resets the kernel's peak-RSS counter
(``echo 5 > /proc/self/clear_refs``, which also resets ``getrusage().ru_maxrss``). It records the
resident set size at that point, allocates parameters and gradients, creates the optimizer state,
runs ``steps`` update steps and reads the peak (``VmHWM``). ``peak_extra_bytes`` = peak - baseline
is the memory the step needs, compared with ``params + grads + state`` (float32) in ``ratio``.
Where the peak counter cannot be reset, the baseline is taken after the imports and the peak
includes compilation (``peak_reset: false``). For jax contenders the compiled step's own
``memory_analysis()`` (argument, output, alias and temporary bytes) is recorded too.

Run one child by hand::

    python -m benchmarks.memory --optimizer adam --contender jaxupdate --size 10M --leaves 100
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
import subprocess
import sys
from pathlib import Path

from benchmarks.cases import CASES, make_shapes, num_params, parse_count

ROOT = Path(__file__).resolve().parent.parent


def _status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def _reset_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _trim() -> None:
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _measure_jax(case, contender, shapes, steps):
    import jax
    import jax.numpy as jnp
    import optax

    tx = case.jax_contender(contender)
    avals = [jax.ShapeDtypeStruct(s, jnp.float32) for s in shapes]
    state_avals = jax.eval_shape(tx.init, avals)

    def step(params, state, grads):
        updates, state = tx.update(grads, state, params)
        return optax.apply_updates(params, updates), state

    def make():
        return ([jnp.ones(s, jnp.float32) for s in shapes],
                [jnp.full(s, 1e-3, jnp.float32) for s in shapes])

    step_c = jax.jit(step, donate_argnums=(0, 1)).lower(avals, state_avals, avals).compile()
    make_c = jax.jit(make).lower().compile()
    init_c = jax.jit(tx.init).lower(avals).compile()
    ma = step_c.memory_analysis()
    xla = None
    if ma is not None:
        xla = {k: int(getattr(ma, k)) for k in (
            "argument_size_in_bytes", "output_size_in_bytes", "alias_size_in_bytes",
            "temp_size_in_bytes", "generated_code_size_in_bytes") if hasattr(ma, k)}
        xla["step_peak_estimate_bytes"] = (xla["argument_size_in_bytes"]
                                           + xla["output_size_in_bytes"]
                                           - xla["alias_size_in_bytes"]
                                           + xla["temp_size_in_bytes"])
    jax.jit(lambda x: x + 1)(jnp.ones(8)).block_until_ready()  # start the runtime's threads

    def run():
        params, grads = make_c()
        state = init_c(params)
        for _ in range(steps):
            params, state = step_c(params, state, grads)
        params[-1].block_until_ready()
        return params, state, grads

    return run, xla


def _measure_torch(case, contender, shapes, steps):
    import torch

    impl = contender.rsplit("-", 1)[1]
    flags = {"single": {"foreach": False}, "foreach": {"foreach": True}, "fused": {"fused": True}}
    device = "cuda" if "cuda" in contender else "cpu"
    cls = getattr(torch.optim, case.label)

    def build(shapes_):
        params = [torch.ones(s, device=device, requires_grad=True) for s in shapes_]
        for p in params:
            p.grad = torch.full(p.shape, 1e-3, device=device)
        return params, cls(params, **case.torch_kwargs, **flags[impl])

    warm_params, warm_opt = build([(4, 4), (4,)])  # loads the kernels and their libraries
    for _ in range(2):
        warm_opt.step()
    del warm_params, warm_opt

    def run():
        params, opt = build(shapes)
        for _ in range(steps):
            opt.step()
        if device == "cuda":
            torch.cuda.synchronize()
        return params, opt

    return run, None


def measure(optimizer: str, contender: str, size: int, leaves: int, steps: int = 3) -> dict:
    """Run in a fresh process: the peak memory of ``steps`` update steps (see the module doc)."""
    case = CASES[optimizer]
    shapes = make_shapes(size, leaves)
    n = num_params(shapes)
    if contender in ("jaxupdate", "optax", "xla-floor"):
        run, xla = _measure_jax(case, contender, shapes, steps)
    else:
        run, xla = _measure_torch(case, contender, shapes, steps)
    _trim()
    reset = _reset_peak()
    base_kb = _status_kb("VmRSS")
    keep = run()
    peak_kb = _status_kb("VmHWM")
    del keep
    expected = 4 * n * (2 + case.state_arrays)
    extra = (peak_kb - base_kb) * 1024
    return {
        "optimizer": optimizer,
        "contender": contender,
        "size": size,
        "params": n,
        "leaves": len(shapes),
        "steps": steps,
        "peak_reset": reset,
        "baseline_rss_bytes": base_kb * 1024,
        "peak_rss_bytes": peak_kb * 1024,
        "peak_extra_bytes": extra,
        "params_grads_state_bytes": expected,
        "ratio": extra / expected,
        "xla_memory_analysis": xla,
    }


def run_in_subprocess(optimizer: str, contender: str, size: int, leaves: int, steps: int = 3,
                      timeout: float = 1800) -> dict:
    cmd = [sys.executable, "-m", "benchmarks.memory", "--optimizer", optimizer,
           "--contender", contender, "--size", str(size), "--leaves", str(leaves),
           "--steps", str(steps)]
    try:
        out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"optimizer": optimizer, "contender": contender, "size": size, "leaves": leaves,
                "error": f"timed out after {timeout:.0f} s"}
    lines = [ln for ln in out.stdout.splitlines() if ln.startswith("{")]
    if out.returncode != 0 or not lines:
        tail = (out.stderr or out.stdout).strip().splitlines()[-1:] or ["no output"]
        return {"optimizer": optimizer, "contender": contender, "size": size, "leaves": leaves,
                "error": f"exit {out.returncode}: {tail[0][:300]}"}
    return json.loads(lines[-1])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--optimizer", required=True, choices=sorted(CASES))
    ap.add_argument("--contender", required=True)
    ap.add_argument("--size", type=parse_count, required=True)
    ap.add_argument("--leaves", type=int, required=True)
    ap.add_argument("--steps", type=int, default=3)
    args = ap.parse_args(argv)
    result = measure(args.optimizer, args.contender, args.size, args.leaves, args.steps)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

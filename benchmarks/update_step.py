"""Update-step time of one optimizer over a list of float32 parameters, side by side.

Contenders (each with its own parameters and state; gradients are shared read-only):

- ``jaxupdate``: ``jax.jit`` of ``tx.update`` + ``apply_updates`` with params and state donated,
  exactly what a user writes; no special API.
- ``optax``: the same jitted step with optax's nearest optimizer (see :mod:`benchmarks.cases`).
- ``xla-floor``: the same jitted step with the leanest hand-written version of the algorithm
  (:mod:`benchmarks.floor`): what XLA itself costs, without any library around it.
- ``torch-single`` / ``torch-foreach`` / ``torch-fused``: ``torch.optim.<X>(foreach=False)``,
  ``(foreach=True)``, ``(fused=True)`` on CPU; ``torch-cuda-foreach`` / ``torch-cuda-fused`` when
  ``torch.cuda.is_available()``.

All contenders of one configuration live in one process and are timed interleaved: each round
visits every contender once, in a shuffled order, making one untimed call (the hand-over from the
previous library, see :func:`time_interleaved`) and then one timed call; the median over the
rounds is reported. A contender's time is one ``step`` until its results are ready
(``block_until_ready`` / ``cuda.synchronize``).

The roofline of a step is ``bytes_per_param * params / bandwidth`` with the bandwidth of an in-place
pass, ``x.mul_(c)`` over ``bandwidth_floats`` float32 (8 bytes moved per element), measured by torch
on the contender's device.
"""

from __future__ import annotations

import gc
import statistics
import time
import warnings
from dataclasses import dataclass
from typing import Callable

from benchmarks.cases import CASES, Case, compiled_step, make_shapes, num_params
from benchmarks.machine import mem_available_bytes

JAX_CONTENDERS = ("jaxupdate", "jaxupdate-fused", "optax", "xla-floor")
TORCH_CPU_CONTENDERS = ("torch-single", "torch-foreach", "torch-fused")
TORCH_CUDA_CONTENDERS = ("torch-cuda-foreach", "torch-cuda-fused")


def all_contenders() -> tuple[str, ...]:
    names = JAX_CONTENDERS + TORCH_CPU_CONTENDERS
    if _cuda_available():
        names += TORCH_CUDA_CONTENDERS
    return names


def _cuda_available() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()


def _torch_available() -> bool:
    try:
        import torch  # noqa: F401
    except ImportError:
        return False
    return True


def _jax_platform() -> str:
    import jax

    return "cuda" if jax.default_backend() == "gpu" else jax.default_backend()


# ---------------------------------------------------------------------------------------------
# bandwidth


def _median_time(fn, sync, reps):
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _torch_pass_times(device: str, floats: int, reps: int) -> tuple[float, float]:
    import torch

    x = torch.ones(floats, device=device)
    y = torch.empty_like(x)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    for _ in range(2):
        x.mul_(0.9999999)
        y.copy_(x)
    sync()
    return (_median_time(lambda: x.mul_(0.9999999), sync, reps),
            _median_time(lambda: y.copy_(x), sync, reps))


def measure_bandwidth(device: str = "cpu", floats: int = 50_000_000, reps: int = 11) -> dict:
    """In-place (``x.mul_(c)``) and copy (``y.copy_(x)``) bandwidth in GB/s, measured by torch.

    Both move 8 bytes per float32 element (one read, one write). The in-place figure is the
    roofline's denominator, since an optimizer step updates its arrays in place. For reference the
    same in-place pass is also timed as a donated ``jax.jit`` on CPU (``jax_inplace_GBps``).
    """
    t_inplace, t_copy = _torch_pass_times(device, floats, reps)
    out = {
        "device": device,
        "floats": floats,
        "method": "torch x.mul_(c) (in place) and y.copy_(x); 8 bytes per element; median of "
                  f"{reps}",
        "inplace_s": t_inplace,
        "copy_s": t_copy,
        "inplace_GBps": 8 * floats / t_inplace / 1e9,
        "copy_GBps": 8 * floats / t_copy / 1e9,
    }
    if device == "cpu" and _jax_platform() == "cpu":
        import jax
        import jax.numpy as jnp

        f = jax.jit(lambda a: a * jnp.float32(0.9999999), donate_argnums=0)
        box = [jnp.ones(floats, jnp.float32)]

        def run():
            box[0] = f(box[0])
            box[0].block_until_ready()

        run()
        t_jax = _median_time(run, lambda: None, reps)
        out["jax_inplace_s"] = t_jax
        out["jax_inplace_GBps"] = 8 * floats / t_jax / 1e9
        del box
    gc.collect()
    return out


# ---------------------------------------------------------------------------------------------
# contenders


@dataclass
class Contender:
    name: str
    device: str
    run: Callable[[], None]
    first_call_s: float


def _jax_contender(name: str, tx, shapes, grads) -> Contender:
    import jax.numpy as jnp

    params = [jnp.ones(s, jnp.float32) for s in shapes]
    state = tx.init(params)
    jitted = compiled_step(name, tx)
    box = [params, state]
    del params, state

    def run():
        box[0], box[1] = jitted(box[0], box[1], grads)
        # One executable computes every output, so the last parameter being ready means all are.
        box[0][-1].block_until_ready()

    t0 = time.perf_counter()
    run()
    first = time.perf_counter() - t0
    return Contender(name, _jax_platform(), run, first)


def _torch_contender(name: str, case: Case, shapes, grads) -> Contender:
    import torch

    device = "cuda" if "cuda" in name else "cpu"
    impl = name.rsplit("-", 1)[1]
    flags = {"single": {"foreach": False}, "foreach": {"foreach": True}, "fused": {"fused": True}}
    params = [torch.ones(s, device=device, requires_grad=True) for s in shapes]
    for p, g in zip(params, grads):
        p.grad = g  # the optimizers only read .grad (no in-place ops on it with these options)
    opt = getattr(torch.optim, case.label)(params, **case.torch_kwargs, **flags[impl])
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)

    def run():
        opt.step()
        sync()

    t0 = time.perf_counter()
    run()  # allocates the state
    first = time.perf_counter() - t0
    return Contender(name, device, run, first)


def build_contenders(case: Case, shapes, names) -> tuple[list[Contender], dict[str, str]]:
    """The contenders of one configuration (first call done), and why any could not be built."""
    built, unavailable = [], {}
    jax_grads = torch_grads = cuda_grads = None
    for name in names:
        try:
            if name in JAX_CONTENDERS:
                if jax_grads is None:
                    import jax.numpy as jnp

                    jax_grads = [jnp.full(s, 1e-3, jnp.float32) for s in shapes]
                tx = case.jax_contender(name)
                with warnings.catch_warnings():
                    warnings.filterwarnings("ignore", message=".*donated buffers.*")
                    built.append(_jax_contender(name, tx, shapes, jax_grads))
            else:
                if name.endswith("fused") and not case.torch_fused:
                    unavailable[name] = f"torch.optim.{case.label} has no fused implementation"
                    continue
                import torch

                if "cuda" in name:
                    if not _cuda_available():
                        unavailable[name] = "torch.cuda.is_available() is False"
                        continue
                    if cuda_grads is None:
                        cuda_grads = [torch.full(s, 1e-3, device="cuda") for s in shapes]
                    grads = cuda_grads
                else:
                    if torch_grads is None:
                        torch_grads = [torch.full(s, 1e-3) for s in shapes]
                    grads = torch_grads
                built.append(_torch_contender(name, case, shapes, grads))
        except (ImportError, RuntimeError, TypeError, ValueError) as e:
            unavailable[name] = f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"
    return built, unavailable


def estimate_bytes(case: Case, size: int, n_contenders: int) -> int:
    """Memory a configuration needs: every contender's params and state, shared gradients for jax
    and torch, and one parameter-sized temporary (torch foreach's intermediate results)."""
    return 4 * size * (n_contenders * (1 + case.state_arrays) + 2 + 1)


# XLA's compiler memory per leaf of a jitted step, measured for Adam on CPU (jax 0.10.2): peak
# RSS 3.4 GB at 4,000 leaves and 17.1 GB at 10,000 (214 s of compiling); jax keeps much of it
# until the process ends, so every JAX contender of a configuration adds its own
COMPILE_BYTES_PER_LEAF = 1.8e6


def compile_bytes(leaves: int) -> int:
    """Memory XLA needs to compile one JAX contender's step over ``leaves`` leaves."""
    return int(COMPILE_BYTES_PER_LEAF * leaves)


def fit_jax_contenders(names, leaves: int, budget: float) -> tuple[list, dict]:
    """``names`` without the JAX contenders whose compilation would not fit in ``budget`` bytes
    (jaxupdate kept longest), and why each one left was dropped."""
    kept, dropped = list(names), {}
    # jaxupdate-fused compiles a few kernel calls, not per-leaf arithmetic: not counted
    jax_names = [n for n in kept if n in JAX_CONTENDERS and n != "jaxupdate-fused"]
    for n in sorted(jax_names, key=lambda n: n == "jaxupdate"):
        if compile_bytes(leaves) * sum(m in kept for m in jax_names) <= budget:
            break
        kept.remove(n)
        gib = compile_bytes(leaves) / 2**30
        dropped[n] = (f"compiling {leaves:,} leaves takes about {gib:.0f} GiB per JAX "
                      f"contender; {budget / 2**30:.0f} GiB allowed (see --max-mem-fraction)")
    return kept, dropped


def estimate_seconds(case: Case, size: int, leaves: int, n_jax: int, n_torch: int,
                     rounds: int, bandwidth: float = 5e9) -> float:
    """A rough cost of one configuration, used only to weigh the progress bar's ETA."""
    step = case.bytes_per_param * size / bandwidth
    compile_s = n_jax * (0.3 + 0.012 * leaves)
    per_round = (n_jax + n_torch) * 6 * step + n_torch * leaves * 6e-5
    return 0.5 + compile_s + rounds * per_round + 4 * size * 1e-9 * (n_jax + n_torch) * 3


def _stats(samples: list[float]) -> dict:
    qs = statistics.quantiles(samples, n=4) if len(samples) >= 2 else [samples[0]] * 3
    return {
        "median_s": statistics.median(samples),
        "p25_s": qs[0],
        "p75_s": qs[2],
        "min_s": min(samples),
        "rounds": len(samples),
    }


def time_interleaved(contenders: list, rounds: int, warmup: int, settle: int = 1,
                     seed: int = 0) -> dict:
    """``rounds`` timings of each contender's ``run``, interleaved, as ``{name: [seconds]}``.

    Each round visits the contenders in a freshly shuffled order and, for each, makes ``settle``
    untimed calls before the timed one. The untimed call absorbs the hand-over between libraries:
    right after a jax step XLA's worker threads are still spinning, right after a torch step its
    OpenMP threads are, and on a 2-core machine the next library's first call pays for it (a
    0.3 ms torch-fused step measured 100+ ms right after a jax step on a loaded machine). The
    timed call thus measures each library in steady state, as in a training loop that uses only
    it, while interleaving still spreads drifts in machine load evenly over the contenders.
    """
    import random

    for c in contenders:
        for _ in range(warmup):
            c.run()
    rng = random.Random(seed)
    samples = {c.name: [] for c in contenders}
    order = list(contenders)
    for _ in range(rounds):
        rng.shuffle(order)
        for c in order:
            for _ in range(settle):
                c.run()
            t0 = time.perf_counter()
            c.run()
            samples[c.name].append(time.perf_counter() - t0)
    return samples


def run_config(case: Case, size: int, leaves: int, names, rounds: int, warmup: int,
               bandwidth: dict, max_mem_fraction: float = 0.6, settle: int = 1) -> dict:
    """Time one (optimizer, size, leaf count) configuration; returns the JSON row."""
    shapes = make_shapes(size, leaves)
    n = num_params(shapes)
    row = {
        "optimizer": case.name,
        "torch_class": case.label,
        "optax": case.optax_label,
        "size": size,
        "params": n,
        "leaves": len(shapes),
        "distinct_shapes": len(set(shapes)),
        "bytes_per_param": case.bytes_per_param,
        "roofline_s": {dev: case.bytes_per_param * n / (bw["inplace_GBps"] * 1e9)
                       for dev, bw in bandwidth.items()},
        "contenders": {},
        "unavailable": {},
    }
    need = estimate_bytes(case, n, len(names))
    avail = mem_available_bytes()
    if avail is not None and need > max_mem_fraction * avail:
        row["skipped"] = (f"needs about {need / 2**30:.1f} GiB, {avail / 2**30:.1f} GiB available "
                          f"(limit {max_mem_fraction:.0%} of it; see --max-mem-fraction)")
        return row
    if avail is not None:
        names, dropped = fit_jax_contenders(names, len(shapes),
                                            max_mem_fraction * avail - need)
    else:
        dropped = {}
    contenders, row["unavailable"] = build_contenders(case, shapes, names)
    row["unavailable"].update(dropped)
    if not contenders:
        row["skipped"] = "no contender could be built"
        return row
    try:
        samples = time_interleaved(contenders, rounds, warmup, settle)
    finally:
        firsts = {c.name: (c.first_call_s, c.device) for c in contenders}
        del contenders
        gc.collect()
    for name in names:
        if name not in samples:
            continue
        first, device = firsts[name]
        entry = {"device": device, "first_call_s": first, **_stats(samples[name])}
        roof = row["roofline_s"].get(device)
        if roof:
            entry["x_roofline"] = entry["median_s"] / roof
        entry["samples_s"] = samples[name]
        row["contenders"][name] = entry
    med = {k: v["median_s"] for k, v in row["contenders"].items()}
    row["ratios"] = {
        f"jaxupdate/{other}": med["jaxupdate"] / med[other]
        for other in ("torch-fused", "torch-foreach", "torch-single", "optax", "xla-floor",
                      "torch-cuda-fused")
        if "jaxupdate" in med and other in med
    }
    row["ratios"].update({
        f"jaxupdate-fused/{other}": med["jaxupdate-fused"] / med[other]
        for other in ("torch-fused", "optax", "jaxupdate", "torch-cuda-fused")
        if "jaxupdate-fused" in med and other in med
    })
    return row


def warm_up_jax(optimizers) -> None:
    """Compile a 2-leaf step of every optimizer once, so that one-time costs of jax's own caches
    do not land on the first measured configuration's first-call time."""
    for name in optimizers:
        case = CASES[name]
        contenders, _ = build_contenders(case, make_shapes(1000, 2), JAX_CONTENDERS)
        for c in contenders:
            c.run()
        del contenders
    gc.collect()

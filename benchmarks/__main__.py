"""jaxupdate vs torch.optim vs optax: update-step time, first call, peak memory, a training step.

``python -m benchmarks`` (or ``make bench``) runs the default preset, a few minutes on a 2-core
machine; ``--full`` runs the whole grid (sizes 1M, 10M, 100M x 10 to 10,000 leaves; hours
on 2 cores, most of it compiling 10,000-leaf steps); ``--preset gpu`` times Adam up to 1B
parameters against torch's fused CUDA Adam on a CUDA machine. Results go to ``benchmarks/results/``:
``results.json`` (everything, raw samples included), ``results.md`` (the tables, also printed) and
PNG plots. ``--optimizers``, ``--sizes``, ``--leaves`` and ``--contenders`` narrow or replace the
preset's grid; see ``--help``.

What is measured, and how: :mod:`benchmarks.update_step` (interleaved rounds, medians, roofline),
:mod:`benchmarks.memory` (peak RSS per contender in a subprocess), :mod:`benchmarks.train_step`.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from benchmarks.cases import CASES, parse_count

ALL = list(CASES)
CPU_CONTENDERS = ["jaxupdate", "jaxupdate-fused", "optax", "xla-floor", "torch-single",
                  "torch-foreach", "torch-fused"]

PRESETS = {
    # for the smoke test: seconds
    "tiny": {
        "grid": [(["adam"], ["10k"], [10])],
        "rounds": 3, "warmup": 1, "bandwidth_floats": "1M",
        "memory": {"optimizers": ["adam"], "sizes": ["10k"], "leaves": [10],
                   "contenders": ["jaxupdate"]},
        "jax_warmup": False,
        "train": {"width": 32, "depth": 2, "batch": 16, "d_in": 8, "rounds": 3, "warmup": 1,
                  "optimizers": ["adam"]},
    },
    # a few minutes on 2 cores: every optimizer at 1M and 10M with 10 and 100 leaves, and Adam
    # with 1,000 leaves (compiling 1,000 leaves takes ~10 s per jax contender)
    "default": {
        "grid": [(ALL, ["1M", "10M"], [10, 100]), (["adam"], ["10M"], [1000])],
        "rounds": 15, "warmup": 2, "bandwidth_floats": "50M",
        "memory": {"optimizers": ["adam"], "sizes": ["10M"], "leaves": [100],
                   "contenders": CPU_CONTENDERS},
        "train": {"width": 1024, "depth": 4, "batch": 256, "d_in": 128, "rounds": 15,
                  "warmup": 3, "optimizers": ["sgd", "adam"]},
    },
    # for a machine with a CUDA GPU (jax with CUDA, torch with CUDA): Adam up to
    # 1B parameters against torch's fused CUDA Adam, as a share of the measured HBM bandwidth
    # (the roofline of the cuda rows); no CPU torch contenders at that size
    "gpu": {
        "grid": [(["adam"], ["100M", "1000M"], [10, 100])],
        "contenders": ["jaxupdate", "jaxupdate-fused", "optax", "xla-floor", "torch-cuda-foreach",
                       "torch-cuda-fused"],
        "rounds": 15, "warmup": 3, "bandwidth_floats": "250M",
        "memory": {"optimizers": ["adam"], "sizes": ["10M"], "leaves": [100],
                   "contenders": ["jaxupdate"]},
        "train": {"width": 1024, "depth": 4, "batch": 256, "d_in": 128, "rounds": 15,
                  "warmup": 3, "optimizers": ["adam"]},
    },
    # the whole grid; 100M is skipped where memory does not allow it
    "full": {
        "grid": [(ALL, ["1M", "10M", "100M"], [10, 100, 1000, 10000])],
        "rounds": 21, "warmup": 3, "bandwidth_floats": "50M",
        "memory": {"optimizers": ["adam"], "sizes": ["10M", "100M"], "leaves": [100, 1000],
                   "contenders": CPU_CONTENDERS},
        "train": {"width": 2048, "depth": 8, "batch": 512, "d_in": 256, "rounds": 21,
                  "warmup": 3, "optimizers": ["sgd", "adam"]},
    },
}


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", choices=sorted(PRESETS), default="default")
    ap.add_argument("--full", action="store_const", dest="preset", const="full",
                    help="same as --preset full")
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent / "results"),
                    help="output folder (default: benchmarks/results/)")
    g = ap.add_argument_group("update-step grid (given: replaces the preset's grid by a product)")
    g.add_argument("--optimizers", nargs="+", choices=ALL)
    g.add_argument("--sizes", nargs="+", type=parse_count, help="total parameters, e.g. 1M 10M")
    g.add_argument("--leaves", nargs="+", type=int)
    g.add_argument("--contenders", nargs="+",
                   help="subset of: jaxupdate optax xla-floor torch-single torch-foreach "
                        "torch-fused "
                        "(+ torch-cuda-foreach torch-cuda-fused when CUDA is available)")
    g.add_argument("--rounds", type=int)
    g.add_argument("--warmup", type=int)
    g.add_argument("--bandwidth-floats", type=parse_count)
    g.add_argument("--max-mem-fraction", type=float, default=0.6,
                   help="skip a configuration needing more than this share of MemAvailable")
    g.add_argument("--torch-threads", type=int, help="torch.set_num_threads (default: torch's)")
    g = ap.add_argument_group("peak memory")
    g.add_argument("--no-memory", action="store_true")
    g.add_argument("--memory-optimizers", nargs="+", choices=ALL)
    g.add_argument("--memory-sizes", nargs="+", type=parse_count)
    g.add_argument("--memory-leaves", nargs="+", type=int)
    g.add_argument("--memory-contenders", nargs="+")
    g = ap.add_argument_group("whole training step")
    g.add_argument("--no-train-step", action="store_true")
    g.add_argument("--train-width", type=int)
    g.add_argument("--train-depth", type=int)
    g.add_argument("--train-batch", type=int)
    ap.add_argument("--no-plots", action="store_true")
    ap.add_argument("--quiet", action="store_true", help="no progress bar, no table on stdout")
    return ap


def _settings(args) -> dict:
    p = PRESETS[args.preset]
    grid = [(list(o), [parse_count(s) for s in sz], list(lv)) for o, sz, lv in p["grid"]]
    if args.optimizers or args.sizes or args.leaves:
        union = lambda i: sorted({x for block in grid for x in block[i]},  # noqa: E731
                                 key=lambda x: ALL.index(x) if i == 0 else x)
        grid = [(args.optimizers or union(0), args.sizes or union(1), args.leaves or union(2))]
    mem = dict(p["memory"])
    mem["sizes"] = [parse_count(s) for s in mem["sizes"]]
    for key in ("optimizers", "sizes", "leaves", "contenders"):
        given = getattr(args, f"memory_{key}")
        if given:
            mem[key] = given
    train = dict(p["train"])
    for key in ("width", "depth", "batch"):
        given = getattr(args, f"train_{key}")
        if given:
            train[key] = given
    return {
        "preset": args.preset,
        "grid": grid,
        "contenders": args.contenders or p.get("contenders"),
        "rounds": args.rounds or p["rounds"],
        "warmup": args.warmup if args.warmup is not None else p["warmup"],
        "bandwidth_floats": args.bandwidth_floats or parse_count(p["bandwidth_floats"]),
        "max_mem_fraction": args.max_mem_fraction,
        "torch_threads": args.torch_threads,
        "memory": None if args.no_memory else mem,
        "train_step": None if args.no_train_step else train,
    }


def _write_json(path: Path, results: dict) -> None:
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(results, indent=1, default=str))
    os.replace(tmp, path)


def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    settings = _settings(args)
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()

    import warnings

    warnings.filterwarnings("ignore", message=".*donated buffers.*")
    from benchmarks import machine, report, update_step

    if settings["preset"] == "gpu" and not (update_step._cuda_available()
                                            and update_step._jax_platform() == "cuda"):
        raise SystemExit("--preset gpu needs a CUDA GPU seen by both torch and jax "
                         f"(torch.cuda.is_available(): {update_step._cuda_available()}, jax "
                         f"backend: {update_step._jax_platform()})")
    from benchmarks.cases import make_shapes, num_params
    from benchmarks.memory import run_in_subprocess
    from benchmarks.progress import Progress

    if settings["torch_threads"]:
        import torch

        torch.set_num_threads(settings["torch_threads"])
    known = update_step.JAX_CONTENDERS + update_step.TORCH_CPU_CONTENDERS + \
        update_step.TORCH_CUDA_CONTENDERS
    for name in (settings["contenders"] or []) + ((settings["memory"] or {}).get("contenders")
                                                  or []):
        if name not in known:
            raise SystemExit(f"unknown contender {name!r}; choose from {', '.join(known)}")
    names = settings["contenders"] or list(update_step.all_contenders())
    if not update_step._torch_available():
        names = [n for n in names if not n.startswith("torch")]
    results = {"schema": 1, "machine": machine.describe(), "settings": settings,
               "bandwidth": {}, "update_step": [], "memory": [], "train_step": None}
    json_path, md_path = out_dir / "results.json", out_dir / "results.md"

    configs = [(o, s, n) for opts, sizes, leaves in settings["grid"]
               for o in opts for s in sizes for n in leaves]
    n_jax = sum(n in update_step.JAX_CONTENDERS for n in names)
    weights = [update_step.estimate_seconds(CASES[o], s, n, n_jax, len(names) - n_jax,
                                            settings["rounds"] + settings["warmup"])
               for o, s, n in configs]
    mem_jobs = []
    if settings["memory"]:
        m = settings["memory"]
        mem_jobs = [(o, s, n, c) for o in m["optimizers"] for s in m["sizes"]
                    for n in m["leaves"] for c in m["contenders"]
                    if update_step._torch_available() or not c.startswith("torch")]
    mem_weights = [8 + 0.015 * n + 3e-8 * s for _, s, n, _ in mem_jobs]
    train = settings["train_step"]
    train_weight = 0.0
    if train:
        w, d, b = train["width"], train["depth"], train["batch"]
        n_train = train["d_in"] * w + (d - 1) * w * w
        train_weight = 3 + (1 + train["warmup"] + train["rounds"]) * 3 * 6 * b * n_train / 2e10
    total = 3 + sum(weights) + sum(mem_weights) + train_weight * len(train["optimizers"] if train
                                                                     else [])
    progress = Progress(total, enabled=not args.quiet)

    progress.set_text("bandwidth")
    devices = ["cpu"] + (["cuda"] if any("cuda" in n for n in names) else [])
    if update_step._torch_available():
        for dev in devices:
            results["bandwidth"][dev] = update_step.measure_bandwidth(
                dev, settings["bandwidth_floats"])
    if n_jax and PRESETS[args.preset].get("jax_warmup", True):
        progress.set_text("warming up jax")
        update_step.warm_up_jax(sorted({o for o, _, _ in configs}))
    progress.advance(3, "bandwidth measured")
    phases = results["phase_s"] = {"setup_and_bandwidth": time.perf_counter() - t_start}
    t_phase = time.perf_counter()

    for (opt, size, leaves), weight in zip(configs, weights):
        progress.set_text(f"{opt} {size:,} params x {leaves} leaves")
        row = update_step.run_config(CASES[opt], size, leaves, names, settings["rounds"],
                                     settings["warmup"], results["bandwidth"],
                                     settings["max_mem_fraction"])
        results["update_step"].append(row)
        _write_json(json_path, results)
        progress.advance(weight, f"{opt} {size:,} x {leaves} done")

    phases["update_step"] = time.perf_counter() - t_phase
    t_phase = time.perf_counter()
    avail = machine.mem_available_bytes()
    for (opt, size, leaves, cont), weight in zip(mem_jobs, mem_weights):
        progress.set_text(f"peak memory {cont} {opt} {size:,} x {leaves}")
        need = 2 * 4 * num_params(make_shapes(size, leaves)) * (2 + CASES[opt].state_arrays)
        if avail is not None and need > settings["max_mem_fraction"] * avail:
            results["memory"].append({"optimizer": opt, "contender": cont, "size": size,
                                      "leaves": leaves, "skipped": "not enough memory"})
        else:
            results["memory"].append(run_in_subprocess(opt, cont, size, leaves))
        _write_json(json_path, results)
        progress.advance(weight, f"peak memory {cont} done")

    phases["memory"] = time.perf_counter() - t_phase
    t_phase = time.perf_counter()
    if train:
        from benchmarks.train_step import run_train_step

        progress.set_text("whole training step")

        class _Scaled:  # train_step advances by 1 per optimizer
            def advance(self, w, text=""):
                progress.advance(w * train_weight, text)

        results["train_step"] = run_train_step(
            train["width"], train["depth"], train["batch"], train["d_in"], train["rounds"],
            train["warmup"], train["optimizers"], progress=_Scaled())
    phases["train_step"] = time.perf_counter() - t_phase
    progress.close()

    results["load_average_at_end"] = machine.load_average()
    results["cpu_pressure_avg60_at_end"] = machine.cpu_pressure_avg60()
    results["elapsed_s"] = time.perf_counter() - t_start
    results["targets"] = report.evaluate_targets(results)
    results["targets_summary"] = report.summarize_targets(results["targets"])
    text = report.markdown(results)
    md_path.write_text(text)
    files = [str(json_path), str(md_path)]
    if not args.no_plots:
        results["plots"] = report.plots(results, out_dir)
        files += results["plots"]
    results["elapsed_s"] = time.perf_counter() - t_start
    _write_json(json_path, results)
    if not args.quiet:
        print(text)
        print("Wrote " + ", ".join(files), file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

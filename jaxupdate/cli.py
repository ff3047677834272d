"""``jaxupdate`` command line: ``jaxupdate parity`` (also ``python -m jaxupdate parity``).

``parity`` runs every optimizer over torch's own configurations (``optim_inputs_func_*`` of
``torch.testing._internal.common_optimizers``) in float64 and float32 (and complex128 /
complex64 where torch supports complex parameters), and every scheduler through
:func:`jaxupdate.interop.from_torch`, against the installed torch; it shows progress on
stderr, prints the largest relative error per optimizer and dtype, and exits 1 on a mismatch
(tolerances in :mod:`jaxupdate.interop.parity`). It then reports, per elementwise optimizer,
the share of float32 parameter elements bit-identical to torch's (``foreach=False``, CPU) on
small tensors and on realistic ones (1,000 x 33 and 100,003 elements; 100 steps,
``wide_updates``; see :func:`jaxupdate.interop.parity.bit_identical_share`). ``--quick``:
torch's default configuration of each optimizer, fewer steps, no complex64.
"""

from __future__ import annotations

import argparse
import functools
import sys
import time
from typing import Optional, Sequence


def _progress(i: int, n: int, what: str, t0: float):
    line = f"[{i:>3}/{n}] {time.time() - t0:5.1f}s  {what}"
    if sys.stderr.isatty():
        sys.stderr.write("\r\033[K" + line[:110])
    else:
        sys.stderr.write(line + "\n")
    sys.stderr.flush()


def _fmt(err: Optional[float], ok: bool) -> str:
    if err is None:
        return "-"
    mark = "ok" if ok else "FAIL"
    return f"{err:8.1e} {mark}"


def parity(quick: bool = False, only: Optional[Sequence[str]] = None, steps: Optional[int] = None,
           out=None) -> int:
    import jax

    out = out or sys.stdout
    jax.config.update("jax_enable_x64", True)
    import torch  # noqa: F401 - fail early with a clear message when torch is missing

    from jaxupdate.interop import parity as P

    steps = steps or (8 if quick else 20)
    dtypes = ["float64", "float32", "complex128"] + ([] if quick else ["complex64"])
    table = [row for row in P.optimizer_table() if not only or row[0] in only]
    jobs = []
    for name, inputs, cplx in table:
        cfgs = P.configs(inputs)[:1] if quick else P.configs(inputs)
        for dtype in dtypes:
            # a closure-driven optimizer (L-BFGS) runs on the harness's real loss; torch's
            # LBFGS complex path is tested in tests/
            if dtype.startswith("complex") and (not cplx or P.parity_of(name).closure):
                continue
            for kw in cfgs:
                jobs.append(("opt", name, dtype, kw))
    scheds = [c for c in P.scheduler_cases() if not only or c[0] in only]
    for case in scheds:
        for convert_at in ([5] if quick else [0, 7]):
            jobs.append(("sched", case, "float64", convert_at))

    worst: dict = {}
    failures = []
    t0 = time.time()
    for i, job in enumerate(jobs, 1):
        kind = job[0]
        if kind == "opt":
            _, name, dtype, kw = job
            label = f"{name} {dtype} {kw}"
            key = (name, dtype)
            run = functools.partial(P.check, name, kw, dtype, steps, jit=P.jit_for(name))
        else:
            _, (sname, cls, kw, fn), dtype, convert_at = job
            label = f"{sname} ({cls}) from_torch at step {convert_at}"
            key = (sname, "scheduler")
            metrics = P.PLATEAU_METRICS if sname == "ReduceLROnPlateau" else None
            run = functools.partial(
                P.check, cls, kw, dtype, max(steps, 12), scheduler_fn=fn, via_from_torch=True,
                convert_at=convert_at, metrics=metrics, jit=False,
            )
        _progress(i, len(jobs), label, t0)
        try:
            r = run()
        except Exception as e:  # noqa: BLE001 - reported in the table, exit status 1
            failures.append(f"{label}: {type(e).__name__}: {e}")
            worst[key] = (float("inf"), False)
            continue
        if not r.ok:
            failures.append(f"{label}: rel err {r.err:.3e} > {r.tol:.1e}")
        old = worst.get(key, (0.0, True))
        worst[key] = (max(old[0], r.err), old[1] and r.ok)
    if sys.stderr.isatty():
        sys.stderr.write("\n")
    elapsed = time.time() - t0

    import torch as _torch

    print(f"jaxupdate parity against torch {_torch.__version__}: max relative error over "
          f"{steps}-step trajectories ({len(jobs)} runs, {elapsed:.0f}s)", file=out)
    head = f"{'optimizer':<12}" + "".join(f"{d:>16}" for d in dtypes)
    print(head, file=out)
    print("-" * len(head), file=out)
    for name, _, _ in table:
        cells = []
        for d in dtypes:
            e = worst.get((name, d))
            cells.append(f"{_fmt(*e) if e else '-':>16}")
        print(f"{name:<12}" + "".join(cells), file=out)
    if scheds:
        print(file=out)
        head = f"{'scheduler (from_torch, float64)':<34}{'':>16}"
        print(head, file=out)
        print("-" * len(head), file=out)
        for sname, cls, _, _ in scheds:
            e = worst.get((sname, "scheduler"))
            print(f"{sname + ' / ' + cls:<34}{(_fmt(*e) if e else '-'):>16}", file=out)
    tol = ", ".join(f"{k} {v:g}" for k, v in P.TOL.items())
    print(f"\ntolerances: {tol} (float32: or 10x torch's own float32 error where larger)",
          file=out)
    _bit_table(P, quick, only, out)
    if failures:
        print(f"\n{len(failures)} mismatches:", file=out)
        for f in failures:
            print("  " + f, file=out)
        return 1
    print("all runs agree with torch", file=out)
    return 0


def _bit_table(P, quick: bool, only, out) -> None:
    """The float32 bit-identity shares (a report: the tests assert them)."""
    cases = [c for c in P.BIT_CASES if not only or c[0] in only]
    if quick:  # the first configuration of each optimizer
        cases = [c for i, c in enumerate(cases) if c[0] not in {d[0] for d in cases[:i]}]
    if not cases:
        return
    steps = 10 if quick else 100
    sizes = "1,000 x 33 + 100,003"
    print(f"\nfloat32 elements bit-identical to torch (foreach=False) after {steps} steps",
          file=out)
    # shares first: the rows must not read as the error table's (first word = optimizer)
    head = f"{'small tensors':>14}{sizes:>24}  optimizer configuration"
    print(head, file=out)
    print("-" * len(head), file=out)
    t0 = time.time()
    for i, (name, kw) in enumerate(cases, 1):
        _progress(i, len(cases), f"{name} {kw} float32 bit identity", t0)
        small = P.bit_identical_share(name, kw, steps, P.SHAPES)
        big = P.bit_identical_share(name, kw, steps)
        print(f"{small:>14.4%}{big:>24.4%}  {name} {kw}", file=out)
    if sys.stderr.isatty():
        sys.stderr.write("\n")
    print("(targets: 100% for SGD, Adam, AdamW; >= 99.9% for the others; where torch's float32 "
          "sqrt is MKL's, not correctly rounded, optimizers taking a square root fall short: "
          "README, Numerics)", file=out)


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        prog="jaxupdate", description="jaxupdate: torch.optim as pure JAX transformations"
    )
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser(
        "parity",
        help="run every optimizer and scheduler side by side with the installed torch",
        description=__doc__.split("\n\n")[1],
    )
    p.add_argument("--quick", action="store_true",
                   help="torch's default config per optimizer, 8 steps, no complex64")
    p.add_argument("--only", nargs="+", metavar="NAME",
                   help="torch class names of the optimizers / schedulers to run")
    p.add_argument("--steps", type=int, help="steps per trajectory (default 20, --quick 8)")
    args = parser.parse_args(argv)
    if args.command == "parity":
        return parity(quick=args.quick, only=args.only, steps=args.steps)
    return 2  # pragma: no cover - argparse rejects other commands


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

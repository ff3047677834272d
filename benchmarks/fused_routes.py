"""What a fused optimizer's flat state costs outside the kernel's own step.

``fused=True`` on CPU holds the state flat (``jaxupdate.fused._flat``). This script times, for
Adam over ``--leaves`` float32 leaves of ``--floats`` elements, ``fused=True`` against
``fused=False``:

- ``init``: ``tx.init(params)`` (the flat state joins the leaves on the host);
- ``jit(update)`` first call and steady step: the XLA route a fused optimizer takes when
  something other than ``ju.step`` steps it (``optax.chain``, ``tx.update`` under ``jit``), which
  slices the flat state into leaves and joins the new state back;
- ``jit(ju.step)`` first call: ``ju.step`` compiled inside the user's ``jit`` (the kernel's calls
  for ``fused=True``, ``update`` + ``apply_updates`` for ``fused=False``).

Seconds for first calls and init, ms for steady steps; one process, each measured once after
the imports (first calls cannot be repeated)::

    python -m benchmarks.fused_routes --leaves 1000 --floats 1000
    python -m benchmarks.fused_routes --leaves 10000 --floats 1000 --init-only
"""

from __future__ import annotations

import argparse
import time
import warnings


def _timed(fn, *args):
    import jax

    t = time.perf_counter()
    out = fn(*args)
    jax.block_until_ready(out)
    return out, time.perf_counter() - t


def _one(fused: bool, leaves: int, floats: int, steps: int, compiled: bool) -> dict:
    import jax
    import jax.numpy as jnp
    import numpy as np

    import jaxupdate as ju

    tx = ju.adam(lr=1e-3, fused=fused)
    params = [jnp.ones((floats,), jnp.float32) for _ in range(leaves)]
    grads = [jnp.full((floats,), 1e-3, jnp.float32) for _ in range(leaves)]
    state, t_init = _timed(tx.init, params)
    row = {"init_s": t_init}
    if not compiled:
        return row
    # ju.step first (it donates its own copies), while nothing else is compiled yet
    step = jax.jit(lambda p, g, s: ju.step(tx, p, g, s), donate_argnums=(0, 2))
    copies = jax.tree.map(jnp.copy, (params, state))
    row["jit_step_first_call_s"] = _timed(step, copies[0], grads, copies[1])[1]
    update = jax.jit(tx.update)
    with warnings.catch_warnings():  # the fused route's FusedOutsideStepWarning: expected
        warnings.simplefilter("ignore")
        row["jit_update_first_call_s"] = _timed(update, grads, state, params)[1]
        times = [_timed(update, grads, state, params)[1] for _ in range(steps)]
    row["jit_update_step_ms"] = float(np.median(times)) * 1e3
    return row


def measure(leaves: int, floats: int, steps: int = 5, compiled: bool = True) -> dict:
    """``{"fused": {...}, "unfused": {...}}`` of the timings above (``compiled=False``: only
    ``init``; the unfused XLA step compiles for minutes at 10,000 leaves)."""
    return {label: _one(fused, leaves, floats, steps, compiled)
            for label, fused in (("fused", True), ("unfused", False))}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--leaves", type=int, default=1000)
    ap.add_argument("--floats", type=int, default=1000)
    ap.add_argument("--init-only", action="store_true", help="time tx.init only")
    args = ap.parse_args(argv)
    r = measure(args.leaves, args.floats, compiled=not args.init_only)
    keys = list(r["fused"])
    print(f"Adam, {args.leaves} leaves of {args.floats} float32")
    print("| | " + " | ".join(keys) + " |")
    print("|---" * (len(keys) + 1) + "|")
    for label, row in r.items():
        print(f"| {label} | " + " | ".join(f"{row[k]:.3g}" for k in keys) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

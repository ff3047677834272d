"""The examples users look at run and agree with torch: one table, one test.

Each example runs its jaxupdate code and the torch original side by side, prints the largest
difference it found and exits non-zero past its own tolerance; the test reads the printed
difference and holds it to the bound given here (how each example measures is in its docstring).
``checkpoint_resume.py`` (compared with itself, bitwise) and ``multihost.py`` (two processes)
are tested in test_checkpoint.py and test_sharding.py.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _mnist_trains(stdout):
    """2 batches per epoch, 2 epochs: four rows of (step, jax loss, torch loss), loss falling."""
    rows = [ln.split() for ln in stdout.splitlines() if re.match(r"^\s+\d+\s", ln)]
    return len(rows) == 4 and float(rows[-1][1]) < float(rows[0][1])


# (script, arguments, pattern of the printed difference to torch, bound[, further check])
EXAMPLES = {
    # float32 end to end: torch's seed example, bit for bit
    "seed_walkthrough": (
        "seed_walkthrough.py", [], r"Largest parameter difference: (\S+)", 0.0,
        lambda out: out.count("Updated Parameter:") == 4,  # torch's and jaxupdate's, w and b
    ),
    # float32 training of a flax nnx model over 100 steps: matmul rounding, not the optimizer
    "flax_nnx_training": (
        "flax_nnx_training.py", [], r"largest parameter difference: (\S+)", 1e-5,
    ),
    "sparse_embedding": (
        "sparse_embedding.py", [], r"largest parameter difference \(float32\): (\S+);", 1e-5,
    ),
    # float64 schedules, every panel
    "schedules": (
        "schedules.py", ["{tmp}/schedules.png"],
        r"largest relative difference to torch (\S+)", 1e-10,
    ),
    # float32 training amplifies matmul rounding (see the float64 run for the port's exactness)
    "port_mnist_float32": (
        "port_mnist.py", ["{tmp}/mnist.png", "--samples", "128", "--epochs", "2"],
        r"largest relative difference: (\S+)", 1e-3, _mnist_trains,
    ),
    "port_mnist_float64": (
        "port_mnist.py",
        ["{tmp}/mnist.png", "--samples", "128", "--epochs", "2", "--dtype", "float64"],
        r"largest relative difference: (\S+)", 1e-12,
    ),
    # float64: HF warm-up (from_torch and native), timm groups + per-epoch ReduceLROnPlateau
    "torch_recipes": (
        "torch_recipes.py", [], r"largest relative difference to torch: (\S+)", 1e-12,
        lambda out: out.count("max relative difference") == 3,
    ),
    # float32 with x64 and wide_updates: SGD bit for bit (AdamW: see the README's numerics)
    "float32_bit_identical": (
        "float32_bit_identical.py", [], r"SGD elements that differ from torch: (\S+)", 0.0,
    ),
}


@pytest.mark.parametrize("name", list(EXAMPLES))
def test_example_agrees_with_torch(name, tmp_path):
    script, args, pattern, bound, *check = EXAMPLES[name]
    res = subprocess.run(
        [sys.executable, str(ROOT / "examples" / script),
         *(a.format(tmp=tmp_path) for a in args)],
        capture_output=True, text=True, cwd=ROOT, timeout=600,
        # the checkout's jaxupdate, whichever one is installed
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    out = res.stdout + res.stderr
    assert res.returncode == 0, out[-4000:]
    found = re.search(pattern, res.stdout)
    assert found, f"{script} printed no difference to torch:\n{out[-4000:]}"
    assert float(found.group(1)) <= bound, found.group(0)
    for extra in check:
        assert extra(res.stdout), res.stdout[-4000:]

"""Smoke test of the benchmark suite (``python -m benchmarks``): a tiny run writes its outputs."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.cases import CASES, make_shapes, num_params, parse_count  # noqa: E402

PLOTS = ("update_step_vs_leaves.png", "update_step_vs_size.png", "first_call.png",
         "peak_memory.png", "train_step.png")
CPU = {"jaxupdate", "jaxupdate-fused", "optax", "xla-floor", "torch-single", "torch-foreach",
       "torch-fused"}


def test_tiny_run_writes_json_markdown_and_plots(tmp_path):
    pytest.importorskip("torch")
    pytest.importorskip("matplotlib")
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--preset", "tiny", "--out", str(tmp_path),
         "--quiet"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    data = json.loads((tmp_path / "results.json").read_text())

    m = data["machine"]
    assert m["cpu_model"] and m["usable_cpus"] >= 1 and m["load_average_at_start"]
    assert m["jax"] and m["torch"] and m["optax"]
    bw = data["bandwidth"]["cpu"]
    assert bw["floats"] == 1_000_000 and bw["inplace_GBps"] > 0 and bw["copy_GBps"] > 0

    (row,) = data["update_step"]
    assert (row["optimizer"], row["size"], row["leaves"]) == ("adam", 10_000, 10)
    assert row["bytes_per_param"] == 28 and row["params"] == num_params(make_shapes(10_000, 10))
    assert set(row["contenders"]) == CPU
    for c in row["contenders"].values():
        assert c["device"] == "cpu" and c["rounds"] == 3 and len(c["samples_s"]) == 3
        assert c["min_s"] <= c["median_s"] and c["first_call_s"] > 0
        assert c["x_roofline"] == pytest.approx(c["median_s"] / row["roofline_s"]["cpu"])
    assert row["ratios"]["jaxupdate/torch-fused"] == pytest.approx(
        row["contenders"]["jaxupdate"]["median_s"] / row["contenders"]["torch-fused"]["median_s"])

    (mem,) = data["memory"]
    assert mem["contender"] == "jaxupdate" and mem["peak_extra_bytes"] >= 0
    assert mem["params_grads_state_bytes"] == 4 * row["params"] * 4
    assert mem["xla_memory_analysis"]["alias_size_in_bytes"] > 0  # params and state donated

    (step,) = data["train_step"]["results"]
    assert set(step["contenders"]) == {"jaxupdate (jax.jit)", "torch eager", "torch eager, fused"}
    assert all(c["steps_per_s"] > 0 for c in step["contenders"].values())
    # same weights, same batches, same number of Adam steps: the same loss up to float32 rounding
    assert step["final_loss_rel_diff"] < 1e-4

    targets = {t["target"] for t in data["targets_summary"]}
    assert any("torch fused" in t for t in targets) and any("roofline" in t for t in targets)
    assert data["elapsed_s"] > 0

    md = (tmp_path / "results.md").read_text()
    for heading in ("## Update step", "## First call", "## Peak memory", "## Whole training step",
                    "## CPU speed targets"):
        assert heading in md
    assert m["cpu_model"] in md and "| adam | 10k | 10 |" in md
    for name in PLOTS:
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name


def test_torch_peak_memory_is_params_grads_state():
    pytest.importorskip("torch")
    from benchmarks.memory import measure

    res = measure("adam", "torch-fused", 1_000_000, 10, steps=2)
    # fused Adam keeps no parameter-sized temporaries: the peak is the arrays themselves
    assert res["peak_reset"]
    assert 0.9 < res["ratio"] < 1.5, res


@pytest.mark.parametrize("size,leaves", [(10_000, 1), (10_000, 10), (1_000_000, 100),
                                         (1_000_000, 10_000), (100_000_000, 7)])
def test_shapes_look_like_a_network(size, leaves):
    shapes = make_shapes(size, leaves)
    assert len(shapes) == leaves
    assert 0.8 * size <= num_params(shapes) <= size
    assert len(set(shapes)) == min(leaves, 8)
    assert all(len(s) == 2 for s in shapes[::2]) and all(len(s) == 1 for s in shapes[1::2])


def test_counts_and_bytes():
    assert [parse_count(x) for x in ("1M", "10k", "100M", "1e6", "2_000")] == [
        1_000_000, 10_000, 100_000_000, 1_000_000, 2000]
    assert {n: c.bytes_per_param for n, c in CASES.items()} == {
        "adam": 28, "adamw": 28, "sgd_momentum": 20, "rmsprop": 20, "adagrad": 20}


@pytest.mark.parametrize("name", list(CASES))
def test_jaxupdate_runs_as_few_kernels_per_leaf_as_the_hand_written_floor(name):
    """XLA on CPU runs one kernel per output array (no multi-output fusion), so the leanest
    hand-written step of an optimizer with k state arrays runs k + 1 kernels per leaf. jaxupdate's
    torch-exact step (one-rounding adds, lerp's two formulas, inf handling, input checks) must
    not add any: its extra work stays inside those kernels.

    Checked with float64 off, jax's default and the benchmark's setting (the test suite turns it
    on; then float32 steps round through float64 to match torch's FMA, and Adagrad's sum gets
    one more copy)."""
    import jax

    from benchmarks.floor import floor_tx, kernels_per_leaf

    case = CASES[name]
    with jax.enable_x64(False):
        floor = kernels_per_leaf(floor_tx(case), shape=(16, 8))
        assert floor == case.state_arrays + 1
        assert kernels_per_leaf(case.jaxupdate(), shape=(16, 8)) == floor
        # biases (1-D leaves) too
        assert kernels_per_leaf(case.jaxupdate(), shape=(24,)) == floor


def test_floor_steps_match_jaxupdate_numerically():
    """The floor computes the same algorithm (to float32 rounding), so its time is comparable."""
    import jax
    import jax.numpy as jnp
    import numpy as np
    import optax

    from benchmarks.floor import floor_tx

    rng = np.random.default_rng(0)
    shapes = [(6, 5), (6,)]
    for name, case in CASES.items():
        runs = []
        for tx in (case.jaxupdate(), floor_tx(case)):
            params = [jnp.asarray(rng.standard_normal(s, dtype=np.float32)) for s in shapes]
            state = tx.init(params)
            grng = np.random.default_rng(1)
            for _ in range(5):
                grads = [jnp.asarray(grng.standard_normal(s, dtype=np.float32)) for s in shapes]
                updates, state = jax.jit(tx.update)(grads, state, params)
                params = optax.apply_updates(params, updates)
            runs.append(np.concatenate([np.ravel(p) for p in params]))
            rng = np.random.default_rng(0)
        np.testing.assert_allclose(runs[1], runs[0], rtol=2e-6, atol=1e-7, err_msg=name)


def test_flat_layout_experiment_compares_the_same_algorithm(capsys):
    """benchmarks/flat_layout.py times three layouts of one Adam step: they must agree."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    from benchmarks.flat_layout import main, variants

    shapes = make_shapes(2_000, 6)
    grads = [jnp.asarray(np.random.default_rng(k).standard_normal(s), jnp.float32)
             for k, s in enumerate(shapes)]
    finals = {}
    with jax.enable_x64(False):
        for name, (init, step) in variants(shapes).items():
            params = [jnp.ones(s, jnp.float32) for s in shapes]
            state = init(params)
            for _ in range(3):
                params, state = jax.jit(step)(params, state, grads)
            finals[name] = np.concatenate([np.ravel(p) for p in params])
        main(["--size", "2k", "--leaves", "6", "--rounds", "2"])
    assert set(finals) == {"per-leaf", "stacked-mv", "flat", "flat-sliced"}
    for name, got in finals.items():
        np.testing.assert_allclose(got, finals["per-leaf"], rtol=1e-6, err_msg=name)
    assert not np.allclose(finals["per-leaf"], 1.0)  # the steps moved the parameters
    table = capsys.readouterr().out
    assert table.count("| 6 |") == 4 and "fusion" in table


@pytest.mark.parametrize("contender", ["jaxupdate", "optax", "xla-floor"])
def test_jax_contenders_build_for_memory_and_timing(contender):
    """Every JAX contender builds through Case.jax_contender, for timing and for memory."""
    from benchmarks.memory import measure

    res = measure("adam", contender, 200_000, 4, steps=2)
    assert res["xla_memory_analysis"]["alias_size_in_bytes"] > 0  # params and state donated
    assert res["params_grads_state_bytes"] == 4 * 4 * res["params"]


def test_jax_contenders_that_cannot_compile_in_memory_are_dropped_with_a_reason():
    """10,000 leaves took 17 GB to compile (one JAX step); three in one process ran out of
    memory on a 24 GB machine. The benchmark drops what does not fit, jaxupdate last."""
    from benchmarks.update_step import compile_bytes, fit_jax_contenders

    names = ["jaxupdate", "optax", "xla-floor", "torch-fused"]
    assert fit_jax_contenders(names, 100, 10e9) == (names, {})
    kept, dropped = fit_jax_contenders(names, 10_000, 1.5 * compile_bytes(10_000))
    assert kept == ["jaxupdate", "torch-fused"] and set(dropped) == {"optax", "xla-floor"}
    assert "10,000 leaves" in dropped["optax"] and "--max-mem-fraction" in dropped["optax"]
    kept, dropped = fit_jax_contenders(names, 10_000, 1e9)
    assert kept == ["torch-fused"] and set(dropped) == {"jaxupdate", "optax", "xla-floor"}


def test_gpu_preset_settings_and_refusal_without_cuda():
    """``--preset gpu`` (Adam at GPU sizes): Adam at 100M and 1B against torch's CUDA kernels;
    on a machine without a CUDA GPU it stops with a clear message instead of timing CPUs."""
    from benchmarks.__main__ import _parser, _settings, main
    from benchmarks.update_step import _cuda_available, _jax_platform

    st = _settings(_parser().parse_args(["--preset", "gpu"]))
    assert st["grid"] == [(["adam"], [100_000_000, 1_000_000_000], [10, 100])]
    assert "torch-cuda-fused" in st["contenders"] and "torch-fused" not in st["contenders"]
    if _cuda_available() and _jax_platform() == "cuda":
        pytest.skip("this machine has a CUDA GPU: the refusal does not apply")
    with pytest.raises(SystemExit, match="needs a CUDA GPU"):
        main(["--preset", "gpu", "--quiet"])


def test_first_call_split_and_persistent_cache(capsys):
    """benchmarks/first_call.py: trace / lower / compile per contender, and a restarted run's
    first call with jax's persistent compilation cache (no compile, a cache load)."""
    from benchmarks.first_call import main

    assert main(["--leaves", "6", "--size", "6k", "--contenders", "jaxupdate", "xla-floor",
                 "--cache"]) == 0
    out = capsys.readouterr().out
    rows = [ln.split("|")[1:-1] for ln in out.splitlines() if ln.startswith("| 6 |")]
    assert [r[1].strip() for r in rows[:2]] == ["jaxupdate", "xla-floor"]
    assert all(float(x) > 0 for r in rows[:2] for x in r[2:])
    cold, warm = (float(x) for x in rows[2][1:])
    assert 0 < warm < cold  # the second process loads the executable instead of compiling


def test_fused_routes_times_both_layouts(capsys):
    """benchmarks/fused_routes.py: init, the XLA route's jit(update) and jit(ju.step), fused
    against unfused, on a tiny tree."""
    from benchmarks.fused_routes import main, measure

    r = measure(3, 5, steps=1)
    assert set(r) == {"fused", "unfused"}
    for row in r.values():
        assert set(row) == {"init_s", "jit_update_first_call_s", "jit_update_step_ms",
                            "jit_step_first_call_s"}
        assert all(v > 0 for v in row.values())
    assert main(["--leaves", "2", "--floats", "3", "--init-only"]) == 0
    assert "| fused |" in capsys.readouterr().out

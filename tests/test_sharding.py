"""Optimizers on a device Mesh: state placement, ZeRO-1, equality with one device, collectives.

The pytest process has already initialised JAX with one CPU device, so the sharded runs happen
in a subprocess started with ``XLA_FLAGS=--xla_force_host_platform_device_count=8``: this file
run as a script (``python tests/test_sharding.py``) does every check once and prints the
measurements as JSON; the tests below assert on them. The multi-host example
(``examples/multihost.py``: two processes on 127.0.0.1 joined by ``jax.distributed``) is run
the same way.
"""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
N_DEVICES = 8
STEPS = 5

# name -> (elementwise?, constructor source); built in the worker (8 devices) only.
OPTIMIZERS = {
    "sgd_momentum": (True, "sgd(0.05, momentum=0.9, nesterov=True, weight_decay=1e-2)"),
    "adam": (True, "adam(1e-2, amsgrad=True, weight_decay=1e-2)"),
    "adamw_schedule": (True, "adamw(cosine_annealing_lr(1e-2, T_max=10), maximize=True)"),
    "rmsprop": (True, "rmsprop(1e-2, momentum=0.5, centered=True)"),
    # the other elementwise optimizers, each on its own parameter group, in one compiled step
    "others": (True, "multi_transform(OTHERS, lambda p: {k: k for k in p})"),
    # not elementwise: reductions over a parameter (all-reduce expected), results to 1e-15
    "adafactor": (False, "adafactor(1e-2)"),
    "clip_adam": (False, "optax.chain(clip_grad_norm(1.0), adam(1e-2))"),
    "muon": (False, "muon(1e-2)"),
}
OTHERS = {
    "adagrad": "adagrad(0.1, lr_decay=1e-3)",
    "adadelta": "adadelta(1.0, weight_decay=0.1)",
    "adamax": "adamax(1e-2)",
    "nadam": "nadam(1e-2, decoupled_weight_decay=True, weight_decay=0.1)",
    "radam": "radam(1e-2)",
    "asgd": "asgd(1e-2, t0=2)",
    "rprop": "rprop(1e-2)",
    "sgd": "sgd(step_lr(0.1, step_size=2), momentum=0.9, dampening=0.1)",
}
ZERO1 = ("adam", "sgd_momentum")
COLLECTIVES = ("all-gather", "all-reduce", "reduce-scatter", "collective-permute", "all-to-all")


def _run_script(args, timeout, env_extra=None):
    env = dict(os.environ)
    env.update(JAX_PLATFORMS="cpu", PYTHONPATH=str(ROOT), **(env_extra or {}))
    return subprocess.run(
        [sys.executable, *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.fixture(scope="module")
def results():
    proc = _run_script(
        [__file__],
        timeout=240,
        env_extra={"XLA_FLAGS": f"--xla_force_host_platform_device_count={N_DEVICES}"},
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_worker_saw_eight_devices(results):
    assert results["devices"] == N_DEVICES


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_state_takes_param_shardings(results, name):
    r = results["opt"][name]
    # every state leaf lives on the mesh (no stray single-device counter) ...
    assert r["state_on_mesh"], r
    # ... each leaf mirroring a parameter has that parameter's PartitionSpec (both as
    # state_sharding computed it and as init + 5 jitted steps left it)
    assert r["param_like_leaves"] > 0 or name == "adafactor", r
    assert r["param_like_mismatch"] == [], r["param_like_mismatch"]
    assert r["spec_after_steps_mismatch"] == [], r["spec_after_steps_mismatch"]


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_sharded_equals_single_device(results, name):
    r = results["opt"][name]
    if OPTIMIZERS[name][0]:
        # elementwise: the same arithmetic on each shard, bit for bit
        assert r["bitwise"], r["max_rel_diff"]
    else:
        # reductions split across devices are summed in another order: rounding only
        # (measured: 0 or ~1e-16 over 5 steps in float64)
        assert r["max_rel_diff"] <= 1e-15, r["max_rel_diff"]


ELEMENTWISE = sorted(n for n, (elementwise, _) in OPTIMIZERS.items() if elementwise)


@pytest.mark.parametrize("name", ELEMENTWISE)
def test_elementwise_step_has_no_collective(results, name):
    counts = results["opt"][name]["collectives"]
    assert counts["all-gather"] == 0, counts
    # nothing else either: each device updates its own shards
    assert sum(counts.values()) == 0, counts


def test_global_norm_clipping_needs_only_an_all_reduce(results):
    counts = results["opt"]["clip_adam"]["collectives"]
    assert counts["all-gather"] == 0 and counts["all-reduce"] >= 1, counts


@pytest.mark.parametrize("name", ZERO1)
def test_zero1_partitions_state_along_data(results, name):
    z = results["zero1"][name]
    # every moment buffer of shape (16, 8) / (8,) / (12,) is split 4 ways along 'data'
    # (scalars and counters stay replicated): per-device state memory drops accordingly
    assert z["state_bytes_per_device"] < z["plain_state_bytes_per_device"] / 2, z
    assert z["data_axis_leaves"] > 0, z
    assert z["measured_bytes_device0"] == z["state_bytes_per_device"], z
    assert z["bitwise"], z["max_rel_diff"]
    # ZeRO-1's one collective: the updates are all-gathered back to the replicated params
    assert z["collectives"]["all-gather"] >= 1, z["collectives"]
    assert z["collectives"]["all-reduce"] == 0, z["collectives"]


def test_sharded_checkpoint_restores_into_another_layout(results):
    c = results["checkpoint"]
    # saved with ZeRO-1 state shardings, restored with the parameters' shardings
    assert c["step"] == STEPS and c["bitwise"] and c["shardings_as_asked"], c


def test_explicit_mesh_state_by_construction(results):
    e = results["explicit"]
    # with Explicit mesh axes (jax.make_mesh's default), tx.init itself gives the state the
    # parameters' shardings, and the jitted step needs no annotations
    assert e["param_like_mismatch"] == [], e
    assert e["bitwise"], e["max_rel_diff"]
    assert e["collectives"]["all-gather"] == 0, e["collectives"]


def test_multihost_example_two_processes(tmp_path):
    """examples/multihost.py: two processes on 127.0.0.1, jax.distributed, gloo collectives;
    sharded training, a sharded checkpoint saved and restored by both, results compared."""
    import jax

    if "jax_cpu_collectives_implementation" not in jax.config.values:
        pytest.skip("this jax has no CPU collectives option (jax_cpu_collectives_implementation)")
    proc = _run_script(
        ["examples/multihost.py", "--steps", "4", "--checkpoint-dir", str(tmp_path / "ckpt")],
        timeout=180,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    assert "both processes agree" in proc.stdout, out[-4000:]
    assert proc.stdout.count("matches the single-device run") == 2, out[-4000:]
    assert proc.stdout.count("saved and restored: this process's shards identical") == 2, out
    assert sorted(os.listdir(tmp_path / "ckpt")) == ["4"]


# ---------------------------------------------------------------------------------------------
# The worker: run as a script with 8 host devices.


def _worker():  # noqa: C901 - one linear script of measurements
    import time

    import jax

    jax.config.update("jax_enable_x64", True)
    import numpy as np
    import optax
    from jax.sharding import AxisType, Mesh, NamedSharding
    from jax.sharding import PartitionSpec as P

    from jaxupdate import sharding as jus
    from jaxupdate.clip_grad import clip_grad_norm
    from jaxupdate.lr_scheduler import cosine_annealing_lr, step_lr
    from jaxupdate.optim.adadelta import adadelta
    from jaxupdate.optim.adafactor import adafactor
    from jaxupdate.optim.adagrad import adagrad
    from jaxupdate.optim.adam import adam, adamw
    from jaxupdate.optim.adamax import adamax
    from jaxupdate.optim.asgd import asgd
    from jaxupdate.optim.muon import muon
    from jaxupdate.optim.nadam import nadam
    from jaxupdate.optim.radam import radam
    from jaxupdate.optim.rmsprop import rmsprop
    from jaxupdate.optim.rprop import rprop
    from jaxupdate.optim.sgd import sgd

    ns = dict(
        optax=optax,
        multi_transform=optax.multi_transform,
        clip_grad_norm=clip_grad_norm,
        cosine_annealing_lr=cosine_annealing_lr,
        step_lr=step_lr,
        adadelta=adadelta,
        adafactor=adafactor,
        adagrad=adagrad,
        adam=adam,
        adamw=adamw,
        adamax=adamax,
        asgd=asgd,
        muon=muon,
        nadam=nadam,
        radam=radam,
        rmsprop=rmsprop,
        rprop=rprop,
        sgd=sgd,
    )
    ns["OTHERS"] = {k: eval(v, ns) for k, v in OTHERS.items()}  # noqa: S307 - strings above

    devices = jax.devices()
    out = {"devices": len(devices), "opt": {}, "zero1": {}}
    mesh = Mesh(np.array(devices).reshape(4, 2), ("data", "model"))
    one = devices[0]
    rng = np.random.default_rng(0)

    # parameter name -> (shape, spec); "c" is complex: its state is the real view (4, 2, 2)
    layout = {
        "w": ((16, 8), P(None, "model")),
        "b": ((8,), P("model")),
        "v": ((12,), P()),
        "s": ((), P()),
        "c": ((4, 2), P(None, "model")),
    }

    def problem(keys, groups=None):
        def draw(k):
            x = rng.standard_normal(layout[k][0])
            return x + 1j * rng.standard_normal(layout[k][0]) if k == "c" else x

        def tree():
            if groups is None:
                return {k: draw(k) for k in keys}
            return {g: {k: draw(k) for k in keys} for g in groups}

        def specs():
            sp = {k: NamedSharding(mesh, layout[k][1]) for k in keys}
            return sp if groups is None else {g: dict(sp) for g in groups}

        return tree(), [tree() for _ in range(STEPS)], specs()

    def step_fn(tx):
        def step(params, state, grads):
            updates, state = tx.update(grads, state, params)
            return optax.apply_updates(params, updates), state

        return step

    def count_collectives(text):
        return {c: text.count(f" {c}(") + text.count(f" {c}-start(") for c in COLLECTIVES}

    def compare(traj, ref):
        bit, worst = True, 0.0
        for a, b in zip(traj, ref, strict=True):
            for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
                x, y = np.asarray(x), np.asarray(y)
                bit = bit and np.array_equal(x, y)
                if y.size:
                    scale = max(float(np.max(np.abs(y))), 1e-300)
                    worst = max(worst, float(np.max(np.abs(x - y))) / scale)
        return bit, worst

    def run(compiled, params, state, grads, shardings):
        traj = []
        for g in grads:
            params, state = compiled(params, state, jax.device_put(g, shardings))
            traj.append((params, state))
        return traj

    def norm_spec(spec, ndim):
        return tuple(spec) + (None,) * (ndim - len(tuple(spec)))

    def mirror_check(params, shardings, state):
        """State leaves mirroring a parameter (path suffix, same shape or complex real view):
        their spec (computed, and after the steps) must be the parameter's."""
        p_flat = {tuple(path): x for path, x in jax.tree_util.tree_flatten_with_path(params)[0]}
        n, bad, bad_after = 0, [], []
        for (path, sh), x in zip(
            jax.tree_util.tree_flatten_with_path(shardings)[0],
            jax.tree.leaves(state),
            strict=True,
        ):
            path = tuple(path)
            hits = [path[-k:] for k in range(len(path), 0, -1) if path[-k:] in p_flat]
            if not hits or x.shape not in (
                np.shape(p_flat[hits[0]]),
                np.shape(p_flat[hits[0]]) + (2,),
            ):
                continue
            n += 1
            want = norm_spec(layout[hits[0][-1].key][1], x.ndim)
            if norm_spec(sh.spec, x.ndim) != want:
                bad.append(jax.tree_util.keystr(path))
            if norm_spec(x.sharding.spec, x.ndim) != want:
                bad_after.append(jax.tree_util.keystr(path))
        return n, bad, bad_after

    def sharded_and_single(tx, params0, grads, psh, state_sh):
        params = jax.device_put(params0, psh)
        state = jus.init(tx, params, state_sh)
        step = jax.jit(
            step_fn(tx), in_shardings=(psh, state_sh, psh), out_shardings=(psh, state_sh)
        )
        compiled = step.lower(params, state, params).compile()
        traj = run(compiled, params, state, grads, psh)
        # the reference: the same initial state and gradients on one device
        params1, state1 = jax.device_put((params0, state), one)
        ref = run(jax.jit(step_fn(tx)), params1, state1, grads, one)
        return state, traj, ref, compiled.as_text()

    clock = time.process_time
    out["cpu_seconds"] = {"imports": clock()}
    for name, (_, src) in OPTIMIZERS.items():
        t0 = clock()
        tx = eval(src, ns)  # noqa: S307 - constructor strings defined above
        keys = {"muon": ("w",), "adafactor": ("w", "b", "v", "s"), "others": ("w", "b")}.get(
            name, tuple(layout)
        )
        groups = tuple(OTHERS) if name == "others" else None
        params0, grads, psh = problem(keys, groups)
        shardings = jus.state_sharding(tx, params0, param_shardings=psh)
        state, traj, ref, text = sharded_and_single(tx, params0, grads, psh, shardings)
        n, bad, bad_after = mirror_check(params0, shardings, traj[-1][1])
        bit, worst = compare(traj, ref)
        out["cpu_seconds"][name] = clock() - t0
        out["opt"][name] = {
            "state_on_mesh": all(
                isinstance(x.sharding, NamedSharding) and x.sharding.mesh == mesh
                for x in jax.tree.leaves(traj[-1][1])
            ),
            "param_like_leaves": n,
            "param_like_mismatch": bad,
            "spec_after_steps_mismatch": bad_after,
            "bitwise": bit,
            "max_rel_diff": worst,
            "collectives": count_collectives(text),
        }

    # ZeRO-1: parameters replicated along 'data', state split along it
    for name in ZERO1:
        t0 = clock()
        tx = eval(OPTIMIZERS[name][1], ns)  # noqa: S307
        params0, grads, psh = problem(("w", "b", "v", "s"))
        plain = jus.state_sharding(tx, params0, param_shardings=psh)
        z = jus.state_sharding(tx, params0, zero1_axis="data", param_shardings=psh)
        state, traj, ref, text = sharded_and_single(tx, params0, grads, psh, z)
        bit, worst = compare(traj, ref)

        def per_device_bytes(shardings, state=state):
            return sum(
                int(np.prod(sh.shard_shape(x.shape))) * x.dtype.itemsize
                for sh, x in zip(jax.tree.leaves(shardings), jax.tree.leaves(state), strict=True)
            )

        out["cpu_seconds"]["zero1_" + name] = clock() - t0
        out["zero1"][name] = {
            "state_bytes_per_device": per_device_bytes(z),
            "plain_state_bytes_per_device": per_device_bytes(plain),
            "measured_bytes_device0": sum(
                x.addressable_shards[0].data.nbytes for x in jax.tree.leaves(state)
            ),
            "data_axis_leaves": sum(
                "data" in jax.tree.leaves(tuple(x.spec)) for x in jax.tree.leaves(z)
            ),
            "bitwise": bit,
            "max_rel_diff": worst,
            "collectives": count_collectives(text),
        }

        if name == "adam":
            # a sharded checkpoint: saved ZeRO-1, restored into the plain layout (each device
            # reads only its shards), bit for bit
            import tempfile

            from jaxupdate.checkpoint import restore, save

            final_params, final_state = traj[-1]
            with tempfile.TemporaryDirectory() as d:
                save(d, final_params, final_state, step=STEPS)
                like = lambda tree, shardings: jax.tree.map(  # noqa: E731
                    lambda a, sh: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=sh),
                    tree,
                    shardings,
                )
                r = restore(d, like(final_params, psh), like(final_state, plain))
            bit_ck, _ = compare([(r.params, r.opt_state)], [(final_params, final_state)])
            out["checkpoint"] = {
                "bitwise": bit_ck,
                "shardings_as_asked": all(
                    x.sharding == s
                    for x, s in zip(
                        jax.tree.leaves(r.opt_state), jax.tree.leaves(plain), strict=True
                    )
                ),
                "step": r.step,
            }

    # Explicit mesh axes: shardings flow through tx.init and the step by construction
    t0 = clock()
    emesh = jax.make_mesh((4, 2), ("data", "model"), axis_types=(AxisType.Explicit,) * 2)
    tx = adam(1e-2, amsgrad=True)
    keys = ("w", "b", "v", "s")
    params0, grads, _ = problem(keys)
    with jax.set_mesh(emesh):
        psh = {k: NamedSharding(emesh, layout[k][1]) for k in keys}
        params = jax.device_put(params0, psh)
        state = tx.init(params)
        step = jax.jit(step_fn(tx))
        text = step.lower(params, state, params).compile().as_text()
        traj = run(step, params, state, grads, psh)
    ref = run(jax.jit(step_fn(tx)), *jax.device_put((params0, tx.init(params0)), one), grads, one)
    bit, worst = compare(traj, ref)
    bad = [
        jax.tree_util.keystr(path)
        for path, x in jax.tree_util.tree_flatten_with_path(traj[-1][1])[0]
        if getattr(path[-1], "key", None) in psh
        and norm_spec(x.sharding.spec, x.ndim) != norm_spec(layout[path[-1].key][1], x.ndim)
    ]
    out["explicit"] = {
        "param_like_mismatch": bad,
        "bitwise": bit,
        "max_rel_diff": worst,
        "collectives": count_collectives(text),
    }
    out["cpu_seconds"]["explicit"] = clock() - t0
    print(json.dumps(out))


if __name__ == "__main__":
    _worker()

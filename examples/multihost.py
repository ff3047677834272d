"""Training across hosts: two processes joined by ``jax.distributed``, a sharded jaxupdate Adam.

Run it on one machine (it starts the processes itself, on 127.0.0.1, each with 2 CPU devices)::

    python examples/multihost.py               # 2 processes x 2 devices, 5 steps
    python examples/multihost.py --steps 20 --devices-per-process 4
    python examples/multihost.py --checkpoint-dir /tmp/ckpt    # + a sharded checkpoint

On real hosts, start one worker per host with the coordinator's address (the same command on
every host, its own ``--process-id``)::

    python examples/multihost.py --worker --coordinator 10.0.0.1:12355 \\
        --num-processes 2 --process-id 0          # on host 0 (host 1: --process-id 1)

What each worker does: ``jax.distributed.initialize`` joins the processes into one set of global
devices; a ``Mesh`` ``('data', 'model')`` puts the ``data`` axis across processes and
``model`` within one; the parameters are split along ``model``, the batch along ``data``, and
Adam's state ZeRO-1 style along ``data`` too (``jaxupdate.sharding.state_sharding(...,
zero1_axis='data')``), so each process holds half of it. After the steps every process
gathers the parameters, compares them with a single-device run of the same steps on its own
CPU, and the processes compare fingerprints of what they hold: they must agree bit for bit.
With ``--checkpoint-dir`` each process also saves and restores its shards of a checkpoint
(``jaxupdate.checkpoint``; the directory must be one all processes see).

The workers run on CPU: their processes talk through gloo
(``jax_cpu_collectives_implementation='gloo'``) and each fakes several devices
(``--xla_force_host_platform_device_count``). On GPU or TPU hosts drop those two settings and
``JAX_PLATFORMS=cpu``: JAX uses NCCL / ICI, and the rest is unchanged.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import socket
import subprocess
import sys
import time


def worker(args) -> None:
    os.environ["XLA_FLAGS"] = (
        os.environ.get("XLA_FLAGS", "")
        + f" --xla_force_host_platform_device_count={args.devices_per_process}"
    )
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    import jax

    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(
        coordinator_address=args.coordinator,
        num_processes=args.num_processes,
        process_id=args.process_id,
        initialization_timeout=60,
    )
    import jax.numpy as jnp
    import numpy as np
    from jax.experimental import multihost_utils
    from jax.sharding import Mesh, NamedSharding
    from jax.sharding import PartitionSpec as P

    import jaxupdate as ju
    from jaxupdate import sharding as jus

    me, n = jax.process_index(), jax.process_count()
    say = lambda msg: print(f"[process {me}/{n}] {msg}", flush=True)  # noqa: E731
    say(f"{jax.local_device_count()} local devices, {jax.device_count()} global")

    # 'data' spans the processes (devices are listed process by process), 'model' stays inside
    mesh = Mesh(np.array(jax.devices()).reshape(n, -1), ("data", "model"))

    # the same data on every process (same seed); each one only materialises its own shards
    rng = np.random.default_rng(0)
    batch, d_in, d_out = 16 * n, 16, 4 * mesh.shape["model"]
    x_all = rng.standard_normal((batch, d_in)).astype(np.float32)
    w_true = rng.standard_normal((d_in, d_out)).astype(np.float32)
    y_all = x_all @ w_true + 0.1 * rng.standard_normal((batch, d_out)).astype(np.float32)
    p_all = {"w": np.zeros((d_in, d_out), np.float32), "b": np.zeros((d_out,), np.float32)}

    def global_array(value, spec):
        sharding = NamedSharding(mesh, spec)
        return jax.make_array_from_callback(value.shape, sharding, lambda idx: value[idx])

    p_spec = {"w": P(None, "model"), "b": P("model")}
    p_sh = {k: NamedSharding(mesh, s) for k, s in p_spec.items()}
    params = {k: global_array(v, p_spec[k]) for k, v in p_all.items()}
    x = global_array(x_all, P("data", None))
    y = global_array(y_all, P("data", "model"))

    tx = ju.adam(lr=5e-2)
    state_sh = jus.state_sharding(tx, params, zero1_axis="data")
    opt_state = jus.init(tx, params, state_sh)
    mu_w = opt_state[0].exp_avg["w"]
    say(
        f"Adam state exp_avg['w'] {mu_w.shape} spec {mu_w.sharding.spec}: this process holds "
        f"{sum(s.data.size for s in mu_w.addressable_shards)} of {mu_w.size} elements"
    )

    def loss_fn(p, x, y):
        return jnp.mean((x @ p["w"] + p["b"] - y) ** 2)

    def train_step(p, s, x, y):
        loss, grads = jax.value_and_grad(loss_fn)(p, x, y)
        updates, s = tx.update(grads, s, p)
        return ju.apply_updates(p, updates), s, loss

    rep = NamedSharding(mesh, P())
    step = jax.jit(
        train_step,
        in_shardings=(p_sh, state_sh, x.sharding, y.sharding),
        out_shardings=(p_sh, state_sh, rep),
    )
    for i in range(args.steps):
        params, opt_state, loss = step(params, opt_state, x, y)
        say(f"step {i + 1}: loss {float(loss):.6f}")

    if args.checkpoint_dir:
        # every process calls save/restore alike: each writes and reads its own shards, and
        # the step is committed once, by process 0, after all have written
        from jaxupdate import checkpoint

        checkpoint.save(args.checkpoint_dir, params, opt_state, step=args.steps)
        like = jax.tree.map(
            lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=a.sharding),
            (params, opt_state),
        )
        r = checkpoint.restore(args.checkpoint_dir, *like)
        mine = jax.tree.leaves((params, opt_state))
        restored = jax.tree.leaves((r.params, r.opt_state))
        same = all(
            np.array_equal(np.asarray(a.data), np.asarray(b.data))
            for x, y in zip(mine, restored)
            for a, b in zip(x.addressable_shards, y.addressable_shards)
        )
        if not same:
            raise SystemExit(f"[process {me}/{n}] the restored checkpoint differs")
        say(f"checkpoint of step {r.step} saved and restored: this process's shards identical")

    # every process gathers the full parameters (a collective: all processes take part)
    final = multihost_utils.process_allgather(params, tiled=True)

    # the single-device reference, on this process's own first CPU device
    local = jax.local_devices()[0]
    ref_step = jax.jit(train_step)
    rp, rx, ry = jax.device_put((p_all, x_all, y_all), local)
    rs = tx.init(rp)
    for _ in range(args.steps):
        rp, rs, _ = ref_step(rp, rs, rx, ry)
    worst = max(
        float(np.max(np.abs(final[k] - np.asarray(rp[k]))) / np.max(np.abs(np.asarray(rp[k]))))
        for k in final
    )
    # float32, and the batch sum is split across processes (another summation order): rounding
    if worst > 1e-5:
        raise SystemExit(f"[process {me}/{n}] differs from the single-device run: {worst:.2e}")
    say(f"matches the single-device run (max relative difference {worst:.1e})")

    digest = hashlib.sha256(
        b"".join(np.ascontiguousarray(final[k]).tobytes() for k in sorted(final))
    ).digest()
    all_digests = multihost_utils.process_allgather(np.frombuffer(digest, np.uint8))
    if not all(np.array_equal(all_digests[0], d) for d in all_digests):
        raise SystemExit(f"[process {me}/{n}] processes disagree")
    say(f"fingerprint {digest.hex()[:16]}")
    if me == 0:
        say(f"both processes agree: {n} processes hold bit-identical parameters")
    jax.distributed.shutdown()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(args) -> int:
    coordinator = f"127.0.0.1:{free_port()}"
    base = [
        sys.executable,
        os.path.abspath(__file__),
        "--worker",
        "--coordinator",
        coordinator,
        "--num-processes",
        str(args.num_processes),
        "--devices-per-process",
        str(args.devices_per_process),
        "--steps",
        str(args.steps),
    ]
    if args.checkpoint_dir:
        base += ["--checkpoint-dir", os.path.abspath(args.checkpoint_dir)]
    print(f"starting {args.num_processes} processes, coordinator {coordinator}", flush=True)
    t0 = time.perf_counter()
    procs = [
        subprocess.Popen(
            [*base, "--process-id", str(i)],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for i in range(args.num_processes)
    ]
    outputs, codes = [], []
    deadline = time.monotonic() + args.timeout
    for p in procs:
        try:
            out, _ = p.communicate(timeout=max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            out, _ = p.communicate()
            out += f"\n(killed after {args.timeout} s)"
        outputs.append(out)
        codes.append(p.returncode)
    for i, out in enumerate(outputs):
        lines = [ln for ln in out.splitlines() if ln.startswith("[process") or codes[i]]
        print("\n".join(lines), flush=True)
    prints = [
        ln.split("fingerprint ")[1]
        for out in outputs
        for ln in out.splitlines()
        if "fingerprint" in ln
    ]
    ok = all(c == 0 for c in codes) and len(prints) == args.num_processes and len(set(prints)) == 1
    print(f"{'OK' if ok else 'FAILED'}: exit codes {codes}, {time.perf_counter() - t0:.1f} s")
    return 0 if ok else 1


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--worker", action="store_true", help="run one process (else: launch all)")
    ap.add_argument("--coordinator", default="127.0.0.1:12355", help="host:port of process 0")
    ap.add_argument("--num-processes", type=int, default=2)
    ap.add_argument("--process-id", type=int, default=0)
    ap.add_argument("--devices-per-process", type=int, default=2)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--timeout", type=float, default=120.0, help="launcher: seconds in all")
    ap.add_argument(
        "--checkpoint-dir",
        help="also save and restore a sharded checkpoint there (a directory all processes see)",
    )
    args = ap.parse_args()
    if args.worker:
        worker(args)
        return 0
    return launch(args)


if __name__ == "__main__":
    sys.exit(main())

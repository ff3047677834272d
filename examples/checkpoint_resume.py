"""Save, crash, restore, resume: the resumed run is bitwise identical to an uninterrupted one.

    python examples/checkpoint_resume.py [--directory DIR]     # a few seconds

A small regression trained with gradient clipping and AdamW on a cosine schedule (the
schedule's position lives in the optimizer's step counter, which the checkpoint holds). The
run saves every 5 steps with ``jaxupdate.checkpoint.CheckpointManager`` (keeping the newest
2), "crashes" at step 13, and a fresh start rebuilds the optimizer, restores the latest
complete checkpoint (step 10) into templates made with ``jax.eval_shape``, and trains on to
step 20. The final parameters and optimizer state are compared, byte for byte, with a run
that never stopped.
"""

from __future__ import annotations

import argparse
import sys
import tempfile

import jax
import jax.numpy as jnp
import numpy as np
import optax

import jaxupdate as ju
from jaxupdate import checkpoint
from jaxupdate.lr_scheduler import cosine_annealing_lr

STEPS, SAVE_EVERY, CRASH_AT = 20, 5, 13


def make_optimizer():
    """The same code builds the optimizer before and after the crash."""
    return optax.chain(
        ju.clip_grad_norm(max_norm=1.0),
        ju.adamw(lr=cosine_annealing_lr(3e-2, T_max=STEPS), weight_decay=1e-2),
    )


def data(step):
    """Batch ``step`` of a deterministic stream (a data loader positioned by the step)."""
    rng = np.random.default_rng(step)
    x = rng.standard_normal((32, 8)).astype(np.float32)
    y = x @ np.linspace(-1.0, 1.0, 8, dtype=np.float32) + 0.5
    return x, y


def init_params():
    return {"w": jnp.zeros(8, jnp.float32), "b": jnp.zeros((), jnp.float32)}


def make_step(tx):
    def loss_fn(p, x, y):
        return jnp.mean((x @ p["w"] + p["b"] - y) ** 2)

    @jax.jit
    def step(params, opt_state, x, y):
        loss, grads = jax.value_and_grad(loss_fn)(params, x, y)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    return step


def train(params, opt_state, step_fn, start, stop, mgr=None):
    loss = None
    for s in range(start, stop):
        params, opt_state, loss = step_fn(params, opt_state, *data(s))
        done = s + 1
        if mgr is not None and done % SAVE_EVERY == 0:
            mgr.save(done, params, opt_state, extra={"next_batch": done})
    return params, opt_state, loss


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--directory", help="checkpoint directory (default: a temporary one)")
    args = ap.parse_args(argv)
    directory = args.directory or tempfile.mkdtemp(prefix="jaxupdate-ckpt-")

    # 1. the reference: 20 steps without interruption
    tx = make_optimizer()
    params, opt_state = init_params(), tx.init(init_params())
    want_params, want_state, want_loss = train(params, opt_state, make_step(tx), 0, STEPS)

    # 2. the same run, saving every 5 steps, killed at step 13 (steps 11-13 are lost)
    with checkpoint.CheckpointManager(directory, max_to_keep=2) as mgr:
        params, opt_state = init_params(), tx.init(init_params())
        train(params, opt_state, make_step(tx), 0, CRASH_AT, mgr)
        print(f"crashed at step {CRASH_AT}; checkpoints on disk: steps {mgr.all_steps()}")
    del tx, params, opt_state

    # 3. a fresh start: rebuild the optimizer, restore into templates, resume
    tx = make_optimizer()
    params_like = jax.eval_shape(init_params)
    opt_state_like = jax.eval_shape(tx.init, params_like)
    r = checkpoint.restore(directory, params_like, opt_state_like)
    # the optimizer's own step count (torch's `step`, what schedules read) came back with it
    print(f"restored step {r.step} (next batch {r.extra['next_batch']}; optimizer step count "
          f"{int(ju.transforms.step_count(r.opt_state))})")
    params, opt_state, loss = train(
        r.params, r.opt_state, make_step(tx), r.extra["next_batch"], STEPS
    )

    same = all(
        np.asarray(a).tobytes() == np.asarray(b).tobytes()
        for a, b in zip(
            jax.tree.leaves((params, opt_state)), jax.tree.leaves((want_params, want_state))
        )
    ) and jax.tree.structure(opt_state) == jax.tree.structure(want_state)
    print(f"final loss {float(loss):.6f} (uninterrupted {float(want_loss):.6f})")
    print(f"resumed run vs uninterrupted run, parameters and optimizer state: "
          f"bitwise identical: {same}")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())

"""Checkpoints (jaxupdate.checkpoint, orbax): bitwise resumption, torn saves, clear mismatches."""

from __future__ import annotations

import os
import pathlib
import runpy
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxupdate.checkpoint import CheckpointManager, all_steps, latest_step, restore, save
from jaxupdate.clip_grad import clip_grad_norm
from jaxupdate.optim.adafactor import adafactor
from jaxupdate.optim.adagrad import adagrad
from jaxupdate.optim.adam import adam, adamw
from jaxupdate.optim.asgd import asgd
from jaxupdate.optim.muon import muon
from jaxupdate.optim.nadam import nadam
from jaxupdate.optim.rmsprop import rmsprop
from jaxupdate.optim.rprop import rprop
from jaxupdate.optim.sgd import sgd

ROOT = pathlib.Path(__file__).resolve().parents[1]

try:  # the scheduler package (ReduceLROnPlateau keeps state in the optimizer state)
    from jaxupdate.lr_scheduler import (
        cosine_annealing_lr,
        get_hyperparams,
        inject_hyperparams,
        reduce_lr_on_plateau,
        step_lr,
    )

    HAVE_SCHEDULERS = True
except ImportError:  # pragma: no cover - lr_scheduler arrives with another change
    HAVE_SCHEDULERS = False

needs_schedulers = pytest.mark.skipif(
    not HAVE_SCHEDULERS, reason="jaxupdate.lr_scheduler is not there yet"
)

# Parameters of every dtype an optimizer state can hold. "c" is complex (state in its real
# view), "h" bfloat16 (state in bfloat16, as torch).
MIXED = {
    "w": ((3, 4), jnp.float64),
    "b": ((5,), jnp.float32),
    "c": ((2,), jnp.complex128),
    "h": ((3,), jnp.bfloat16),
}
REAL = {"w": ((3, 4), jnp.float64), "b": ((5,), jnp.float32), "h": ((3,), jnp.bfloat16)}
MATRICES = {"w": ((4, 3), jnp.float32), "v": ((2, 5), jnp.float64)}


def _configs():
    c = {
        # amsgrad=False: the state has a None field (max_exp_avg_sq)
        "adam": (lambda: adam(1e-2, weight_decay=1e-2), MIXED),
        "adamw_amsgrad": (lambda: adamw(1e-2, amsgrad=True), MIXED),
        # no momentum: a state of counters only
        "sgd_plain": (lambda: sgd(0.1), MIXED),
        "sgd_nesterov": (lambda: sgd(0.05, momentum=0.9, nesterov=True), MIXED),
        "rmsprop_centered": (lambda: rmsprop(1e-2, momentum=0.5, centered=True), MIXED),
        "nadam": (lambda: nadam(1e-2, decoupled_weight_decay=True, weight_decay=0.1), MIXED),
        "asgd": (lambda: asgd(1e-2, t0=3), MIXED),  # eta, mu: scalars evolving in the state
        "rprop": (lambda: rprop(1e-2), MIXED),
        # optax.EmptyState fields and None leaves inside dicts (factored/unfactored moments)
        "adafactor": (lambda: adafactor(1e-2), REAL),
        "clip_muon": (lambda: optax.chain(clip_grad_norm(1.0), muon(1e-2)), MATRICES),
    }
    if HAVE_SCHEDULERS:
        c["adam_cosine"] = (lambda: adam(cosine_annealing_lr(1e-2, T_max=4)), MIXED)
        # schedule state and hyperparameters held in opt_state (torch's param_group)
        c["inject_step_lr"] = (
            lambda: inject_hyperparams(sgd)(lr=step_lr(0.1, step_size=2), momentum=0.9),
            MIXED,
        )
        # ReduceLROnPlateau: best, num_bad_epochs, cooldown_counter, last_epoch, lr
        c["inject_plateau"] = (
            lambda: inject_hyperparams(adam)(
                lr=reduce_lr_on_plateau(0.1, patience=1, factor=0.5, threshold=0.5)
            ),
            MIXED,
        )
    return c


CONFIGS = _configs()
STEPS, SAVE_AT = 8, 5


def _problem(layout, seed=0):
    rng = np.random.default_rng(seed)

    def draw(shape, dtype):
        x = rng.standard_normal(shape)
        if jnp.issubdtype(dtype, jnp.complexfloating):
            x = x + 1j * rng.standard_normal(shape)
        return jnp.asarray(x, dtype)

    params = {k: draw(s, d) for k, (s, d) in layout.items()}
    # a target per step: the gradient depends on the parameters *and* on the step, so a
    # resumed run must get both right to agree
    targets = [{k: draw(s, d) for k, (s, d) in layout.items()} for _ in range(STEPS)]
    return params, targets


def _step_fn(tx):
    @jax.jit
    def step(params, state, target):
        grads = jax.tree.map(lambda p, t: (p - t) * 2, params, target)
        loss = sum(jnp.sum(jnp.abs(g.astype(jnp.complex128)) ** 2) for g in jax.tree.leaves(grads))
        updates, state = tx.update(grads, state, params, value=loss)
        return optax.apply_updates(params, updates), state

    return step


def _assert_bitwise(a, b, what):
    assert jax.tree.structure(a) == jax.tree.structure(b), what
    for (path, x), y in zip(jax.tree_util.tree_flatten_with_path(a)[0], jax.tree.leaves(b)):
        x, y = np.asarray(x), np.asarray(y)
        assert x.dtype == y.dtype and x.shape == y.shape, (what, jax.tree_util.keystr(path))
        assert x.tobytes() == y.tobytes(), f"{what}{jax.tree_util.keystr(path)} differs"


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_resume_after_restore_is_bitwise(tmp_path, name):
    make_tx, layout = CONFIGS[name]
    params0, targets = _problem(layout)

    # uninterrupted run
    tx = make_tx()
    step = _step_fn(tx)
    params, state = params0, tx.init(params0)
    for t in targets:
        params, state = step(params, state, t)
    want_params, want_state = params, state

    # interrupted: SAVE_AT steps, save, forget everything, restore into fresh templates
    params, state = params0, tx.init(params0)
    for t in targets[:SAVE_AT]:
        params, state = step(params, state, t)
    saved_state = jax.tree.map(np.asarray, state)
    save(tmp_path, params, state, step=SAVE_AT, extra={"targets_seen": SAVE_AT})
    del params, state, tx

    # templates from a rebuilt optimizer (hyperparameters live in code, not in the state);
    # the compiled step is reused: recompiling the same code would only cost time
    tx = make_tx()
    params_like = jax.eval_shape(lambda: params0)
    r = restore(tmp_path, params_like, jax.eval_shape(tx.init, params_like))
    assert r.step == SAVE_AT and r.extra == {"targets_seen": SAVE_AT}
    _assert_bitwise(r.opt_state, saved_state, "restored state")
    params, state = r.params, r.opt_state
    for t in targets[r.extra["targets_seen"] :]:
        params, state = step(params, state, t)

    _assert_bitwise(params, want_params, "params")
    _assert_bitwise(state, want_state, "opt_state")


@needs_schedulers
def test_plateau_state_really_moved_before_the_save(tmp_path):
    """The plateau test above is only meaningful if the plateau's state changes mid-run."""
    make_tx, layout = CONFIGS["inject_plateau"]
    params, targets = _problem(layout)
    tx = make_tx()
    step = _step_fn(tx)
    state = tx.init(params)
    for t in targets[:SAVE_AT]:
        params, state = step(params, state, t)
    plateau = state.hyperparams_states["lr"]
    assert float(get_hyperparams(state)["lr"]) < 0.1  # reduced at least once
    assert int(plateau.last_epoch) == SAVE_AT
    save(tmp_path, params, state, step=SAVE_AT)
    r = restore(tmp_path, params, tx.init(params))
    assert float(r.opt_state.hyperparams["lr"]) == float(state.hyperparams["lr"])
    _assert_bitwise(r.opt_state.hyperparams_states, state.hyperparams_states, "plateau")


# A child process saves step 1, then is killed (SIGKILL: no cleanup, no exception handler)
# while saving step 2, at the point `mode` names.
CRASH_SCRIPT = textwrap.dedent(
    """
    import os, signal, sys
    import jax
    jax.config.update("jax_enable_x64", True)
    import numpy as np
    from jaxupdate.checkpoint import save
    from jaxupdate.optim.adam import adam

    directory, mode = sys.argv[1], sys.argv[2]
    tx = adam(1e-3)
    params = {"w": np.arange(12.0).reshape(3, 4), "b": np.ones(5)}
    state = tx.init(params)
    save(directory, params, state, step=1)

    def die():
        sys.stdout.flush()
        os.kill(os.getpid(), signal.SIGKILL)

    if mode == "mid-write":
        # after the first array of step 2 is written, before the others
        from orbax.checkpoint._src.serialization import serialization
        original = serialization.async_serialize_from_host
        calls = []

        async def write_then_die(*args, **kwargs):
            calls.append(1)
            if len(calls) > 1:
                die()
            return await original(*args, **kwargs)

        serialization.async_serialize_from_host = write_then_die
    else:
        # every byte of step 2 written, killed before the atomic rename commits it
        from orbax.checkpoint._src.path import atomicity

        async def die_instead(*args, **kwargs):
            die()

        atomicity.async_path.rename = die_instead
    params2 = {"w": -np.arange(12.0).reshape(3, 4), "b": np.zeros(5)}
    print("saving step 2", flush=True)
    save(directory, params2, state, step=2)
    print("step 2 committed: the crash did not happen", flush=True)
    """
)


@pytest.mark.parametrize("mode", ["mid-write", "before-commit"])
def test_torn_save_leaves_last_good_checkpoint(tmp_path, mode):
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(ROOT))
    proc = subprocess.run(
        [sys.executable, "-c", CRASH_SCRIPT, str(tmp_path), mode],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == -9, (proc.returncode, proc.stdout, proc.stderr[-3000:])
    assert "saving step 2" in proc.stdout and "committed" not in proc.stdout
    entries = sorted(os.listdir(tmp_path))
    # the torn step is only a temporary directory; step 1 is intact
    assert "1" in entries and "2" not in entries, entries
    assert any(e.startswith("2.") and "tmp" in e for e in entries), entries

    tx = adam(1e-3)
    params = {"w": np.arange(12.0).reshape(3, 4), "b": np.ones(5)}
    assert latest_step(tmp_path) == 1 and all_steps(tmp_path) == [1]
    r = restore(tmp_path, params, tx.init(params))
    assert r.step == 1
    _assert_bitwise(r.params, jax.tree.map(jnp.asarray, params), "params of step 1")
    _assert_bitwise(r.opt_state, tx.init(params), "state of step 1")

    # the next writer clears the leftover and step 2 can be saved for real
    save(tmp_path, params, r.opt_state, step=2)
    assert all_steps(tmp_path) == [1, 2]
    assert not any("tmp" in e for e in os.listdir(tmp_path)), os.listdir(tmp_path)


def test_restore_rejects_a_mismatching_template(tmp_path):
    params = {"w": jnp.ones((2, 3)), "b": jnp.ones(3, jnp.float32)}
    save(tmp_path, params, adam().init(params), step=3)
    # another optimizer's state of the same chain length: orbax names the path
    with pytest.raises(ValueError, match="exp_avg"):
        restore(tmp_path, params, adagrad(0.1).init(params))
    # a chain of another length (three entries: momentum, lr, the step count): orbax says so
    with pytest.raises(ValueError, match="tree structures do not match"):
        restore(tmp_path, params, sgd(0.1, momentum=0.9).init(params))
    # another shape
    bad = {"w": jnp.ones((3, 2)), "b": jnp.ones(3, jnp.float32)}
    with pytest.raises(ValueError, match=r"params\['w'\].*shape \(2, 3\).*\(3, 2\)"):
        restore(tmp_path, bad, adam().init(bad))
    # another dtype: orbax would cast silently; jaxupdate refuses unless asked
    low = {"w": jnp.ones((2, 3), jnp.float32), "b": jnp.ones(3, jnp.float32)}
    with pytest.raises(ValueError, match=r"params\['w'\].*float64.*float32"):
        restore(tmp_path, low, adam().init(low))
    with pytest.raises(ValueError, match=r"opt_state\[0\]\.exp_avg\['w'\].*float64.*float32"):
        restore(tmp_path, params, adam().init(low))
    r = restore(tmp_path, low, adam().init(low), cast=True)
    assert r.params["w"].dtype == jnp.float32
    with pytest.raises(FileNotFoundError):
        restore(tmp_path, params, adam().init(params), step=4)
    with pytest.raises(FileNotFoundError):
        restore(tmp_path / "nothing", params, adam().init(params))
    assert latest_step(tmp_path / "nothing") is None


def test_manager_keeps_the_newest_and_saves_asynchronously(tmp_path):
    tx = sgd(0.1, momentum=0.9)
    params = {"w": jnp.arange(4.0)}
    state = tx.init(params)
    with CheckpointManager(tmp_path, max_to_keep=2, async_save=True) as mgr:
        for s in (1, 2, 3):
            params = jax.tree.map(lambda x: x + 1, params)
            mgr.save(s, params, state, extra={"s": s})
        mgr.wait()
        assert mgr.all_steps() == [2, 3]
        r = mgr.restore(params, state)
        assert r.step == 3 and r.extra == {"s": 3}
        _assert_bitwise(r.params, params, "params")
        assert mgr.restore(params, state, step=2).params["w"].tolist() == [2.0, 3.0, 4.0, 5.0]
        with pytest.raises(Exception, match="3"):  # a step is written once
            mgr.save(3, params, state)


def test_state_without_arrays(tmp_path):
    """A state of EmptyStates only (e.g. optax.identity) saves and restores too."""
    tx = optax.chain(optax.identity(), optax.identity())
    params = {"w": jnp.ones(2)}
    save(tmp_path, params, tx.init(params), step=0)
    r = restore(tmp_path, params, tx.init(params))
    assert r.opt_state == tx.init(params)


def test_checkpoint_resume_example(tmp_path, capsys):
    example = runpy.run_path(str(ROOT / "examples" / "checkpoint_resume.py"))
    assert example["main"](["--directory", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "bitwise identical: True" in out, out

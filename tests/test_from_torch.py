"""from_torch(torch_optimizer, scheduler): the jaxupdate twin of a live torch run continues it.

The harness is jaxupdate.interop.parity (the one behind ``python -m jaxupdate parity``): torch
runs alone for ``convert_at`` steps, then ``from_torch`` converts the live optimizer (and
scheduler), and both continue on the same gradients; parameters are compared at every step.
"""

from __future__ import annotations

import pytest
import torch

from jaxupdate.interop import parity as P
from jaxupdate.interop.from_torch import from_torch
from tests.parity import TOL

TOL64 = TOL[torch.float64]  # 1e-12

TABLE = P.optimizer_table()
CONFIGS = [
    pytest.param(name, kw, id=f"{name}-{i}")
    for name, fn, _ in TABLE
    for i, kw in enumerate(P.configs(fn))
]


@pytest.mark.parametrize("name,kwargs", CONFIGS)
def test_torch_configs_mid_run(name, kwargs):
    """Every config of torch's own table: converted after 3 torch steps (state carried over)."""
    # eager where it is faster than compiling (~90 configs); loops (L-BFGS, Newton-Schulz) jit,
    # as each optimizer's declaration says (parity.jit)
    j, t = P.trajectories(name, kwargs, "float64", 6, via_from_torch=True, convert_at=3,
                          jit=P.jit_for(name))
    err = P.rel_err(j, t)
    assert err <= TOL64, f"{name}({kwargs}): {err:.3e}"


def test_sparse_adam_fresh():
    """SparseAdam converted before its first step (its state cannot be loaded yet)."""
    for kw in P.configs(dict((n, f) for n, f, _ in TABLE)["SparseAdam"])[:2]:
        j, t = P.trajectories("SparseAdam", kw, "float64", 4, via_from_torch=True)
        assert P.rel_err(j, t) <= TOL64


GROUPED = [
    ("SGD", {"lr": 0.05, "momentum": 0.9}, [{}, {"lr": torch.tensor(0.01), "nesterov": True}]),
    ("Adam", {"lr": 0.01}, [{"amsgrad": True}, {"lr": 0.02, "betas": (0.5, 0.9)}]),
    ("NAdam", {"lr": 0.01}, [{}, {"weight_decay": 0.1, "decoupled_weight_decay": True}]),
    ("ASGD", {"lr": 0.01}, [{}, {"t0": 2.0, "lambd": 0.01}]),
    ("Rprop", {"lr": 0.01}, [{"etas": (0.3, 1.5)}, {"lr": 0.1}]),
    ("Adagrad", {"lr": 0.05}, [{"initial_accumulator_value": 0.1}, {"lr_decay": 0.01}]),
]


@pytest.mark.parametrize("name,kwargs,groups", GROUPED, ids=[g[0] for g in GROUPED])
@pytest.mark.parametrize("convert_at", [4])
def test_param_groups(name, kwargs, groups, convert_at):
    j, t = P.trajectories(name, kwargs, "float64", 9, groups=groups, via_from_torch=True,
                          convert_at=convert_at, jit=False)
    assert P.rel_err(j, t) <= TOL64


SCHED = {name: (cls, kw, fn) for name, cls, kw, fn in P.scheduler_cases()}
lrs = torch.optim.lr_scheduler
SCHED["OneCycleLR-SGD"] = (
    "SGD",
    {"lr": 0.05, "momentum": 0.9, "nesterov": True},
    lambda o: lrs.OneCycleLR(o, 0.1, total_steps=30, three_phase=True, anneal_strategy="linear"),
)
SCHED["CyclicLR-Adam-groups"] = (
    "Adam",
    {"lr": 0.05},
    lambda o: lrs.CyclicLR(o, [0.01, 0.02], [0.1, 0.05], step_size_up=2, step_size_down=4,
                           mode="exp_range", gamma=0.9),
)


SCHED_RUNS = [(c, 7) for c in sorted(SCHED)] + [
    (c, 0) for c in ("OneCycleLR", "OneCycleLR-SGD", "ReduceLROnPlateau", "SequentialLR")
]


@pytest.mark.parametrize("case,convert_at", SCHED_RUNS)
def test_schedulers(case, convert_at):
    """The scheduler's position carries over: lr (and cycled momentum / beta1) match torch."""
    cls, kw, fn = SCHED[case]
    groups = [{}, {"lr": kw["lr"] / 2}] if case.endswith("groups") else None
    metrics = P.PLATEAU_METRICS if case == "ReduceLROnPlateau" else None
    j, t = P.trajectories(cls, kw, "float64", 14, groups=groups, scheduler_fn=fn,
                          via_from_torch=True, convert_at=convert_at, metrics=metrics)
    assert P.rel_err(j, t) <= TOL64


@pytest.mark.filterwarnings("ignore:Detected call of")
def test_one_cycle_cycles_momentum():
    """The converted SGD's momentum / Adam's beta1 follow OneCycleLR's, step after step."""
    from jaxupdate._described import description

    for cls, key in ((torch.optim.SGD, "momentum"), (torch.optim.Adam, "betas")):
        w = torch.nn.Parameter(torch.zeros(2, dtype=torch.float64))
        opt = cls([w], lr=0.1, **({"momentum": 0.9} if key == "momentum" else {}))
        sched = lrs.OneCycleLR(opt, 0.1, total_steps=10)
        sched.step()
        tx = from_torch(opt, sched)  # converted at last_epoch 1, optimizer count 0
        value = description(tx).groups[0].kwargs[key]
        value = value[0] if key == "betas" else value
        for count in range(8):
            torch_m = opt.param_groups[0][key]
            torch_m = torch_m[0] if key == "betas" else torch_m
            assert float(value(count)) == pytest.approx(torch_m, rel=1e-14, abs=0)
            w.grad = torch.zeros(2, dtype=torch.float64)
            opt.step()
            sched.step()


def test_per_epoch_stepping():
    """A scheduler stepped once per epoch: steps_per_epoch, converted at an epoch boundary."""
    params, grads = P.problem("float64", 12, P.SHAPES)
    tp = [torch.tensor(p).requires_grad_() for p in params]
    opt = torch.optim.Adam(tp, lr=0.1)
    sched = lrs.StepLR(opt, step_size=1, gamma=0.5)
    import jax.numpy as jnp
    import optax

    def torch_step(k):
        for t, g in zip(tp, grads[k]):
            t.grad = torch.tensor(g)
        opt.step()
        if (k + 1) % 3 == 0:
            sched.step()

    for k in range(6):
        torch_step(k)
    tx = from_torch(opt, sched, steps_per_epoch=3)
    jp = [jnp.asarray(t.detach().numpy()) for t in tp]
    state = tx.init(jp)
    for k in range(6, 12):
        updates, state = tx.update([jnp.asarray(g) for g in grads[k]], state, jp)
        jp = optax.apply_updates(jp, updates)
        torch_step(k)
        err = P.rel_err([jp], [[t.detach().numpy() for t in tp]])
        assert err <= TOL64, (k, err)


def test_wrong_number_of_leaves():
    import jax.numpy as jnp

    a, b = (torch.nn.Parameter(torch.ones(2)) for _ in range(2))
    opt = torch.optim.SGD([{"params": [a]}, {"params": [b], "lr": 0.5}], lr=0.1)
    tx = from_torch(opt)
    with pytest.raises(ValueError, match="leaves"):
        tx.init([jnp.ones(2)])


def test_unknown_scheduler():
    w = torch.nn.Parameter(torch.ones(2))
    opt = torch.optim.SGD([w], lr=0.1)

    class Mine(lrs.LRScheduler):
        def get_lr(self):
            return [0.1]

    with pytest.raises(NotImplementedError, match="Mine"):
        from_torch(opt, Mine(opt))


def test_lr_set_by_hand_warns():
    w = torch.nn.Parameter(torch.ones(2))
    opt = torch.optim.SGD([w], lr=0.1)
    sched = lrs.StepLR(opt, step_size=2, gamma=0.5)
    opt.param_groups[0]["lr"] = 0.3
    with pytest.warns(UserWarning, match="lr=0.3"):
        from_torch(opt, sched)


def test_exports_back_to_torch():
    """from_torch's transformation describes itself: its state goes back into torch, lr too."""
    import jax.numpy as jnp
    import optax

    from jaxupdate.interop import torch_state_dict

    params, grads = P.problem("float64", 6, P.SHAPES)
    tp = [torch.tensor(p).requires_grad_() for p in params]
    opt = torch.optim.Adam(tp, lr=0.1)
    sched = lrs.ExponentialLR(opt, gamma=0.5)
    for k in range(2):
        for t, g in zip(tp, grads[k]):
            t.grad = torch.tensor(g)
        opt.step()
        sched.step()
    tx = from_torch(opt, sched)
    jp = [jnp.asarray(t.detach().numpy()) for t in tp]
    state = tx.init(jp)
    for k in range(2, 4):
        updates, state = tx.update([jnp.asarray(g) for g in grads[k]], state, jp)
        jp = optax.apply_updates(jp, updates)
        for t, g in zip(tp, grads[k]):
            t.grad = torch.tensor(g)
        opt.step()
        sched.step()
    sd = torch_state_dict(tx, state, jp)
    assert sd["param_groups"][0]["lr"] == pytest.approx(opt.param_groups[0]["lr"], rel=1e-15)
    for i in range(len(tp)):
        for key in ("exp_avg", "exp_avg_sq"):
            np_t = opt.state[tp[i]][key].numpy()
            assert P.rel_err([[sd["state"][i][key].numpy()]], [[np_t]]) <= TOL64
        assert float(sd["state"][i]["step"]) == 4.0


@pytest.mark.parametrize("which", ["step", "one_cycle"])
def test_round_trip_back_to_torch_with_scheduler(which):
    """torch -> jaxupdate (from_torch) -> torch (to_torch): after k2 jaxupdate updates, the
    parameters, the optimizer state and the scheduler's position (moved on by k2 steps) go
    back; the torch run then continues exactly like one that never left torch (position, lr,
    momentum cycling, buffers). tests/test_to_torch.py covers to_torch in depth."""
    import jax.numpy as jnp
    import optax

    from jaxupdate.interop import to_torch

    steps, k1, k2 = 9, 3, 3
    params, grads = P.problem("float64", steps, P.SHAPES)

    def make(tp):
        if which == "step":
            opt = torch.optim.SGD(tp, lr=0.1, momentum=0.9)
            return opt, lrs.StepLR(opt, step_size=2, gamma=0.5)
        opt = torch.optim.Adam(tp, lr=0.01)
        return opt, lrs.OneCycleLR(opt, max_lr=0.1, total_steps=steps)

    def torch_step(opt, sched, tp, g):
        for t, gg in zip(tp, g):
            t.grad = torch.tensor(gg)
        opt.step()
        sched.step()

    ref = [torch.tensor(p).requires_grad_() for p in params]
    ref_opt, ref_sched = make(ref)
    for k in range(steps):
        torch_step(ref_opt, ref_sched, ref, grads[k])

    tp = [torch.tensor(p).requires_grad_() for p in params]
    opt, sched = make(tp)
    for k in range(k1):
        torch_step(opt, sched, tp, grads[k])
    tx = from_torch(opt, sched)
    jp = [jnp.asarray(t.detach().numpy()) for t in tp]
    state = tx.init(jp)
    for k in range(k1, k1 + k2):
        updates, state = tx.update([jnp.asarray(g) for g in grads[k]], state, jp)
        jp = optax.apply_updates(jp, updates)
    to_torch(opt, tx, state, jp, sched)
    assert sched.last_epoch == k1 + k2
    for k in range(k1 + k2, steps):
        torch_step(opt, sched, tp, grads[k])
    assert sched.last_epoch == ref_sched.last_epoch
    got = [[t.detach().numpy() for t in tp]]
    want = [[t.detach().numpy() for t in ref]]
    assert P.rel_err(got, want) <= TOL64


@pytest.mark.parametrize("load_state", [False, True])
def test_adagrad_groups_fresh_state_is_torchs(load_state):
    """torch's Adagrad fills every group's ``sum`` with the constructor's
    initial_accumulator_value (``optimizer.defaults``), whatever a group says: so does the
    converted transformation's state, fresh (load_state=False) or loaded, and both runs then
    agree."""
    import jax.numpy as jnp
    import numpy as np
    import optax

    params, grads = P.problem("float64", 4, P.SHAPES)
    for layout in ("groups", "one dict group"):
        tp = [torch.tensor(p).requires_grad_() for p in params]
        if layout == "groups":
            groups = [{"params": tp[:2], "initial_accumulator_value": 0.7},
                      {"params": tp[2:], "lr": 0.5}]
        else:
            groups = [{"params": tp, "initial_accumulator_value": 0.7}]
        opt = torch.optim.Adagrad(groups, lr=0.1, initial_accumulator_value=0.3, lr_decay=0.01)
        tx = from_torch(opt, load_state=load_state)
        jp = [jnp.asarray(p) for p in params]
        state = tx.init(jp)
        sums = [np.asarray(x) for g in state.groups for x in g[0].sum]
        assert len(sums) == len(tp)
        for t, x in zip(tp, sums):
            np.testing.assert_array_equal(x, opt.state[t]["sum"].numpy())
        j, t = [], []
        for k in range(4):
            updates, state = tx.update([jnp.asarray(g) for g in grads[k]], state, jp)
            jp = optax.apply_updates(jp, updates)
            for p, g in zip(tp, grads[k]):
                p.grad = torch.tensor(g)
            opt.step()
            j.append([np.asarray(x) for x in jp])
            t.append([p.detach().numpy().copy() for p in tp])
        assert P.rel_err(j, t) <= TOL64, layout

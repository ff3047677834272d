"""to_torch(torch_optimizer, tx, opt_state, params, scheduler): a jaxupdate run continued in torch.

The oracle is a torch run that never left torch. The converted run: torch steps ``k1`` times,
``from_torch`` converts it, jaxupdate updates ``k2`` times, ``to_torch`` puts parameters, state
and scheduler position back, and torch's own loop finishes the run. Parameters (and lrs) must
match the uninterrupted run at every torch step after the return, to float64 rounding.
"""

from __future__ import annotations

import warnings

import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch

import jaxupdate as ju
import tests.parity as P
from jaxupdate.interop import from_torch, to_torch
from jaxupdate.lr_scheduler import (
    cosine_annealing_lr,
    inject_hyperparams,
    one_cycle_lr,
    per_epoch,
    reduce_lr_on_plateau,
    step_lr,
)
from jaxupdate.param_groups import param_groups
from tests.parity import TOL

TOL64 = TOL[torch.float64]  # 1e-12
lrs = torch.optim.lr_scheduler
PLATEAU_METRICS = [1.0, 0.9, 0.9, 0.9, 0.9, 0.8, 0.8, 0.8, 0.8, 0.8, 0.85, 0.7, 0.7, 0.7, 0.7]


def _sgd(tp, groups=False, **kw):
    kw = {"lr": 0.1, "momentum": 0.9, **kw}
    if groups:
        return torch.optim.SGD([{"params": tp[:2]}, {"params": tp[2:], "lr": 0.03}], **kw)
    return torch.optim.SGD(tp, **kw)


def _adam(tp, groups=False, **kw):
    kw = {"lr": 0.01, **kw}
    if groups:
        return torch.optim.Adam([{"params": tp[:2]}, {"params": tp[2:], "lr": 0.02}], **kw)
    return torch.optim.Adam(tp, **kw)


# name: (optimizer factory, scheduler factory, steps, k1, k2, per-epoch steps, param groups)
CASES = {
    "StepLR-SGD": (_sgd, lambda o: lrs.StepLR(o, step_size=2, gamma=0.5), 10, 3, 3, None, False),
    "StepLR-SGD-groups": (
        _sgd, lambda o: lrs.StepLR(o, step_size=2, gamma=0.5), 10, 3, 4, None, True
    ),
    "OneCycleLR-Adam": (
        _adam, lambda o: lrs.OneCycleLR(o, max_lr=0.1, total_steps=12), 12, 3, 5, None, False
    ),
    "OneCycleLR-Adam-groups": (
        _adam,
        lambda o: lrs.OneCycleLR(o, max_lr=[0.1, 0.05], total_steps=12, three_phase=True),
        12, 2, 6, None, True,
    ),
    "CyclicLR-SGD": (
        _sgd,
        lambda o: lrs.CyclicLR(o, 0.01, 0.1, step_size_up=2, step_size_down=3),
        12, 3, 4, None, False,
    ),
    "CyclicLR-SGD-groups": (
        _sgd,
        lambda o: lrs.CyclicLR(o, [0.01, 0.02], [0.1, 0.05], step_size_up=2, mode="exp_range",
                               gamma=0.9),
        12, 1, 6, None, True,
    ),
    # the milestone (4) falls inside the jaxupdate segment
    "SequentialLR-Adam": (
        _adam,
        lambda o: lrs.SequentialLR(
            o, [lrs.LinearLR(o, 0.2, total_iters=4), lrs.ExponentialLR(o, 0.8)], milestones=[4]
        ),
        12, 2, 5, None, False,
    ),
    "ChainedScheduler-SGD-groups": (
        _sgd,
        lambda o: lrs.ChainedScheduler(
            [lrs.ConstantLR(o, 0.5, total_iters=3), lrs.ExponentialLR(o, 0.9)]
        ),
        10, 2, 4, None, True,
    ),
    "CosineAnnealingWarmRestarts-Adam": (
        _adam, lambda o: lrs.CosineAnnealingWarmRestarts(o, T_0=3, T_mult=2, eta_min=1e-3),
        14, 4, 5, None, False,
    ),
    "LambdaLR-SGD": (
        _sgd, lambda o: lrs.LambdaLR(o, lambda e: 1.0 / (1.0 + e)), 10, 3, 3, None, False
    ),
    # once per epoch of 3 updates: converted at an epoch boundary, back in mid-epoch
    "per-epoch-StepLR-Adam": (
        _adam, lambda o: lrs.StepLR(o, step_size=1, gamma=0.5), 14, 6, 4, 3, False
    ),
    "per-epoch-CosineAnnealingLR-SGD-groups": (
        _sgd, lambda o: lrs.CosineAnnealingLR(o, T_max=4), 15, 3, 6, 3, True
    ),
}


def _set_grads(tp, grads):
    for t, g in zip(tp, grads):
        t.grad = torch.tensor(g, dtype=t.dtype)


def _torch_step(opt, sched, tp, grads, k, every=None, metric=None):
    _set_grads(tp, grads[k])
    opt.step()
    if metric is not None:
        sched.step(metric)
    elif every is None or (k + 1) % every == 0:
        sched.step()


def _jax_steps(tx, state, jp, grads, ks, metrics=None):
    for k in ks:
        extra = {} if metrics is None else {"value": metrics[k]}
        g = [jnp.asarray(x, p.dtype) for x, p in zip(grads[k], jp)]
        updates, state = tx.update(g, state, jp, **extra)
        jp = optax.apply_updates(jp, updates)
    return state, jp


def _snapshot(opt, tp):
    return [t.detach().numpy().copy() for t in tp], [g["lr"] for g in opt.param_groups]


def _round_trip(make_opt, make_sched, steps, k1, k2, every=None, groups=False, metrics=None,
                dtype=torch.float64):
    """(converted run, uninterrupted run): per torch step after the return, params and lrs."""
    params, grads = P.problem(torch.float64, steps)
    metric = (lambda k: metrics[k]) if metrics is not None else (lambda k: None)

    ref = [torch.tensor(p, dtype=dtype).requires_grad_() for p in params]
    ref_opt = make_opt(ref, groups)
    ref_sched = make_sched(ref_opt)
    want = []
    for k in range(steps):
        _torch_step(ref_opt, ref_sched, ref, grads, k, every, metric(k))
        if k >= k1 + k2:
            want.append(_snapshot(ref_opt, ref))

    tp = [torch.tensor(p, dtype=dtype).requires_grad_() for p in params]
    opt = make_opt(tp, groups)
    sched = make_sched(opt)
    for k in range(k1):
        _torch_step(opt, sched, tp, grads, k, every, metric(k))
    tx = from_torch(opt, sched, steps_per_epoch=every)
    jp = [jnp.asarray(t.detach().numpy()) for t in tp]
    state, jp = _jax_steps(tx, tx.init(jp), jp, grads, range(k1, k1 + k2), metrics)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no warning on a faithful round trip
        to_torch(opt, tx, state, jp, sched)
    got = []
    for k in range(k1 + k2, steps):
        _torch_step(opt, sched, tp, grads, k, every, metric(k))
        got.append(_snapshot(opt, tp))
    for a, b in zip(_members(sched), _members(ref_sched), strict=True):
        assert a.last_epoch == b.last_epoch
    return got, want


def _members(s):
    """The scheduler and those inside it (ChainedScheduler keeps no last_epoch itself)."""
    out = [s] if hasattr(s, "last_epoch") else []
    for child in getattr(s, "_schedulers", ()):
        out.extend(_members(child))
    return out


def _assert_same(got, want, tol=TOL64):
    assert len(got) == len(want) > 0
    err = P.rel_err([p for p, _ in got], [p for p, _ in want])
    assert err <= tol, err
    for (_, a), (_, b) in zip(got, want):
        np.testing.assert_allclose(a, b, rtol=1e-13, atol=0)


@pytest.mark.parametrize("case", sorted(CASES))
def test_round_trip(case):
    make_opt, make_sched, steps, k1, k2, every, groups = CASES[case]
    _assert_same(*_round_trip(make_opt, make_sched, steps, k1, k2, every, groups))


def test_cycled_momentum_is_back_in_torch():
    """OneCycleLR's beta1 / CyclicLR's momentum are torch's at the run's position."""
    for make_opt, key in ((_adam, "betas"), (_sgd, "momentum")):
        params, grads = P.problem(torch.float64, 6)
        tp = [torch.tensor(p).requires_grad_() for p in params]
        opt = make_opt(tp)
        sched = lrs.OneCycleLR(opt, max_lr=0.1, total_steps=10)
        ref_m = []
        tx = from_torch(opt, sched)
        jp = [jnp.asarray(p) for p in params]
        state, jp = _jax_steps(tx, tx.init(jp), jp, grads, range(4))
        to_torch(opt, tx, state, jp, sched)
        # a fresh torch scheduler stepped 4 times holds the same momentum
        t2 = [torch.tensor(p).requires_grad_() for p in params]
        o2 = make_opt(t2)
        s2 = lrs.OneCycleLR(o2, max_lr=0.1, total_steps=10)
        for k in range(4):
            _torch_step(o2, s2, t2, grads, k)
        ref_m = o2.param_groups[0][key]
        assert opt.param_groups[0][key] == ref_m
        assert opt.param_groups[0]["lr"] == o2.param_groups[0]["lr"]
        for k in ("max_lr", "initial_lr", "min_lr", "base_momentum", "max_momentum"):
            assert opt.param_groups[0][k] == o2.param_groups[0][k]


@pytest.mark.parametrize("k1,k2", [(5, 4), (2, 9)])
def test_reduce_lr_on_plateau(k1, k2):
    """The plateau's best / num_bad_epochs / cooldown_counter / last_epoch go back to torch:
    reductions before the switch (k1=5: one at step 3), inside the jaxupdate segment and
    after the return."""

    def make_sched(o):
        return lrs.ReduceLROnPlateau(o, patience=1, cooldown=1, factor=0.5, min_lr=[1e-3, 0])

    got, want = _round_trip(_adam, make_sched, 15, k1, k2, groups=True, metrics=PLATEAU_METRICS)
    _assert_same(got, want)
    lrs_seen = {lr for _, g in want for lr in g}
    assert len(lrs_seen) > 2  # the lr did move after the return


def test_reduce_lr_on_plateau_state():
    params, grads = P.problem(torch.float64, 8)
    tp = [torch.tensor(p).requires_grad_() for p in params]
    opt = _sgd(tp)
    sched = lrs.ReduceLROnPlateau(opt, patience=1, cooldown=2)
    tx = from_torch(opt, sched)
    jp = [jnp.asarray(p) for p in params]
    state, jp = _jax_steps(tx, tx.init(jp), jp, grads, range(5), PLATEAU_METRICS)
    to_torch(opt, tx, state, jp, sched)
    ref = lrs.ReduceLROnPlateau(_sgd([torch.tensor(p).requires_grad_() for p in params]),
                                patience=1, cooldown=2)
    for m in PLATEAU_METRICS[:5]:
        ref.step(m)
    for key in ("best", "num_bad_epochs", "cooldown_counter", "last_epoch", "_last_lr"):
        assert getattr(sched, key) == getattr(ref, key), key
    assert opt.param_groups[0]["lr"] == ref.optimizer.param_groups[0]["lr"]


PURE = {
    # a described optimizer whose lr is a schedule of the count
    "adam-lr-schedule": (
        lambda: ju.adam(lr=cosine_annealing_lr(0.05, T_max=6, eta_min=0.001)),
        lambda tp: torch.optim.Adam(tp, lr=0.05),
        lambda o: lrs.CosineAnnealingLR(o, T_max=6, eta_min=0.001),
    ),
    # inject_hyperparams: the lr (and momentum) stepped in torch's chainable form, in the state
    "inject-sgd-one-cycle": (
        lambda: param_groups(
            inject_hyperparams(ju.sgd),
            lr=(s := one_cycle_lr(0.1, total_steps=12)),
            momentum=s.momentum,
            nesterov=True,
        ),
        lambda tp: torch.optim.SGD(tp, lr=0.1, momentum=0.9, nesterov=True),
        lambda o: lrs.OneCycleLR(o, max_lr=0.1, total_steps=12),
    ),
    "inject-adam-step": (
        lambda: param_groups(inject_hyperparams(ju.adam), lr=step_lr(0.02, 3, 0.5)),
        lambda tp: torch.optim.Adam(tp, lr=0.02),
        lambda o: lrs.StepLR(o, 3, 0.5),
    ),
    # inject_hyperparams on its own describes itself as the optimizer it wraps
    "inject-alone-adam-step": (
        lambda: inject_hyperparams(ju.adam)(lr=step_lr(0.02, 3, 0.5), betas=(0.8, 0.99)),
        lambda tp: torch.optim.Adam(tp, lr=0.02, betas=(0.8, 0.99)),
        lambda o: lrs.StepLR(o, 3, 0.5),
    ),
    "inject-alone-sgd-one-cycle": (
        lambda: inject_hyperparams(ju.sgd)(
            lr=(s := one_cycle_lr(0.1, total_steps=12)), momentum=s.momentum, nesterov=True
        ),
        lambda tp: torch.optim.SGD(tp, lr=0.1, momentum=0.9, nesterov=True),
        lambda o: lrs.OneCycleLR(o, max_lr=0.1, total_steps=12),
    ),
    "adam-per-epoch": (
        lambda: ju.adam(lr=per_epoch(step_lr(0.02, 1, 0.5), 4)),
        lambda tp: torch.optim.Adam(tp, lr=0.02),
        lambda o: lrs.StepLR(o, 1, 0.5),
    ),
}


@pytest.mark.parametrize("case", sorted(PURE))
def test_run_started_in_jaxupdate(case):
    """A run that started in jaxupdate goes into a fresh torch optimizer and a fresh equivalent
    scheduler, which to_torch steps to the run's position."""
    make_tx, make_opt, make_sched = PURE[case]
    every = 4 if case.endswith("per-epoch") else None
    steps, k = 12, 7
    params, grads = P.problem(torch.float64, steps)
    ref = [torch.tensor(p).requires_grad_() for p in params]
    ref_opt = make_opt(ref)
    ref_sched = make_sched(ref_opt)
    want = []
    for i in range(steps):
        _torch_step(ref_opt, ref_sched, ref, grads, i, every)
        if i >= k:
            want.append(_snapshot(ref_opt, ref))

    tx = make_tx()
    jp = [jnp.asarray(p) for p in params]
    state, jp = _jax_steps(tx, tx.init(jp), jp, grads, range(k))
    tp = [torch.zeros_like(t).requires_grad_() for t in ref]  # the parameters come from jp
    opt = make_opt(tp)
    sched = make_sched(opt)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        to_torch(opt, tx, state, jp, sched)
    got = []
    for i in range(k, steps):
        _torch_step(opt, sched, tp, grads, i, every)
        got.append(_snapshot(opt, tp))
    _assert_same(got, want)


@pytest.mark.parametrize("grouped", [True, False], ids=["param_groups", "alone"])
def test_inject_plateau_started_in_jaxupdate(grouped):
    """inject_hyperparams(ju.adam)(lr=reduce_lr_on_plateau(...)) -> a fresh torch plateau."""
    steps, k = 14, 6
    params, grads = P.problem(torch.float64, steps)
    ref = [torch.tensor(p).requires_grad_() for p in params]
    ref_opt = torch.optim.Adam(ref, lr=0.05)
    ref_sched = lrs.ReduceLROnPlateau(ref_opt, patience=1, factor=0.5)
    want = []
    for i in range(steps):
        _torch_step(ref_opt, ref_sched, ref, grads, i, metric=PLATEAU_METRICS[i])
        if i >= k:
            want.append(_snapshot(ref_opt, ref))
    plateau = reduce_lr_on_plateau(0.05, patience=1, factor=0.5)
    if grouped:
        tx = param_groups(inject_hyperparams(ju.adam), lr=plateau)
    else:
        tx = inject_hyperparams(ju.adam)(lr=plateau)
    jp = [jnp.asarray(p) for p in params]
    state, jp = _jax_steps(tx, tx.init(jp), jp, grads, range(k), PLATEAU_METRICS)
    tp = [torch.zeros_like(t).requires_grad_() for t in ref]
    opt = torch.optim.Adam(tp, lr=0.05)
    sched = lrs.ReduceLROnPlateau(opt, patience=1, factor=0.5)
    to_torch(opt, tx, state, jp, sched)
    got = []
    for i in range(k, steps):
        _torch_step(opt, sched, tp, grads, i, metric=PLATEAU_METRICS[i])
        got.append(_snapshot(opt, tp))
    _assert_same(got, want)


def test_without_scheduler_and_param_map():
    """No scheduler: state and parameters only; param_map puts dict leaves in torch's order
    (the run's first 3 updates in jaxupdate, the last 3 in torch)."""
    params, grads = P.problem(torch.float64, 6, shapes=((3,), (2, 2)))
    # torch's order: "z" then "a"; jax.tree.leaves sorts the dict keys: "a" then "z"
    tz, ta = (torch.tensor(p).requires_grad_() for p in params)
    ref_z, ref_a = (torch.tensor(p).requires_grad_() for p in params)
    ref_opt = torch.optim.RMSprop([ref_z, ref_a], lr=0.01, momentum=0.5)
    for k in range(6):
        _set_grads([ref_z, ref_a], grads[k])
        ref_opt.step()
    tx = param_groups(ju.rmsprop, lr=0.01, momentum=0.5)
    jp = {"z": jnp.asarray(params[0]), "a": jnp.asarray(params[1])}
    state = tx.init(jp)
    for k in range(3):
        g = {"z": jnp.asarray(grads[k][0]), "a": jnp.asarray(grads[k][1])}
        updates, state = tx.update(g, state, jp)
        jp = optax.apply_updates(jp, updates)
    opt = torch.optim.RMSprop([tz, ta], lr=0.01, momentum=0.5, foreach=True)
    to_torch(opt, tx, state, jp, param_map=["z", "a"])
    assert opt.param_groups[0]["foreach"] is True  # torch's kernel choice is kept
    for k in range(3, 6):
        _set_grads([tz, ta], grads[k])
        opt.step()
    err = P.rel_err([[tz.detach().numpy(), ta.detach().numpy()]],
                    [[ref_z.detach().numpy(), ref_a.detach().numpy()]])
    assert err <= TOL64


def test_copy_params_false_and_tensor_lr():
    """copy_params=False leaves the torch tensors alone; a tensor lr stays that tensor."""
    w = torch.nn.Parameter(torch.zeros(2, dtype=torch.float64))
    lr = torch.tensor(0.1, dtype=torch.float64)
    opt = torch.optim.Adam([w], lr=lr)
    tx = from_torch(opt)
    jp = [jnp.ones(2, jnp.float64)]
    state, jp = _jax_steps(tx, tx.init(jp), jp, [[np.ones(2)]], range(1))
    to_torch(opt, tx, state, jp, copy_params=False)
    assert w.detach().tolist() == [0.0, 0.0]
    assert opt.param_groups[0]["lr"] is lr
    assert float(opt.state[w]["step"]) == 1.0


def test_lr_set_by_hand_in_jaxupdate_warns_and_is_kept():
    from jaxupdate.lr_scheduler import set_hyperparams

    tp = [torch.nn.Parameter(torch.zeros(2, dtype=torch.float64))]
    opt = torch.optim.SGD(tp, lr=0.1)
    sched = lrs.ExponentialLR(opt, 0.5)
    tx = param_groups(inject_hyperparams(ju.sgd), lr=sched_lr(0.1))
    jp = [jnp.ones(2, jnp.float64)]
    state, jp = _jax_steps(tx, tx.init(jp), jp, [[np.ones(2)]] * 2, range(2))
    state = set_hyperparams(state, lr=0.3)
    with pytest.warns(UserWarning, match="run's lr is 0.3"):
        to_torch(opt, tx, state, jp, sched)
    assert opt.param_groups[0]["lr"] == 0.3 and sched.last_epoch == 2


def sched_lr(lr):
    from jaxupdate.lr_scheduler import exponential_lr

    return exponential_lr(lr, 0.5)


def test_inject_alone_exports_the_values_set_by_hand():
    """inject_hyperparams(ju.adam)(...) on its own: the lr and betas set with set_hyperparams
    mid-run are what torch continues with (torch's group["lr"] = x in the reference run)."""
    from jaxupdate.lr_scheduler import set_hyperparams

    steps, k = 10, 6
    params, grads = P.problem(torch.float64, steps)
    ref = [torch.tensor(p).requires_grad_() for p in params]
    ref_opt = torch.optim.Adam(ref, lr=0.05, weight_decay=0.01)
    want = []
    for i in range(steps):
        if i == 3:
            ref_opt.param_groups[0]["lr"] = 0.01
            ref_opt.param_groups[0]["betas"] = (0.8, 0.99)
        _set_grads(ref, grads[i])
        ref_opt.step()
        if i >= k:
            want.append(_snapshot(ref_opt, ref))

    tx = inject_hyperparams(ju.adam)(lr=0.05, weight_decay=0.01)
    jp = [jnp.asarray(p) for p in params]
    state, jp = _jax_steps(tx, tx.init(jp), jp, grads, range(3))
    state = set_hyperparams(state, lr=0.01, betas=(0.8, 0.99))
    state, jp = _jax_steps(tx, state, jp, grads, range(3, k))
    tp = [torch.zeros_like(t).requires_grad_() for t in ref]
    opt = torch.optim.Adam(tp, lr=0.05, weight_decay=0.01)
    to_torch(opt, tx, state, jp)
    assert opt.param_groups[0]["lr"] == 0.01 and opt.param_groups[0]["betas"] == (0.8, 0.99)
    got = []
    for i in range(k, steps):
        _set_grads(tp, grads[i])
        opt.step()
        got.append(_snapshot(opt, tp))
    _assert_same(got, want)


@pytest.mark.parametrize("grouped", [False, True], ids=["alone", "param_groups"])
def test_torch_state_dict_of_injected_run(grouped):
    """torch_state_dict takes inject_hyperparams(ju.sgd)(...) itself (and in param_groups):
    the lr (a schedule stepped, then set by hand) and momentum are the values the next update
    uses, the buffers torch's after the same steps."""
    from jaxupdate.interop import torch_state_dict
    from jaxupdate.lr_scheduler import exponential_lr, set_hyperparams

    params, grads = P.problem(torch.float64, 4)
    tp = [torch.tensor(p).requires_grad_() for p in params]
    opt = torch.optim.SGD(tp, lr=0.1, momentum=0.9, dampening=0.1)
    sched = lrs.ExponentialLR(opt, 0.5)
    for k in range(4):
        if k == 3:
            opt.param_groups[0]["lr"] = 0.03
        _torch_step(opt, sched, tp, grads, k)
    kw = dict(lr=exponential_lr(0.1, 0.5), momentum=0.9, dampening=0.1)
    tx = param_groups(inject_hyperparams(ju.sgd), **kw) if grouped else (
        inject_hyperparams(ju.sgd)(**kw))
    jp = [jnp.asarray(p) for p in params]
    state, jp = _jax_steps(tx, tx.init(jp), jp, grads, range(3))
    state = set_hyperparams(state, lr=0.03)
    state, jp = _jax_steps(tx, state, jp, grads, range(3, 4))
    sd = torch_state_dict(tx, state, jp)
    want = opt.state_dict()
    assert sd["param_groups"][0]["lr"] == pytest.approx(want["param_groups"][0]["lr"], 1e-15)
    for key in ("momentum", "dampening", "nesterov", "weight_decay", "maximize"):
        assert sd["param_groups"][0][key] == want["param_groups"][0][key], key
    got = [[sd["state"][i]["momentum_buffer"].numpy() for i in range(len(tp))]]
    ref = [[want["state"][i]["momentum_buffer"].numpy() for i in range(len(tp))]]
    assert P.rel_err(got, ref) <= TOL64

# ReduceLROnPlateau stepped once per epoch of BATCHES updates, by hand in jaxupdate
BATCHES = 3
EPOCH_METRICS = [1.0, 0.9, 0.9, 0.9, 0.8, 0.8, 0.8, 0.8]


def _plateau_kwargs(g):
    return dict(patience=1, cooldown=1, factor=0.5, min_lr=(1e-3, 0.0)[g])


@pytest.mark.parametrize("groups,k", [(False, 10), (True, 12), (True, 7)])
def test_plateau_driven_by_hand_per_epoch(groups, k):
    """A plateau stepped once per epoch by hand (its PlateauState kept aside, the lr set with
    set_hyperparams) goes back with plateau_state=: torch's ReduceLROnPlateau, stepped once
    per epoch too, continues the run (converted mid-epoch, k=10 and 7, and at a boundary)."""
    from jaxupdate.lr_scheduler import set_hyperparams

    steps = BATCHES * len(EPOCH_METRICS)
    params, grads = P.problem(torch.float64, steps)

    def make(tp):
        opt = _adam(tp, groups)
        min_lr = [_plateau_kwargs(g)["min_lr"] for g in range(len(opt.param_groups))]
        return opt, lrs.ReduceLROnPlateau(opt, **{**_plateau_kwargs(0), "min_lr": min_lr})

    def torch_step(opt, sched, tp, i):
        _set_grads(tp, grads[i])
        opt.step()
        if (i + 1) % BATCHES == 0:
            sched.step(EPOCH_METRICS[i // BATCHES])

    ref = [torch.tensor(p).requires_grad_() for p in params]
    ref_opt, ref_sched = make(ref)
    want = []
    for i in range(steps):
        torch_step(ref_opt, ref_sched, ref, i)
        if i >= k:
            want.append(_snapshot(ref_opt, ref))

    # jaxupdate: the lr injected as a value, one plateau per group kept aside
    if groups:
        tx = param_groups(inject_hyperparams(ju.adam),
                          [{"params": "^[01]$"}, {"params": "^[23]$", "lr": 0.02}], lr=0.01)
        lr0 = [0.01, 0.02]
    else:
        tx = inject_hyperparams(ju.adam)(lr=0.01)
        lr0 = [0.01]
    plateaus = [reduce_lr_on_plateau(lr, **_plateau_kwargs(g)) for g, lr in enumerate(lr0)]
    ps = [p.init() for p in plateaus]
    jp = [jnp.asarray(p) for p in params]
    state = tx.init(jp)
    for i in range(k):
        state, jp = _jax_steps(tx, state, jp, grads, [i])
        if (i + 1) % BATCHES == 0:
            ps = [p.step(s, EPOCH_METRICS[i // BATCHES]) for p, s in zip(plateaus, ps)]
            if groups:  # each group's own lr: set_hyperparams on the group's state
                state = state._replace(groups=tuple(
                    set_hyperparams(st, lr=s.lr) for st, s in zip(state.groups, ps)
                ))
            else:
                state = set_hyperparams(state, lr=ps[0].lr)

    tp = [torch.zeros_like(t).requires_grad_() for t in ref]
    opt, sched = make(tp)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        to_torch(opt, tx, state, jp, sched, plateau_state=ps if groups else ps[0])
    for key in ("best", "num_bad_epochs", "cooldown_counter", "last_epoch"):
        assert getattr(sched, key) == getattr(_ref_plateau_at(make, params, grads, k), key), key
    got = []
    for i in range(k, steps):
        torch_step(opt, sched, tp, i)
        got.append(_snapshot(opt, tp))
    _assert_same(got, want)
    assert len({lr for _, g in want for lr in g}) > len(lr0)  # the lr moved after the return


def _ref_plateau_at(make, params, grads, k):
    """torch's ReduceLROnPlateau after k updates of the per-epoch run."""
    tp = [torch.tensor(p).requires_grad_() for p in params]
    opt, sched = make(tp)
    for i in range(k):
        if (i + 1) % BATCHES == 0:
            sched.step(EPOCH_METRICS[i // BATCHES])
    return sched


def test_plateau_state_errors():
    from jaxupdate.lr_scheduler import PlateauState

    params, _ = P.problem(torch.float64, 1)
    jp = [jnp.asarray(p) for p in params]
    tp = [torch.tensor(p).requires_grad_() for p in params]
    ps = reduce_lr_on_plateau(0.01).init()
    tx = inject_hyperparams(ju.adam)(lr=0.01)
    opt = torch.optim.Adam(tp, lr=0.01)
    with pytest.raises(ValueError, match="but the scheduler is no scheduler"):
        to_torch(opt, tx, tx.init(jp), jp, plateau_state=ps)
    with pytest.raises(ValueError, match="but the scheduler is a StepLR"):
        to_torch(opt, tx, tx.init(jp), jp, lrs.StepLR(opt, 2), plateau_state=ps)
    sched = lrs.ReduceLROnPlateau(opt)
    with pytest.raises(TypeError, match="must be a jaxupdate.lr_scheduler.PlateauState"):
        to_torch(opt, tx, tx.init(jp), jp, sched, plateau_state={"best": 1.0})
    with pytest.raises(ValueError, match="holds 2 plateau states, the run 1 param groups"):
        to_torch(opt, tx, tx.init(jp), jp, sched, plateau_state=[ps, ps])
    # the plateau is in the run already, or the lr is a schedule torch's plateau won't step
    for lr in (reduce_lr_on_plateau(0.01), step_lr(0.01, 2)):
        tx2 = inject_hyperparams(ju.adam)(lr=lr)
        with pytest.raises(ValueError, match="leave plateau_state out|is a schedule"):
            to_torch(opt, tx2, tx2.init(jp), jp, sched, plateau_state=ps)
    # per-group states must agree in what torch's one plateau keeps
    tx3 = param_groups(inject_hyperparams(ju.adam), [{"params": "^0$"}, {"params": "^[123]$"}],
                       lr=0.01)
    opt3 = torch.optim.Adam([{"params": tp[:1]}, {"params": tp[1:]}], lr=0.01)
    other = PlateauState(*ps)._replace(num_bad_epochs=jnp.asarray(1, jnp.int32))
    with pytest.raises(ValueError, match=r"differ in \['num_bad_epochs'\]"):
        to_torch(opt3, tx3, tx3.init(jp), jp, lrs.ReduceLROnPlateau(opt3),
                 plateau_state=[ps, other])
    # a state whose lr is not the run's: warned, the run's kept
    with pytest.warns(UserWarning, match="plateau_state's lr is 0.005"):
        to_torch(opt, tx, tx.init(jp), jp, sched, plateau_state=ps._replace(lr=0.005))
    assert opt.param_groups[0]["lr"] == 0.01


@pytest.mark.parametrize("case", ["StepLR-SGD-groups", "OneCycleLR-Adam", "per-epoch-StepLR-Adam"])
def test_round_trip_float32(case):
    """float32 parameters and buffers: TOL[float32] (2e-6, tests/parity.py). Unjitted on both
    sides, so no FMA contraction: the difference is float32 rounding of the same operations."""
    make_opt, make_sched, steps, k1, k2, every, groups = CASES[case]
    got, want = _round_trip(make_opt, make_sched, steps, k1, k2, every, groups,
                            dtype=torch.float32)
    assert all(p.dtype == np.float32 for p, _ in got for p in p)
    _assert_same(got, want, tol=TOL[torch.float32])


def test_nnx_model_with_param_map():
    """A run started in jaxupdate on a flax nnx model (nnx.Optimizer, jitted steps) goes back
    into a torch model: param_map (nnx_param_map) gives torch's parameter order and Linear's
    transposed layout, for the parameters and Adam's buffers alike.

    torch and JAX compute the gradients themselves (different summation order), so they round
    differently, ~1e-16 per step; measured agreement over the 8 steps: below 1e-14.
    """
    import copy

    from flax import nnx

    from jaxupdate.interop.weights import nnx_param_map, torch_to_nnx

    torch.manual_seed(0)
    tnet = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3))
    tnet = tnet.double()
    start = copy.deepcopy(tnet.state_dict())
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((16, 4)), rng.standard_normal((16, 3))

    def make(net):
        opt = torch.optim.Adam(net.parameters(), lr=0.02, amsgrad=True, weight_decay=0.1)
        return opt, lrs.StepLR(opt, step_size=3, gamma=0.5)

    def torch_step(net, opt, sched):
        opt.zero_grad()
        torch.mean((net(torch.tensor(x)) - torch.tensor(y)) ** 2).backward()
        opt.step()
        sched.step()

    steps, k = 8, 4
    ref_opt, ref_sched = make(tnet)
    want = []
    for i in range(steps):
        torch_step(tnet, ref_opt, ref_sched)
        if i >= k:
            want.append([p.detach().numpy().copy() for p in tnet.parameters()])

    kwn = dict(param_dtype=jnp.float64, dtype=jnp.float64, rngs=nnx.Rngs(0))
    model = nnx.Sequential(nnx.Linear(4, 8, **kwn), jnp.tanh, nnx.Linear(8, 3, **kwn))
    torch_to_nnx(model, start)
    tx = ju.adam(lr=step_lr(0.02, 3, 0.5), amsgrad=True, weight_decay=0.1)
    optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)

    @nnx.jit
    def train_step(model, optimizer):
        def loss_fn(m):
            return jnp.mean((m(jnp.asarray(x)) - jnp.asarray(y)) ** 2)

        optimizer.update(model, nnx.grad(loss_fn)(model))

    for _ in range(k):
        train_step(model, optimizer)

    net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3))
    net = net.double()  # its weights come from the nnx model
    opt, sched = make(net)
    names = [n for n, _ in net.named_parameters()]
    pmap = nnx_param_map(model, names)
    to_torch(opt, tx, optimizer.opt_state, nnx.state(model, nnx.Param), sched, param_map=pmap)
    assert sched.last_epoch == k
    got = []
    for _ in range(k, steps):
        torch_step(net, opt, sched)
        got.append([p.detach().numpy().copy() for p in net.parameters()])
    assert P.rel_err(got, want) <= 1e-14


# ---------------------------------------------------------------------------------------------
# errors


def _converted(n_steps=2, make_sched=lambda o: lrs.StepLR(o, 2, 0.5)):
    params, grads = P.problem(torch.float64, n_steps)
    tp = [torch.tensor(p).requires_grad_() for p in params]
    opt = _sgd(tp)
    sched = make_sched(opt)
    tx = from_torch(opt, sched)
    jp = [jnp.asarray(p) for p in params]
    state, jp = _jax_steps(tx, tx.init(jp), jp, grads, range(n_steps))
    return tp, opt, sched, tx, state, jp


def test_error_scheduler_ahead_changes_nothing():
    tp, opt, sched, tx, state, jp = _converted()
    for _ in range(3):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            sched.step()
    before = [t.detach().clone() for t in tp]
    with pytest.raises(ValueError, match="ahead of the jaxupdate run: it has stepped 3 times"):
        to_torch(opt, tx, state, jp, sched)
    assert all(torch.equal(a, b) for a, b in zip(before, tp))
    assert opt.state_dict()["state"] == {}  # SGD before its first torch step


def test_error_optimizer_class():
    tp, opt, sched, tx, state, jp = _converted()
    with pytest.raises(ValueError, match="torch optimizer a Adam"):
        to_torch(torch.optim.Adam(tp), tx, state, jp)


def test_error_groups_and_sizes():
    tp, opt, sched, tx, state, jp = _converted()
    other = torch.optim.SGD([{"params": tp[:2]}, {"params": tp[2:]}], lr=0.1, momentum=0.9)
    with pytest.raises(ValueError, match="different number of parameter groups"):
        to_torch(other, tx, state, jp)
    extra = torch.nn.Parameter(torch.zeros(1, dtype=torch.float64))
    bigger = torch.optim.SGD([*tp, extra], lr=0.1, momentum=0.9)
    with pytest.raises(ValueError, match="doesn't match the size of optimizer's group"):
        to_torch(bigger, tx, state, jp)
    shuffled = torch.optim.SGD([tp[1], tp[0], *tp[2:]], lr=0.1, momentum=0.9)
    with pytest.raises(ValueError, match="shape"):
        to_torch(shuffled, tx, state, jp)


def test_error_wrong_leaves():
    tp, opt, sched, tx, state, jp = _converted()
    # from_torch's init checks the leaves against the torch parameters first
    with pytest.raises(ValueError, match=r"the parameters have 2 leaves, the torch optimizer 4"):
        to_torch(opt, tx, state, jp[:2])
    # one param group: swapped leaves are caught by the state check (shapes differ)
    with pytest.raises(ValueError, match=r"has shape .* but the state init builds"):
        to_torch(opt, tx, state, [jp[1], jp[0], *jp[2:]])
    tx = ju.sgd(lr=0.1, momentum=0.9)
    state, jp = _jax_steps(tx, tx.init(jp), jp, [[np.ones(t.shape) for t in tp]], range(1))
    with pytest.raises(ValueError, match=r"opt_state does not fit this optimizer \(sgd\)"):
        to_torch(opt, tx, state, jp[:2])
    with pytest.raises(ValueError, match=r"opt_state.* has shape .* but the state init builds"):
        to_torch(opt, tx, state, [jp[1], jp[0], *jp[2:]])


def test_error_scheduler_of_another_optimizer():
    tp, opt, sched, tx, state, jp = _converted()
    other = _sgd([torch.tensor(t.detach().numpy()).requires_grad_() for t in tp])
    with pytest.raises(ValueError, match="belongs to another optimizer"):
        to_torch(opt, tx, state, jp, lrs.StepLR(other, 2))


def test_error_plateau_mismatches():
    tp, opt, sched, tx, state, jp = _converted()
    with pytest.raises(ValueError, match="not reduce_lr_on_plateau"):
        to_torch(opt, tx, state, jp, lrs.ReduceLROnPlateau(opt))

    params, grads = P.problem(torch.float64, 2)
    tp = [torch.tensor(p).requires_grad_() for p in params]
    opt = _sgd(tp)
    tx = from_torch(opt, lrs.ReduceLROnPlateau(opt, patience=2))
    jp = [jnp.asarray(p) for p in params]
    state, jp = _jax_steps(tx, tx.init(jp), jp, grads, range(2), PLATEAU_METRICS)
    with pytest.raises(ValueError, match="patience: 2 here, 3 in torch's"):
        to_torch(opt, tx, state, jp, lrs.ReduceLROnPlateau(opt, patience=3))
    with pytest.raises(ValueError, match="continue with a torch ReduceLROnPlateau"):
        to_torch(opt, tx, state, jp, lrs.StepLR(opt, 2))


def test_error_scheduler_fails_to_step_changes_nothing():
    """A scheduler that raises on the way to the run's position is rolled back."""

    class Boom(lrs.StepLR):
        def get_lr(self):
            if self.last_epoch == 3:
                raise RuntimeError("boom at 3")
            return super().get_lr()

    params, grads = P.problem(torch.float64, 4)
    tx = ju.sgd(lr=step_lr(0.1, 1, 0.5), momentum=0.9)
    jp = [jnp.asarray(p) for p in params]
    state, jp = _jax_steps(tx, tx.init(jp), jp, grads, range(4))
    tp = [torch.tensor(p).requires_grad_() for p in params]
    opt = _sgd(tp)
    sched = Boom(opt, 1, 0.5)
    before = (sched.state_dict(), opt.param_groups[0]["lr"], opt.state_dict()["state"])
    with pytest.raises(ValueError, match="could not be stepped from last_epoch 0 to the run's "
                                         "position 4: boom at 3"):
        to_torch(opt, tx, state, jp, sched)
    after = (sched.state_dict(), opt.param_groups[0]["lr"], opt.state_dict()["state"])
    assert before == after


def test_error_undescribed_transformation():
    tx = optax.chain(ju.sgd(lr=0.1))  # a chain of a described optimizer rightly carries none
    jp = [jnp.ones(2)]
    opt = torch.optim.SGD([torch.nn.Parameter(torch.ones(2))], lr=0.1)
    with pytest.raises(TypeError, match="says which optimizer"):
        to_torch(opt, tx, tx.init(jp), jp)


def test_docstring_example():
    import doctest
    import sys

    mod = sys.modules["jaxupdate.interop.to_torch"]  # the package exports the function

    assert doctest.testmod(mod, optionflags=doctest.ELLIPSIS).failed == 0

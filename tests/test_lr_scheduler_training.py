"""Optimizers driven by jaxupdate.lr_scheduler schedules against torch optimizer + scheduler loops.

Covers: momentum / beta1 cycling (CyclicLR, OneCycleLR), the scheduler lists torch's own
optimizer tests attach (``OptimizerInfo.scheduler_inputs``, ReduceLROnPlateau included),
ReduceLROnPlateau as a state machine and as a transformation (``update(..., value=metric)``),
hyperparameters held in the state (``inject_hyperparams``) for every jaxupdate optimizer,
setting them by hand mid-training as torch's ``group["lr"] = x``, and no recompilation.
"""

from __future__ import annotations

import inspect
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch
from jax import lax
from torch.optim import lr_scheduler as tls
from torch.testing._internal import common_optimizers as co

import jaxupdate
import jaxupdate.optim
from jaxupdate.lr_scheduler import (
    chained_scheduler,
    constant_lr,
    cyclic_lr,
    exponential_lr,
    get_hyperparams,
    inject_hyperparams,
    linear_lr,
    one_cycle_lr,
    polynomial_lr,
    reduce_lr_on_plateau,
    set_hyperparams,
    step_lr,
)
from jaxupdate.optim.adam import adam, adamw
from jaxupdate.optim.rmsprop import rmsprop
from jaxupdate.optim.sgd import sgd
from tests.parity import TOL, counted_step, problem, rel_err

F64 = torch.float64
STEPS = 40
# A validation-loss-like metric: improves, then plateaus (ReduceLROnPlateau reduces twice in
# 40 steps with torch's default patience of 10), then improves again.
METRIC = np.concatenate([1.0 - 0.05 * np.arange(5), np.full(25, 0.8), 0.7 - 0.01 * np.arange(10)])


def torch_run(
    opt_cls, opt_kwargs, make_schedulers, steps=STEPS, manual=None, seed=0, metrics=METRIC
):
    """torch trajectory: ``optimizer.step()`` then each scheduler's ``step()`` per iteration.

    ``manual(k, group)`` may change the param group before step ``k`` (torch users'
    ``group["lr"] = x``). Returns parameters and the lr used at each step.
    """
    params, grads = problem(F64, steps, seed=seed)
    tp = [torch.tensor(p).requires_grad_() for p in params]
    opt = opt_cls(tp, **opt_kwargs)
    scheds = make_schedulers(opt)
    traj, lrs = [], []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for k, g in enumerate(grads):
            if manual is not None:
                manual(k, opt.param_groups[0])
            for t, gg in zip(tp, g):
                t.grad = torch.tensor(gg)
            lrs.append(opt.param_groups[0]["lr"])
            opt.step()
            for s in scheds:
                if isinstance(s, tls.ReduceLROnPlateau):
                    s.step(metrics[k])
                else:
                    s.step()
            traj.append([t.detach().numpy().copy() for t in tp])
    return traj, np.asarray(lrs)


def jax_run(tx, steps=STEPS, metric=False, manual=None, seed=0, metrics=METRIC):
    """jaxupdate trajectory on the same data, one jitted step per update."""
    params, grads = problem(F64, steps, seed=seed)
    jp = [jnp.asarray(p) for p in params]
    state = tx.init(jp)

    @jax.jit
    def step(p, s, g, value):
        extra = {"value": value} if metric else {}
        updates, s = tx.update(g, s, p, **extra)
        return jaxupdate.apply_updates(p, updates), s

    traj = []
    for k, g in enumerate(grads):
        if manual is not None:
            state = manual(k, state)
        jp, state = step(jp, state, [jnp.asarray(x) for x in g], metrics[k])
        traj.append([np.asarray(x) for x in jp])
    return traj, state


def assert_trajectory(jax_traj, torch_traj, what):
    err = rel_err(jax_traj, torch_traj)
    assert err <= TOL[F64], f"{what}: rel err {err:.2e}"


# --- momentum cycling ----------------------------------------------------------------------

CYCLING = {
    "cyclic": (
        lambda o: tls.CyclicLR(o, 0.01, 0.1, step_size_up=5, step_size_down=7),
        lambda: cyclic_lr(0.01, 0.1, step_size_up=5, step_size_down=7),
    ),
    "cyclic-triangular2": (
        lambda o: tls.CyclicLR(o, 0.005, 0.05, 4, mode="triangular2", base_momentum=0.7),
        lambda: cyclic_lr(0.005, 0.05, 4, mode="triangular2", base_momentum=0.7),
    ),
    "onecycle": (
        lambda o: tls.OneCycleLR(o, 0.1, total_steps=STEPS),
        lambda: one_cycle_lr(0.1, total_steps=STEPS),
    ),
    "onecycle-three-phase": (
        lambda o: tls.OneCycleLR(o, 0.05, total_steps=STEPS + 5, three_phase=True),
        lambda: one_cycle_lr(0.05, total_steps=STEPS + 5, three_phase=True),
    ),
}


@pytest.mark.parametrize("name", sorted(CYCLING))
def test_momentum_cycling_sgd(name):
    """ju.sgd(lr=sched, momentum=sched.momentum) follows torch's SGD + CyclicLR/OneCycleLR."""
    torch_make, ju_make = CYCLING[name]
    sched = ju_make()
    got, _ = jax_run(sgd(lr=sched, momentum=sched.momentum, weight_decay=0.01))
    want, _ = torch_run(
        torch.optim.SGD, dict(lr=0.1, momentum=0.9, weight_decay=0.01), lambda o: [torch_make(o)]
    )
    assert_trajectory(got, want, f"sgd {name}")


@pytest.mark.parametrize("name", sorted(CYCLING))
@pytest.mark.parametrize("opt", ["adam", "adamw"])
def test_momentum_cycling_adam_beta1(name, opt):
    """ju.adam(lr=sched, betas=(sched.momentum, 0.999)): torch cycles Adam's betas[0]."""
    torch_make, ju_make = CYCLING[name]
    torch_cls, ju_fn = (torch.optim.Adam, adam) if opt == "adam" else (torch.optim.AdamW, adamw)
    want, _ = torch_run(torch_cls, dict(lr=0.1), lambda o: [torch_make(o)])
    sched = ju_make()
    got, _ = jax_run(ju_fn(lr=sched, betas=(sched.momentum, 0.999)))
    assert_trajectory(got, want, f"{opt} {name}")
    # the same through injected hyperparameters (chainable stepping in the state)
    got, state = jax_run(inject_hyperparams(ju_fn)(lr=sched, betas=(sched.momentum, 0.999)))
    assert_trajectory(got, want, f"inject {opt} {name}")


# --- the scheduler lists torch's optimizer tests attach -----------------------------------


def _ju_from_torch(s, lr):
    """The jaxupdate schedule for a torch scheduler instance (read from its attributes)."""
    name = type(s).__name__
    if name == "StepLR":
        return step_lr(lr, s.step_size, s.gamma)
    if name == "LinearLR":
        return linear_lr(lr, s.start_factor, s.end_factor, s.total_iters)
    if name == "ConstantLR":
        return constant_lr(lr, s.factor, s.total_iters)
    if name == "ExponentialLR":
        return exponential_lr(lr, s.gamma)
    if name == "PolynomialLR":
        return polynomial_lr(lr, s.total_iters, s.power)
    raise NotImplementedError(name)


def translate(torch_schedulers, lr):
    """torch's list of schedulers stepped in turn -> one jaxupdate lr (schedule or plateau)."""
    plain = [s for s in torch_schedulers if not isinstance(s, tls.ReduceLROnPlateau)]
    plateaus = [s for s in torch_schedulers if isinstance(s, tls.ReduceLROnPlateau)]
    assert not plateaus or torch_schedulers[-1] is plateaus[-1] and len(plateaus) == 1
    ju = [_ju_from_torch(s, lr) for s in plain]
    out = lr if not ju else ju[0] if len(ju) == 1 else chained_scheduler(ju)
    if plateaus:
        p = plateaus[0]
        out = reduce_lr_on_plateau(
            out, p.mode, p.factor, p.patience, p.threshold, p.threshold_mode, p.cooldown,
            p.min_lrs[0], p.eps,
        )  # fmt: skip
    return out, bool(plateaus)


OPTIMIZERS = {
    torch.optim.SGD: (sgd, dict(lr=0.05, momentum=0.9, nesterov=True, weight_decay=0.01)),
    torch.optim.Adam: (adam, dict(lr=0.01, amsgrad=True, weight_decay=0.1)),
    torch.optim.AdamW: (adamw, dict(lr=0.01)),
    torch.optim.RMSprop: (rmsprop, dict(lr=0.01, momentum=0.5, centered=True)),
}
PAIRS = [
    (info.optim_cls, i)
    for info in co.optim_db
    if info.optim_cls in OPTIMIZERS
    for i in range(len(info.scheduler_inputs))
]


def _scheduler_inputs(optim_cls):
    return next(info for info in co.optim_db if info.optim_cls is optim_cls).scheduler_inputs


@pytest.mark.parametrize("optim_cls, index", PAIRS, ids=[f"{c.__name__}-{i}" for c, i in PAIRS])
def test_torch_scheduler_inputs(optim_cls, index):
    """torch's OptimizerInfo.scheduler_inputs, stepped after every optimizer step."""
    makers = _scheduler_inputs(optim_cls)[index]
    ju_fn, kwargs = OPTIMIZERS[optim_cls]
    want, want_lrs = torch_run(optim_cls, kwargs, lambda o: [m(o) for m in makers])
    probe = optim_cls([torch.nn.Parameter(torch.zeros(1, dtype=F64))], **kwargs)
    lr_spec, uses_metric = translate([m(probe) for m in makers], kwargs["lr"])
    got, state = jax_run(inject_hyperparams(ju_fn)(**{**kwargs, "lr": lr_spec}), metric=True)
    assert_trajectory(got, want, f"inject {optim_cls.__name__} {index}")
    if not uses_metric:  # a plain schedule also goes straight into the optimizer
        got, _ = jax_run(ju_fn(**{**kwargs, "lr": lr_spec}))
        assert_trajectory(got, want, f"{optim_cls.__name__} {index}")


# --- ReduceLROnPlateau ---------------------------------------------------------------------

PLATEAU_CONFIGS = [
    dict(),
    dict(mode="max", patience=2, threshold=0.05, threshold_mode="abs"),
    dict(mode="min", patience=0, factor=0.5, cooldown=3, min_lr=0.011),
    dict(mode="max", patience=1, threshold=0.01, cooldown=1, factor=0.9, eps=1e-3),
    dict(mode="min", patience=3, threshold=0.2, threshold_mode="abs", min_lr=[0.02]),
]


def _metrics(mode, n=80, seed=1):
    rng = np.random.default_rng(seed)
    walk = np.cumsum(rng.standard_normal(n) * 0.1) + np.linspace(0, 0.5, n)
    walk[20:35] = walk[20]  # an exact plateau
    return walk if mode == "max" else -walk


@pytest.mark.parametrize("kwargs", PLATEAU_CONFIGS)
def test_plateau_state_machine_matches_torch(kwargs):
    """init/step(state, metric), jitted over a scan, equals torch's attributes every epoch."""
    metrics = _metrics(kwargs.get("mode", "min"))
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1, dtype=F64))], lr=0.1)
    ts = tls.ReduceLROnPlateau(opt, **kwargs)
    want = []
    for m in metrics:
        ts.step(m)
        want.append(
            (opt.param_groups[0]["lr"], ts.best, ts.num_bad_epochs, ts.cooldown_counter,
             ts.last_epoch)
        )  # fmt: skip
    plateau = reduce_lr_on_plateau(0.1, **kwargs)

    def body(s, m):
        s = plateau.step(s, m)
        return s, (s.lr, s.best, s.num_bad_epochs, s.cooldown_counter, s.last_epoch)

    _, got = jax.jit(lambda ms: lax.scan(body, plateau.init(), ms))(jnp.asarray(metrics))
    got = list(zip(*[np.asarray(x).tolist() for x in got]))
    assert got == [tuple(float(v) if i < 2 else v for i, v in enumerate(w)) for w in want]
    assert len({w[0] for w in want}) > 1, "the configuration should reduce the lr"


@pytest.mark.parametrize("kwargs", PLATEAU_CONFIGS[1:4])
def test_plateau_transformation_matches_torch(kwargs):
    """update(..., value=metric) = torch's optimizer.step(); scheduler.step(metric)."""
    metrics = _metrics(kwargs.get("mode", "min"), STEPS)
    want, want_lrs = torch_run(
        torch.optim.SGD,
        dict(lr=0.1, momentum=0.9),
        lambda o: [tls.ReduceLROnPlateau(o, **kwargs)],
        metrics=metrics,
    )
    assert len(set(want_lrs.tolist())) > 1, "the configuration should reduce the lr"
    tx = inject_hyperparams(sgd)(lr=reduce_lr_on_plateau(0.1, **kwargs), momentum=0.9)
    got, state = jax_run(tx, metric=True, metrics=metrics)
    assert_trajectory(got, want, f"plateau {kwargs}")
    # optax's own inject_hyperparams takes the plateau as a StatefulSchedule too
    tx = optax.inject_hyperparams(sgd)(lr=reduce_lr_on_plateau(0.1, **kwargs), momentum=0.9)
    got, _ = jax_run(tx, metric=True, metrics=metrics)
    assert_trajectory(got, want, f"optax.inject_hyperparams plateau {kwargs}")


def test_plateau_needs_the_metric():
    tx = inject_hyperparams(sgd)(lr=reduce_lr_on_plateau(0.1))
    state = tx.init([jnp.ones(2)])
    with pytest.raises(ValueError, match="value=metric"):
        tx.update([jnp.ones(2)], state, [jnp.ones(2)])
    with pytest.raises(TypeError, match="stateful"):
        reduce_lr_on_plateau(0.1)(3)


# --- hyperparameters in the state ----------------------------------------------------------


# Every dense-gradient optimizer. Not here: lbfgs (takes a closure: one update is a whole
# torch step(closure)) and sparse_adam (takes BCOO gradients, tested in its own file).
DENSE_OPTIMIZERS = (
    "sgd", "adam", "adamw", "rmsprop", "adagrad", "adadelta", "adamax",
    "nadam", "radam", "asgd", "rprop", "adafactor", "muon",
)
OPTIM_FNS = {name: getattr(jaxupdate, name) for name in DENSE_OPTIMIZERS}


# non-default options of a few optimizers, on top of every optimizer's defaults
INJECT_CONFIGS = [(name, {}) for name in sorted(OPTIM_FNS)] + [
    ("sgd", dict(lr=0.05, dampening=0.5)),
    ("sgd", dict(lr=0.05, momentum=0.9, dampening=0.3, weight_decay=0.1)),
    ("adam", dict(lr=0.01, betas=(0.0, 0.9), amsgrad=True, weight_decay=0.1)),
    ("rmsprop", dict(momentum=0.5, centered=True, weight_decay=0.1)),
    ("adagrad", dict(lr_decay=0.01, initial_accumulator_value=0.1)),
]
INJECT_CONFIGS = [(n, kw) for n, kw in INJECT_CONFIGS if n in OPTIM_FNS]


@pytest.mark.parametrize("name, kwargs", INJECT_CONFIGS)
def test_inject_hyperparams_is_transparent(name, kwargs):
    """inject_hyperparams(opt)(**kw) gives opt(**kw)'s numbers, hyperparameters in the state."""
    fn = OPTIM_FNS[name]
    shapes = ((4, 3), (6, 2))  # matrices: every optimizer (Muon too) accepts them
    plain, _ = jax_run_shapes(fn(**kwargs), shapes)
    injected, state = jax_run_shapes(inject_hyperparams(fn)(**kwargs), shapes)
    assert rel_err(injected, plain) <= TOL[F64], name
    hp = get_hyperparams(state)
    assert "lr" in hp and all(jnp.issubdtype(v.dtype, jnp.floating) for v in jax.tree.leaves(hp))
    static = [
        p.name
        for p in inspect.signature(fn).parameters.values()
        if isinstance(p.default, bool) or p.annotation in ("bool", "int", bool, int)
    ]
    assert not set(static) & set(hp), "bool / int arguments stay static"


def jax_run_shapes(tx, shapes, steps=8):
    params, grads = problem(F64, steps, shapes=shapes, seed=3)
    p = [jnp.asarray(x) for x in params]
    state = tx.init(p)
    step = jax.jit(tx.update)
    traj = []
    for g in grads:
        updates, state = step([jnp.asarray(x) for x in g], state, p)
        p = jaxupdate.apply_updates(p, updates)
        traj.append([np.asarray(x) for x in p])
    return traj, state


def test_set_hyperparams_by_hand_matches_torch():
    """torch's group["lr"] = x mid-training: a chainable schedule carries on from x."""

    def manual_torch(k, group):
        if k == 10:
            group["lr"] = 0.03
        if k == 20:
            group["betas"] = (0.5, 0.99)
            group["weight_decay"] = 0.2

    def manual_jax(k, state):
        if k == 10:
            state = set_hyperparams(state, lr=0.03)
        if k == 20:
            state = set_hyperparams(state, betas=(0.5, 0.99), weight_decay=0.2)
        return state

    want, _ = torch_run(
        torch.optim.Adam, dict(lr=0.01), lambda o: [tls.ExponentialLR(o, 0.95)], manual=manual_torch
    )
    # weight_decay given as an array: held in the state although 0 (a literal 0 stays static)
    tx = inject_hyperparams(adam)(lr=exponential_lr(0.01, 0.95), weight_decay=jnp.asarray(0.0))
    got, state = jax_run(tx, manual=manual_jax)
    assert_trajectory(got, want, "manual lr / betas / weight_decay")
    assert float(get_hyperparams(state)["lr"]) == pytest.approx(0.03 * 0.95**30, rel=1e-13)


def test_setting_hyperparams_does_not_recompile():
    """New values, set outside or inside jit, keep the jitted step's single trace."""
    tx = inject_hyperparams(adam)(lr=1e-2)
    params, grads = problem(F64, 30, seed=5)
    p = [jnp.asarray(x) for x in params]
    state = tx.init(p)
    step, traces = counted_step(tx)

    lrs = []
    for k, g in enumerate(grads[:15]):
        if k == 3:
            state = set_hyperparams(state, lr=5e-3)  # a Python float
        if k == 6:
            state = set_hyperparams(state, lr=np.float32(2e-3))  # another dtype: cast
        if k == 9:
            state = set_hyperparams(state, lr=torch.tensor(1e-3), betas=(0.8, 0.99))
        lrs.append(float(get_hyperparams(state)["lr"]))
        p, state = step([jnp.asarray(x) for x in g], state, p)
    assert len(traces) == 1 and step._cache_size() == 1
    assert lrs[2:4] == [1e-2, 5e-3] and lrs[-1] == pytest.approx(1e-3, rel=1e-7)  # float32 in

    # inside a jitted training loop: the lr drops to new_lr at step 10, whatever new_lr is
    loop_traces = []

    @jax.jit
    def train(p, state, gs, new_lr):
        loop_traces.append(1)

        def body(k, carry):
            p, state = carry
            lr = jnp.where(k == 10, new_lr, get_hyperparams(state)["lr"])
            state = set_hyperparams(state, lr=lr)
            updates, state = tx.update(jax.tree.map(lambda g: g[k], gs), state, p)
            return jaxupdate.apply_updates(p, updates), state

        return lax.fori_loop(0, 20, body, (p, state))

    gs = [jnp.asarray(np.stack([g[i] for g in grads[:20]])) for i in range(len(params))]
    start = tx.init([jnp.asarray(x) for x in params])
    outs = [train([jnp.asarray(x) for x in params], start, gs, lr) for lr in (1e-3, 1e-4, 2e-4)]
    assert len(loop_traces) == 1 and train._cache_size() == 1
    assert float(get_hyperparams(outs[1][1])["lr"]) == pytest.approx(1e-4)

    # and the numbers are torch's with the same manual change
    def manual_torch(k, group):
        if k == 10:
            group["lr"] = 1e-4

    want, _ = torch_run(
        torch.optim.Adam, dict(lr=1e-2), lambda o: [], steps=20, manual=manual_torch, seed=5
    )
    assert_trajectory([[np.asarray(x) for x in outs[1][0]]], want[-1:], "jitted loop, manual lr")


def test_optax_inject_hyperparams_works_with_jaxupdate():
    """optax.inject_hyperparams(ju.sgd / ju.adam) keeps bools static and gives torch's numbers."""
    want, _ = torch_run(torch.optim.SGD, dict(lr=0.05, momentum=0.9, nesterov=True), lambda o: [])
    tx = optax.inject_hyperparams(sgd)(lr=0.05, momentum=0.9, nesterov=True)
    got, state = jax_run(tx)
    assert_trajectory(got, want, "optax.inject_hyperparams(sgd)")
    assert set(state.hyperparams) == {"lr", "momentum", "dampening", "weight_decay"}
    want, _ = torch_run(torch.optim.Adam, dict(lr=0.01, amsgrad=True), lambda o: [])
    got, _ = jax_run(optax.inject_hyperparams(adam)(lr=0.01, amsgrad=True))
    assert_trajectory(got, want, "optax.inject_hyperparams(adam)")


def test_set_hyperparams_errors():
    state = sgd(lr=0.1).init([jnp.ones(2)])
    with pytest.raises(ValueError, match="inject_hyperparams"):
        set_hyperparams(state, lr=0.1)
    state = inject_hyperparams(sgd)(lr=0.1).init([jnp.ones(2)])
    with pytest.raises(KeyError, match="betas"):
        set_hyperparams(state, betas=(0.9, 0.99))
    with pytest.raises(KeyError, match="literal 0"):
        set_hyperparams(state, weight_decay=0.1)
    with pytest.raises(ValueError, match="Invalid momentum value"):
        inject_hyperparams(sgd)(lr=0.1, momentum=-1.0)  # torch's checks at construction

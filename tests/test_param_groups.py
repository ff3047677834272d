"""torch-style param groups: per-group hyperparameters reproduce torch, selectors, nnx, errors."""

from __future__ import annotations

from collections import OrderedDict

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch
from flax import nnx

import jaxupdate as ju
from jaxupdate.param_groups import (
    DUPLICATE_MESSAGE,
    ParamGroupsState,
    describe_groups,
    param_groups,
)
from tests.parity import JAX_DTYPE, TOL

try:
    from jaxupdate.optim.adafactor import adafactor
except ImportError:  # pragma: no cover - written in parallel
    adafactor = None

# Leaves in torch's order: three groups and one leaf no group selects ("frozen").
SHAPES = OrderedDict(
    [("g0.w", (3, 4)), ("g0.b", (4,)), ("g1.w", (2, 3)), ("g2.s", ()), ("frozen", (3,))]
)
SELECT = [r"^g0\.", r"^g1\.", r"^g2\."]

# (torch class, jaxupdate function, defaults, per-group overrides)
CASES = {
    "sgd": (
        torch.optim.SGD,
        ju.sgd,
        dict(lr=0.05, momentum=0.9),
        [{}, dict(lr=0.1, momentum=0.5, nesterov=True), dict(weight_decay=0.1, dampening=0.3)],
    ),
    "adam": (
        torch.optim.Adam,
        ju.adam,
        dict(lr=0.01, betas=(0.9, 0.99)),
        [dict(amsgrad=True), dict(lr=0.03, weight_decay=0.1), dict(betas=(0.5, 0.9), eps=1e-3)],
    ),
    "adamw": (
        torch.optim.AdamW,
        ju.adamw,
        dict(lr=0.01),
        [dict(weight_decay=0.0), dict(weight_decay=0.5), dict(maximize=True)],
    ),
    "rmsprop": (
        torch.optim.RMSprop,
        ju.rmsprop,
        dict(lr=0.01, alpha=0.9),
        [dict(centered=True), dict(momentum=0.9), dict(lr=0.02, weight_decay=0.1)],
    ),
    "adagrad": (
        torch.optim.Adagrad,
        ju.adagrad,
        dict(lr=0.05, initial_accumulator_value=0.5),
        [dict(lr_decay=0.01), dict(lr=0.1), dict(weight_decay=0.1)],
    ),
    # torch reads initial_accumulator_value in the constructor only: the groups' own values
    # (0.1, 0) are ignored and every sum starts at 0.5 (see the test below)
    "adagrad-group-initial": (
        torch.optim.Adagrad,
        ju.adagrad,
        dict(lr=0.05, initial_accumulator_value=0.5),
        [dict(initial_accumulator_value=0.1), {}, dict(lr=0.1, initial_accumulator_value=0.0)],
    ),
    "adadelta": (
        torch.optim.Adadelta,
        ju.adadelta,
        dict(lr=0.5),
        [dict(rho=0.5), {}, dict(eps=1e-3, weight_decay=0.1)],
    ),
    "adamax": (torch.optim.Adamax, ju.adamax, dict(lr=0.01), [{}, dict(lr=0.1), dict(eps=1e-2)]),
    "nadam": (
        torch.optim.NAdam,
        ju.nadam,
        dict(lr=0.01),
        [dict(momentum_decay=0.01), dict(weight_decay=0.1, decoupled_weight_decay=True), {}],
    ),
    "radam": (
        torch.optim.RAdam,
        ju.radam,
        dict(lr=0.01),
        [{}, dict(betas=(0.5, 0.9)), dict(weight_decay=0.1)],
    ),
    "asgd": (
        torch.optim.ASGD,
        ju.asgd,
        dict(lr=0.01, t0=5),
        [{}, dict(lambd=1e-2, alpha=0.5), dict(t0=1.0, weight_decay=0.1)],
    ),
    "rprop": (
        torch.optim.Rprop,
        ju.rprop,
        dict(lr=0.01),
        [{}, dict(etas=(0.3, 1.5)), dict(lr=0.1, step_sizes=(1e-3, 0.2))],
    ),
}
if adafactor is not None:
    CASES["adafactor"] = (
        torch.optim.Adafactor,
        adafactor,
        dict(lr=0.01),
        [{}, dict(lr=0.05, beta2_decay=-0.5), dict(weight_decay=0.1, d=2.0)],
    )


def _run_both(name, dtype=torch.float64, steps=25, seed=0):
    torch_cls, ju_fn, defaults, overrides = CASES[name]
    rng = np.random.default_rng(seed)
    p0 = OrderedDict((k, rng.standard_normal(s)) for k, s in SHAPES.items())
    grads = [OrderedDict((k, rng.standard_normal(s)) for k, s in SHAPES.items())
             for _ in range(steps)]
    # torch: the frozen tensor is not given to the optimizer
    tp = OrderedDict((k, torch.tensor(v).to(dtype).requires_grad_()) for k, v in p0.items())
    groups = [
        {"params": [t for k, t in tp.items() if k.startswith(f"g{i}.")], **o}
        for i, o in enumerate(overrides)
    ]
    opt = torch_cls(groups, **defaults)
    # jaxupdate: the same groups by regex over the key paths
    tx = param_groups(
        ju_fn, [{"params": s, **o} for s, o in zip(SELECT, overrides)], **defaults
    )
    jdt = JAX_DTYPE[dtype]
    params = OrderedDict((k, jnp.asarray(v, jdt)) for k, v in p0.items())
    state = tx.init(params)

    @jax.jit
    def step(g, state, params):
        updates, state = tx.update(g, state, params)
        return ju.apply_updates(params, updates), state

    worst = 0.0
    for g in grads:
        for k, t in tp.items():
            t.grad = torch.tensor(g[k]).to(dtype)
        opt.step()
        params, state = step(OrderedDict((k, jnp.asarray(v, jdt)) for k, v in g.items()),
                             state, params)
        for k, t in tp.items():
            ref = t.detach().numpy()
            diff = np.max(np.abs(np.asarray(params[k]) - ref)) / max(np.max(np.abs(ref)), 1e-30)
            worst = max(worst, float(diff))
    np.testing.assert_array_equal(np.asarray(params["frozen"]), p0["frozen"].astype(
        np.float64 if dtype == torch.float64 else np.float32))
    return worst


@pytest.mark.parametrize("name", list(CASES))
def test_groups_match_torch(name):
    err = _run_both(name)
    assert err <= TOL[torch.float64], f"{name}: {err:.2e}"


@pytest.mark.parametrize("name", ["sgd", "adam", "rmsprop"])
def test_groups_match_torch_float32(name):
    err = _run_both(name, torch.float32)
    assert err <= TOL[torch.float32], f"{name}: {err:.2e}"


def test_adagrad_initial_accumulator_value_per_group():
    """torch's Adagrad fills ``sum`` in its constructor from the constructor's
    ``initial_accumulator_value`` (0 by default): a group's own value stays in the group but
    is not used. jaxupdate's param groups do the same (the trajectories: ``adagrad-group-initial``
    above)."""
    for defaults in ({}, {"initial_accumulator_value": 0.25}):
        t = torch.zeros(2, requires_grad=True)
        opt = torch.optim.Adagrad([{"params": [t], "initial_accumulator_value": 0.5}], **defaults)
        assert opt.param_groups[0]["initial_accumulator_value"] == 0.5
        tx = param_groups(
            ju.adagrad, [{"params": ".", "initial_accumulator_value": 0.5}], **defaults
        )
        got = tx.init([jnp.zeros(2)]).groups[0][0].sum[0]
        assert np.asarray(got).tolist() == opt.state[t]["sum"].tolist()
        # the group still holds its value, as torch's param_groups do
        assert describe_groups(tx, [jnp.zeros(2)])[0]["initial_accumulator_value"] == 0.5
    with pytest.raises(ValueError, match="initial_accumulator_value"):  # still validated
        param_groups(ju.adagrad, [{"params": ".", "initial_accumulator_value": -1.0}])


def test_frozen_leaves_keep_no_state():
    params = {"a": jnp.ones(3), "b": {"c": jnp.ones(2), "d": jnp.ones((2, 2))}}
    tx = param_groups(ju.adam, [{"params": "^a$"}, {"params": "c$", "lr": 0.1}])
    state = tx.init(params)
    assert isinstance(state, ParamGroupsState) and len(state.groups) == 2
    sizes = [[x.shape for x in s[0].exp_avg] for s in state.groups]
    assert sizes == [[(3,)], [(2,)]]  # b/d: no buffer anywhere
    updates, _ = tx.update(jax.tree.map(jnp.ones_like, params), state, params)
    np.testing.assert_array_equal(np.asarray(updates["b"]["d"]), np.zeros((2, 2)))
    assert updates["b"]["d"].dtype == params["b"]["d"].dtype
    assert float(updates["b"]["c"][0]) == pytest.approx(-0.1)


def test_selectors_predicate_mask_labels():
    params = {"enc": {"w": jnp.ones((2, 3)), "b": jnp.ones(3)}, "dec": [jnp.ones((3, 2)),
                                                                    jnp.ones(2)]}
    expect = [["dec/0", "enc/w"], ["dec/1", "enc/b"]]
    by_regex = param_groups(ju.sgd, [{"params": r"(w|0)$"}, {"params": r"(b|1)$"}])
    by_pred2 = param_groups(ju.sgd, [{"params": lambda path, x: x.ndim == 2},
                                     {"params": lambda path, x: x.ndim < 2}])
    by_pred1 = param_groups(ju.sgd, [{"params": lambda path: path in ("dec/0", "enc/w")},
                                     {"params": lambda path: path in ("dec/1", "enc/b")}])
    mask = {"enc": {"w": True, "b": False}, "dec": [True, False]}
    not_mask = jax.tree.map(lambda m: not m, mask)
    by_mask = param_groups(ju.sgd, [{"params": mask}, {"params": not_mask}])
    labels = {"enc": {"w": "matrix", "b": "vector"}, "dec": ["matrix", "vector"]}
    by_label = param_groups(ju.sgd, [{"label": "matrix"}, {"label": "vector"}], labels=labels)
    by_label_fn = param_groups(
        ju.sgd, [{"label": 2}, {"label": 1}], labels=lambda p: jax.tree.map(jnp.ndim, p)
    )
    for tx in (by_regex, by_pred2, by_pred1, by_mask, by_label, by_label_fn):
        got = [g["params"] for g in describe_groups(tx, params)]
        assert got == expect
    # a prefix mask covers a whole subtree
    prefix = param_groups(ju.sgd, [{"params": {"enc": True, "dec": False}}])
    assert describe_groups(prefix, params)[0]["params"] == ["enc/b", "enc/w"]
    # describe_groups lists every argument, like torch's optimizer.param_groups
    g = describe_groups(param_groups(ju.sgd, [{"params": "enc", "lr": 0.5}], momentum=0.9),
                        params)[0]
    assert g == {"params": ["enc/b", "enc/w"], "lr": 0.5, "momentum": 0.9, "dampening": 0.0,
                 "weight_decay": 0.0, "nesterov": False, "maximize": False}


def test_duplicate_raises_torch_error():
    params = {"a": jnp.ones(2), "ab": jnp.ones(2)}
    tx = param_groups(ju.sgd, [{"params": "a"}, {"params": "b"}])
    with pytest.raises(ValueError, match=DUPLICATE_MESSAGE) as info:
        tx.init(params)
    assert "'ab'" in str(info.value)
    # torch, given the same tensor twice
    t = torch.zeros(2, requires_grad=True)
    with pytest.raises(ValueError, match=DUPLICATE_MESSAGE):
        torch.optim.SGD([{"params": [t]}, {"params": [t]}], lr=0.1)


def test_construction_errors():
    with pytest.raises(ValueError, match="Invalid learning rate: -1"):
        param_groups(ju.sgd, [{"params": "a"}, {"params": "b", "lr": -1}])
    with pytest.raises(ValueError, match="Invalid beta parameter at index 1: 1.0"):
        param_groups(ju.adam, [{"params": "a", "betas": (0.9, 1.0)}])
    with pytest.raises(TypeError, match="param group 1: .*'amsgrad'"):
        param_groups(ju.sgd, [{"params": "a"}, {"params": "b", "amsgrad": True}])
    with pytest.raises(ValueError, match="exactly one of 'params'"):
        param_groups(ju.sgd, [{"lr": 0.1}])
    with pytest.raises(ValueError, match="labels="):
        param_groups(ju.sgd, [{"label": "x"}]).init({"a": jnp.ones(1)})
    with pytest.raises(ValueError, match="does not match the structure"):
        param_groups(ju.sgd, [{"params": {"a": True}}]).init({"b": jnp.ones(1)})
    with pytest.raises(TypeError, match="booleans"):
        param_groups(ju.sgd, [{"params": {"a": "yes"}}]).init({"a": jnp.ones(1)})


def test_single_group_equals_plain_optimizer_and_schedules():
    """No groups: one group of every leaf, identical to the optimizer itself; schedules work."""
    rng = np.random.default_rng(0)
    params = {"w": jnp.asarray(rng.standard_normal((3, 2))),
              "b": jnp.asarray(rng.standard_normal(2))}
    lr = optax.linear_schedule(0.1, 0.01, 10)
    tx_a = param_groups(ju.adam, lr=lr, amsgrad=True)
    tx_b = ju.adam(lr=lr, amsgrad=True)
    pa, pb = params, params
    sa, sb = tx_a.init(pa), tx_b.init(pb)
    for _ in range(5):
        g = jax.tree.map(lambda x: jnp.asarray(rng.standard_normal(x.shape)), params)
        ua, sa = tx_a.update(g, sa, pa)
        ub, sb = tx_b.update(g, sb, pb)
        pa, pb = ju.apply_updates(pa, ua), ju.apply_updates(pb, ub)
    for a, b in zip(jax.tree.leaves(pa), jax.tree.leaves(pb)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    # an empty group is allowed (torch allows a group with no parameters too), with a warning:
    # a selector that matches nothing is most often a miss
    tx = param_groups(ju.sgd, [{"params": "nothing"}, {"params": "."}], lr=0.1)
    with pytest.warns(UserWarning, match="param group 0 .*selects no parameter; the leaves"):
        state = tx.init(params)
    u, _ = tx.update(params, state, params)
    np.testing.assert_allclose(np.asarray(u["b"]), -0.1 * np.asarray(params["b"]))


class _TorchMLP(torch.nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.fc1 = torch.nn.Linear(4, 8)
        self.fc2 = torch.nn.Linear(8, 3)

    def forward(self, x):
        return self.fc2(torch.tanh(self.fc1(x)))


class _NnxMLP(nnx.Module):
    def __init__(self, rngs):
        kw = dict(param_dtype=jnp.float64, dtype=jnp.float64, rngs=rngs)
        self.fc1 = nnx.Linear(4, 8, **kw)
        self.fc2 = nnx.Linear(8, 3, **kw)

    def __call__(self, x):
        return self.fc2(jnp.tanh(self.fc1(x)))


def test_nnx_state_and_optimizer_match_torch():
    """Weight decay on kernels only, another lr for fc2, through nnx.Optimizer, vs torch.

    torch and JAX compute the gradients themselves here (not fed the same arrays), so their
    rounding differs at 1e-16 per step; measured agreement after 8 steps: 2.6e-16 relative.
    """
    from jaxupdate.interop.weights import nnx_to_torch, torch_to_nnx

    tnet = _TorchMLP().double()
    model = _NnxMLP(nnx.Rngs(0))
    torch_to_nnx(model, tnet)
    # torch: decay = weights, no decay = biases, fc2's weight with its own lr
    t_opt = torch.optim.SGD(
        [
            {"params": [tnet.fc1.weight], "weight_decay": 0.1},
            {"params": [tnet.fc2.weight], "weight_decay": 0.1, "lr": 0.05},
            {"params": [tnet.fc1.bias, tnet.fc2.bias]},
        ],
        lr=0.1,
        momentum=0.9,
        nesterov=True,
    )
    tx = param_groups(
        ju.sgd,
        [
            {"params": r"^fc1/kernel$", "weight_decay": 0.1},
            {"params": r"^fc2/kernel$", "weight_decay": 0.1, "lr": 0.05},
            {"params": r"bias$"},
        ],
        lr=0.1,
        momentum=0.9,
        nesterov=True,
    )
    optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((16, 4))
    y = rng.standard_normal((16, 3))

    def loss_fn(m):
        return jnp.mean((m(jnp.asarray(x)) - jnp.asarray(y)) ** 2)

    @nnx.jit
    def train_step(model, optimizer):
        grads = nnx.grad(loss_fn)(model)
        optimizer.update(model, grads)

    for _ in range(8):
        t_opt.zero_grad()
        torch.mean((tnet(torch.tensor(x)) - torch.tensor(y)) ** 2).backward()
        t_opt.step()
        train_step(model, optimizer)
    ours = nnx_to_torch(model)
    worst = 0.0
    for k, v in tnet.state_dict().items():
        ref = v.numpy()
        err = np.max(np.abs(ours[k].numpy() - ref)) / np.max(np.abs(ref))
        worst = max(worst, err)
    assert worst <= 1e-14, worst


def test_torch_error_table_duplicates():
    """torch's own optim_error_inputs_func entries about a parameter in two groups."""
    from torch.testing._internal import common_optimizers as co

    checked = 0
    for torch_cls, ju_fn, _, _ in CASES.values():
        table = getattr(co, f"optim_error_inputs_func_{torch_cls.__name__.lower()}", None)
        if table is None:
            continue
        for err in table(device="cpu", dtype=torch.float64):
            oi = err.optimizer_error_input
            if oi.params is None or err.error_regex != DUPLICATE_MESSAGE:
                continue
            with pytest.raises(err.error_type, match=err.error_regex):  # torch agrees
                torch_cls(oi.params, **oi.kwargs)
            kwargs = {k: v for k, v in oi.kwargs.items() if k not in ("foreach", "fused")}
            tx = param_groups(ju_fn, [{"params": "w"}, {"params": "^w$"}], **kwargs)
            with pytest.raises(err.error_type, match=err.error_regex):
                tx.init({"w": jnp.zeros(2)})
            checked += 1
    assert checked >= 1

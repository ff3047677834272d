"""Widely used torch recipes, side by side with torch (issue 15).

Hugging Face warmup schedules (LambdaLR with plain-Python lambdas) under jit, timm /
torchvision parameter groups, torchvision's EMA with its warm-up reset of ``n_averaged``,
and ReduceLROnPlateau stepped once per epoch, each through the jaxupdate route a torch user
would take and through :func:`jaxupdate.interop.from_torch` of the live torch objects.
"""

from __future__ import annotations

import functools
import math
from collections import OrderedDict

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

import jaxupdate as ju
from jaxupdate.interop import current_lr
from jaxupdate.interop import parity as P
from jaxupdate.interop.from_torch import from_torch
from jaxupdate.interop.weights import nnx_links, weights_from_torch, weights_to_torch
from jaxupdate.lr_scheduler import lambda_lr, multiplicative_lr, step_plateau
from jaxupdate.param_groups import by_name, describe_groups, leaf_paths, of_type, torch_name
from tests.parity import TOL

TOL64 = TOL[torch.float64]  # 1e-12


# --- Hugging Face transformers' schedules -------------------------------------------------------
# Copied from transformers/optimization.py (transformers 4.x:
# _get_linear_schedule_with_warmup_lr_lambda, _get_cosine_schedule_with_warmup_lr_lambda and
# the get_* functions that wrap them in LambdaLR); transformers is not a dependency here.


def _get_linear_schedule_with_warmup_lr_lambda(
    current_step: int, *, num_warmup_steps: int, num_training_steps: int
):
    if current_step < num_warmup_steps:
        return float(current_step) / float(max(1, num_warmup_steps))
    return max(
        0.0,
        float(num_training_steps - current_step)
        / float(max(1, num_training_steps - num_warmup_steps)),
    )


def _get_cosine_schedule_with_warmup_lr_lambda(
    current_step: int, *, num_warmup_steps: int, num_training_steps: int, num_cycles: float
):
    if current_step < num_warmup_steps:
        return float(current_step) / float(max(1, num_warmup_steps))
    progress = float(current_step - num_warmup_steps) / float(
        max(1, num_training_steps - num_warmup_steps)
    )
    return max(0.0, 0.5 * (1.0 + math.cos(math.pi * float(num_cycles) * 2.0 * progress)))


def get_linear_schedule_with_warmup(optimizer, num_warmup_steps, num_training_steps,
                                    last_epoch=-1):
    lr_lambda = functools.partial(
        _get_linear_schedule_with_warmup_lr_lambda,
        num_warmup_steps=num_warmup_steps,
        num_training_steps=num_training_steps,
    )
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda, last_epoch)


def get_cosine_schedule_with_warmup(optimizer, num_warmup_steps, num_training_steps,
                                    num_cycles=0.5, last_epoch=-1):
    lr_lambda = functools.partial(
        _get_cosine_schedule_with_warmup_lr_lambda,
        num_warmup_steps=num_warmup_steps,
        num_training_steps=num_training_steps,
        num_cycles=num_cycles,
    )
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda, last_epoch)


HF = {
    "linear": (get_linear_schedule_with_warmup, _get_linear_schedule_with_warmup_lr_lambda, {}),
    "cosine": (get_cosine_schedule_with_warmup, _get_cosine_schedule_with_warmup_lr_lambda,
               {"num_cycles": 0.5}),
}
WARMUP, TOTAL = 6, 30


def _hf_lambda(kind):
    _, fn, extra = HF[kind]
    return functools.partial(fn, num_warmup_steps=WARMUP, num_training_steps=TOTAL, **extra)


@pytest.mark.parametrize("kind", sorted(HF))
def test_hf_schedule_values_under_jit(kind):
    """Every lr of the HF schedule, jitted and vmapped, is torch's LambdaLR value exactly."""
    get, _, _ = HF[kind]
    w = torch.nn.Parameter(torch.zeros(1, dtype=torch.float64))
    opt = torch.optim.AdamW([w], lr=5e-4)
    sched = get(opt, WARMUP, TOTAL)
    want = []
    for _ in range(TOTAL + 5):  # past the end too (the linear lambda clamps at 0)
        want.append(sched.get_last_lr()[0])
        opt.step()
        sched.step()
    s = lambda_lr(5e-4, _hf_lambda(kind))
    counts = jnp.arange(len(want))
    got_jit = [float(jax.jit(s)(c)) for c in range(len(want))]
    got_vmap = np.asarray(jax.vmap(s)(counts))
    assert got_jit == want  # the same Python arithmetic, then one product: bit for bit
    np.testing.assert_array_equal(got_vmap, np.asarray(want))


@pytest.mark.parametrize("kind", sorted(HF))
def test_hf_adamw_side_by_side(kind):
    """AdamW with an HF warmup schedule, jitted training steps, against torch (float64)."""
    get, _, _ = HF[kind]
    kw = {"lr": 5e-3, "weight_decay": 0.01}
    j, t = P.trajectories(
        "AdamW", kw, "float64", TOTAL,
        scheduler_fn=lambda o: get(o, WARMUP, TOTAL),
        tx_fn=lambda: ju.adamw(lr=lambda_lr(5e-3, _hf_lambda(kind)), weight_decay=0.01),
        jit=True,
    )
    assert P.rel_err(j, t) <= TOL64


@pytest.mark.parametrize("kind", sorted(HF))
@pytest.mark.parametrize("convert_at", [0, 4, 11])
def test_hf_from_torch_mid_run(kind, convert_at):
    """from_torch of a live HF LambdaLR (in warm-up and after), then jitted steps."""
    get, _, _ = HF[kind]
    j, t = P.trajectories(
        "AdamW", {"lr": 5e-3, "weight_decay": 0.01}, "float64", TOTAL,
        scheduler_fn=lambda o: get(o, WARMUP, TOTAL),
        via_from_torch=True, convert_at=convert_at, jit=True,
    )
    assert P.rel_err(j, t) <= TOL64


def test_python_multiplicative_and_cyclic_scale_fn():
    """The same host evaluation for MultiplicativeLR's lambda and CyclicLR's scale_fn."""
    def mult(e):
        return 0.9 if e % 3 == 0 else 1.0  # a Python `if` on the count

    def scale(c):
        return 1.0 if c <= 1 else 0.5 ** math.floor(c / 2)

    cases = [
        (lambda o: torch.optim.lr_scheduler.MultiplicativeLR(o, mult),
         lambda: ju.sgd(lr=multiplicative_lr(0.05, mult), momentum=0.9)),
        (lambda o: torch.optim.lr_scheduler.CyclicLR(o, 0.01, 0.1, step_size_up=3,
                                                     scale_fn=scale, scale_mode="cycle"),
         None),
    ]
    for sched_fn, tx_fn in cases:
        if tx_fn is not None:
            j, t = P.trajectories("SGD", {"lr": 0.05, "momentum": 0.9}, "float64", 16,
                                  scheduler_fn=sched_fn, tx_fn=tx_fn, jit=True)
            assert P.rel_err(j, t) <= TOL64
        j, t = P.trajectories("SGD", {"lr": 0.05, "momentum": 0.9}, "float64", 16,
                              scheduler_fn=sched_fn, via_from_torch=True, convert_at=5,
                              jit=True)
        assert P.rel_err(j, t) <= TOL64


def test_traceable_lambda_stays_in_the_compiled_step():
    """A lambda written with jax.numpy is traced, not called back."""
    traced = lambda_lr(0.1, lambda e: jnp.where(e < 5, (e + 1) / 5, 0.95 ** (e - 5)))
    python = lambda_lr(0.1, _hf_lambda("linear"))
    assert not traced._fn.on_host and python._fn.on_host
    assert "callback" not in str(jax.make_jaxpr(traced)(3))
    assert "callback" in str(jax.make_jaxpr(python)(3))


def test_lambda_that_cannot_run_is_refused_at_conversion():
    with pytest.raises(ValueError, match="jax.numpy"):
        lambda_lr(0.1, lambda e: None)
    with pytest.raises(ValueError, match="cannot be evaluated"):
        lambda_lr(0.1, lambda e: {"lr": e}[e])


# --- side-by-side runs on torch modules --------------------------------------------------------


def _grads(model, rng):
    """One gradient per parameter, by name (the same numbers on both sides)."""
    return OrderedDict(
        (n, rng.standard_normal(tuple(p.shape))) for n, p in model.named_parameters()
    )


def _torch_step(model, opt, grads, sched=None):
    for n, p in model.named_parameters():
        p.grad = torch.tensor(grads[n], dtype=p.dtype)
    opt.step()
    if sched is not None:
        sched.step()


def _flat(tree) -> OrderedDict:
    """Dotted name -> numpy array, for a flat or nested weights tree."""
    paths, leaves, _ = leaf_paths(tree)
    return OrderedDict((torch_name(p), np.asarray(x)) for p, x in zip(paths, leaves))


def _like(tree, grads: OrderedDict):
    """``grads`` (by dotted name) as a tree shaped like ``tree``."""
    paths, _, treedef = leaf_paths(tree)
    return treedef.unflatten([jnp.asarray(grads[torch_name(p)]) for p in paths])


def _rel(model, tree) -> float:
    """Largest relative difference between the torch model's parameters and ``tree``'s."""
    ours = _flat(tree)
    worst = 0.0
    for n, p in model.named_parameters():
        t = p.detach().numpy()
        worst = max(worst, float(np.max(np.abs(ours[n] - t)) / max(np.max(np.abs(t)), 1e-300)))
    return worst


def _side_by_side(model, opt, tx, params, steps, *, seed=0, sched=None, jit=True):
    """torch and jaxupdate on the same gradients; the worst relative error over the run."""
    rng = np.random.default_rng(seed)
    state = tx.init(params)

    def step(g, s, p):
        u, s = tx.update(g, s, p)
        return ju.apply_updates(p, u), s

    step = jax.jit(step) if jit else step
    worst = 0.0
    for _ in range(steps):
        g = _grads(model, rng)
        _torch_step(model, opt, g, sched)
        params, state = step(_like(params, g), state, params)
        worst = max(worst, _rel(model, params))
    return worst, params, state


class Mlp(torch.nn.Module):
    """Linear -> LayerNorm -> Linear, thousands of elements per tensor (not multiples of 16)."""

    def __init__(self):
        super().__init__()
        self.fc1 = torch.nn.Linear(300, 33)
        self.norm = torch.nn.LayerNorm(33)
        self.fc2 = torch.nn.Linear(33, 101)


def _mlp(seed=0):
    torch.manual_seed(seed)
    return Mlp().double()


# timm's param_groups_weight_decay (timm/optim/_param_groups.py, timm 1.x), copied:
# biases and 1-d parameters (norms) first, without weight decay.
def param_groups_weight_decay(model, weight_decay=1e-5, no_weight_decay_list=()):
    no_weight_decay_list = set(no_weight_decay_list)
    decay = []
    no_decay = []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        if param.ndim <= 1 or name.endswith(".bias") or name in no_weight_decay_list:
            no_decay.append(param)
        else:
            decay.append(param)
    return [
        {"params": no_decay, "weight_decay": 0.0},
        {"params": decay, "weight_decay": weight_decay},
    ]


def test_timm_groups_model_order_is_refused():
    """Point 3: the model's order is not timm's optimizer order; init names the first leaf."""
    model = _mlp()
    opt = torch.optim.AdamW(param_groups_weight_decay(model, 0.05), lr=1e-3)
    tx = from_torch(opt)  # before the first step: no state whose shapes would catch it
    with pytest.raises(ValueError, match=r"leaf 0 \('fc1.weight'\).*param-group order"):
        tx.init(weights_from_torch(model))
    params = weights_from_torch(model, optimizer=opt)
    assert list(params) == ["fc1.bias", "norm.weight", "norm.bias", "fc2.bias",
                            "fc1.weight", "fc2.weight"]
    tx.init(params)


@pytest.mark.parametrize("torch_steps", [0, 3])
def test_timm_groups_from_torch(torch_steps):
    """Point 3: from_torch of timm's groups, leaves ordered by the optimizer, matches torch."""
    model = _mlp()
    opt = torch.optim.AdamW(param_groups_weight_decay(model, 0.05), lr=1e-3)
    rng = np.random.default_rng(1)
    for _ in range(torch_steps):
        _torch_step(model, opt, _grads(model, rng))
    tx = from_torch(opt)
    err, params, _ = _side_by_side(model, opt, tx, weights_from_torch(model, optimizer=opt), 10)
    assert err <= TOL64
    model.load_state_dict(weights_to_torch(params))  # the names carry back to torch


def test_timm_groups_native():
    """The same groups written with ju.param_groups over the model's order, side by side."""
    model = _mlp()
    opt = torch.optim.AdamW(param_groups_weight_decay(model, 0.05), lr=1e-3)

    def no_decay(path, x):
        return x.ndim <= 1 or path.endswith(".bias")

    tx = ju.param_groups(
        ju.adamw,
        [{"params": no_decay, "weight_decay": 0.0},
         {"params": lambda path, x: not no_decay(path, x), "weight_decay": 0.05}],
        lr=1e-3,
    )
    err, _, _ = _side_by_side(model, opt, tx, weights_from_torch(model), 12)
    assert err <= TOL64


# --- point 4: selection by module type, HF names, empty groups -----------------------------------

# torchvision's split_normalization_params (torchvision/ops/_utils.py), copied.
def split_normalization_params(model, norm_classes=None):
    if not norm_classes:
        norm_classes = [
            torch.nn.modules.batchnorm._BatchNorm,
            torch.nn.LayerNorm,
            torch.nn.GroupNorm,
            torch.nn.modules.instancenorm._InstanceNorm,
            torch.nn.LocalResponseNorm,
        ]
    norm_classes = tuple(norm_classes)
    params = [[], []]
    for module in model.modules():
        if next(module.children(), None):
            params[1].extend(p for p in module.parameters(recurse=False) if p.requires_grad)
        elif isinstance(module, norm_classes):
            params[0].extend(p for p in module.parameters() if p.requires_grad)
        else:
            params[1].extend(p for p in module.parameters() if p.requires_grad)
    return params


def test_torchvision_norm_groups_by_module_type():
    """torchvision's norm_weight_decay=0 groups, selected by module type (of_type)."""
    model = _mlp()
    norm, other = split_normalization_params(model)
    opt = torch.optim.SGD([{"params": other, "weight_decay": 1e-4},
                           {"params": norm, "weight_decay": 0.0}],
                          lr=0.1, momentum=0.9, nesterov=True)
    is_norm = of_type(model, torch.nn.LayerNorm)
    tx = ju.param_groups(
        ju.sgd,
        [{"params": lambda p: not is_norm(p), "weight_decay": 1e-4},
         {"params": is_norm, "weight_decay": 0.0}],
        lr=0.1, momentum=0.9, nesterov=True,
    )
    for nested in (False, True):  # dotted names and "norm/weight" paths alike
        m = _mlp()
        norm, other = split_normalization_params(m)
        o = torch.optim.SGD([{"params": other, "weight_decay": 1e-4},
                             {"params": norm, "weight_decay": 0.0}],
                            lr=0.1, momentum=0.9, nesterov=True)
        err, _, _ = _side_by_side(m, o, tx, weights_from_torch(m, nested=nested), 12)
        assert err <= TOL64
    assert [is_norm(p) for p in ("norm.weight", "norm/bias", "fc1/weight")] == [
        True, True, False]
    del opt


def test_nnx_of_type_module_and_variable():
    """nnx: norms by module type, and a Param subclass by variable type."""
    nnx = pytest.importorskip("flax.nnx")

    class NoDecay(nnx.Param):
        pass

    class Model(nnx.Module):
        def __init__(self, rngs):
            self.fc1 = nnx.Linear(300, 33, rngs=rngs)
            self.norm = nnx.LayerNorm(33, rngs=rngs)
            self.fc2 = nnx.Linear(33, 101, rngs=rngs)
            self.pos = NoDecay(jnp.zeros((17, 33)))

    m = Model(nnx.Rngs(0))
    state = nnx.state(m, nnx.Param)
    paths = leaf_paths(state)[0]
    by_module = [p for p in paths if of_type(m, nnx.LayerNorm)(p)]
    by_var = [p for p in paths if of_type(m, NoDecay)(p)]
    assert by_module == ["norm/bias", "norm/scale"]
    assert by_var == ["pos"] and [p for p in paths if of_type(state, NoDecay)(p)] == ["pos"]
    # the same parameters torchvision splits off the torch twin of the model
    twin = _mlp()
    norm, _ = split_normalization_params(twin)
    torch_norms = {n for n, p in twin.named_parameters() if any(p is q for q in norm)}
    links = {link.nnx_path: link.torch_name for link in nnx_links(m)}
    assert {links[p] for p in by_module} == torch_norms == {"norm.weight", "norm.bias"}
    tx = ju.param_groups(ju.adamw, [{"params": of_type(m, nnx.LayerNorm, NoDecay),
                                     "weight_decay": 0.0},
                                    {"params": lambda p: not of_type(
                                        m, nnx.LayerNorm, NoDecay)(p)}], lr=1e-3)
    groups = describe_groups(tx, state)
    assert groups[0]["params"] == ["norm/bias", "norm/scale", "pos"]
    assert groups[1]["params"] == ["fc1/bias", "fc1/kernel", "fc2/bias", "fc2/kernel"]


class Block(torch.nn.Module):
    """BERT-style names: ``dense`` and ``LayerNorm`` (capitalised, as in transformers)."""

    def __init__(self, n_in, n_out):
        super().__init__()
        self.dense = torch.nn.Linear(n_in, n_out)
        self.LayerNorm = torch.nn.LayerNorm(n_out)


class Bert(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.encoder = torch.nn.Sequential(Block(300, 33), Block(33, 33))
        self.classifier = torch.nn.Linear(33, 7)


def test_hf_no_decay_names_on_nested_paths():
    """HF's ``any(nd in n for nd in ["bias", "LayerNorm.weight"])`` on nested paths."""
    torch.manual_seed(0)
    model = Bert().double()
    no_decay = ["bias", "LayerNorm.weight"]
    # transformers' examples (run_glue_no_trainer.py), as written there
    grouped = [
        {"params": [p for n, p in model.named_parameters()
                    if not any(nd in n for nd in no_decay)], "weight_decay": 0.01},
        {"params": [p for n, p in model.named_parameters()
                    if any(nd in n for nd in no_decay)], "weight_decay": 0.0},
    ]
    opt = torch.optim.AdamW(grouped, lr=5e-3)
    sched = get_linear_schedule_with_warmup(opt, WARMUP, TOTAL)
    params = weights_from_torch(model, nested=True)  # paths "encoder/0/LayerNorm/weight"
    tx = ju.param_groups(
        ju.adamw,
        [{"params": by_name(lambda n: not any(nd in n for nd in no_decay)),
          "weight_decay": 0.01},
         {"params": by_name(lambda n: any(nd in n for nd in no_decay)), "weight_decay": 0.0}],
        lr=lambda_lr(5e-3, _hf_lambda("linear")),
    )
    err, _, _ = _side_by_side(model, opt, tx, params, 20, sched=sched)
    assert err <= TOL64
    # the same test on the "/" path alone misses LayerNorm.weight
    with pytest.warns(UserWarning, match="param group 1 .* selects no parameter"):
        ju.param_groups(ju.adamw, [{"params": "^classifier/"},
                                   {"params": lambda p: "LayerNorm.weight" in p}]).init(params)


def test_empty_group_warning_is_silent_when_all_groups_select():
    import warnings

    tx = ju.param_groups(ju.sgd, [{"params": "w"}, {"params": "b", "lr": 0.5}], lr=0.1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        tx.init({"w": jnp.ones(3), "b": jnp.ones(2)})


# --- point 4: torchvision's EMA with its warm-up reset -------------------------------------------

# torchvision's references/classification/utils.py, copied.
class ExponentialMovingAverage(torch.optim.swa_utils.AveragedModel):
    def __init__(self, model, decay, device="cpu"):
        def ema_avg(avg_model_param, model_param, num_averaged):
            return decay * avg_model_param + (1 - decay) * model_param

        super().__init__(model, device, ema_avg, use_buffers=True)


def test_torchvision_ema_with_n_averaged_reset():
    """torchvision's train.py: EMA every 2 steps, n_averaged reset during the lr warm-up."""
    model = _mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    decay = 0.9
    ema_t = ExponentialMovingAverage(model, decay)
    tx = ju.sgd(lr=0.05, momentum=0.9)
    params = weights_from_torch(model)
    state = tx.init(params)
    ema = ju.swa_utils.averaged_model(avg_fn=lambda a, m, n: decay * a + (1 - decay) * m)
    ema_state = ema.init(params)
    step = jax.jit(lambda g, s, p: tx.update(g, s, p))
    ema_update = jax.jit(ema.update)
    rng = np.random.default_rng(0)
    epochs, steps_per_epoch, ema_steps, warmup_epochs = 4, 5, 2, 2
    worst, resets = 0.0, 0
    for epoch in range(epochs):
        for i in range(steps_per_epoch):
            g = _grads(model, rng)
            _torch_step(model, opt, g)
            u, state = step(_like(params, g), state, params)
            params = ju.apply_updates(params, u)
            if i % ema_steps == 0:
                ema_t.update_parameters(model)
                ema_state = ema_update(ema_state, params)
                if epoch < warmup_epochs:
                    ema_t.n_averaged.fill_(0)
                    ema_state = ju.swa_utils.reset_n_averaged(ema_state)
                    resets += 1
                assert int(ema_state.n_averaged) == int(ema_t.n_averaged)
                worst = max(worst, _rel(ema_t.module, ema_state.params))
    assert resets == 6 and int(ema_state.n_averaged) == 6
    assert worst <= TOL64
    # while reset, the average is a copy of the model
    assert ema_state.n_averaged.dtype == ema.init(params).n_averaged.dtype


# --- point 4: ReduceLROnPlateau stepped once per epoch, converted live ---------------------------

METRICS = [1.0, 0.9, 0.95, 0.97, 0.99, 0.8, 0.85, 0.9, 0.95, 0.96, 0.97, 0.98, 0.99, 1.0]


@pytest.mark.parametrize("convert_epoch", [0, 3])
def test_per_epoch_plateau_from_torch(convert_epoch):
    """A live ReduceLROnPlateau (timm's two groups), converted mid-run, stepped per epoch."""
    model = _mlp()
    opt = torch.optim.SGD(param_groups_weight_decay(model, 1e-4), lr=0.1, momentum=0.9)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=1,
                                                       cooldown=1, min_lr=[0.01, 0.02])
    steps = 4
    rng = np.random.default_rng(0)
    for epoch in range(convert_epoch):
        for _ in range(steps):
            _torch_step(model, opt, _grads(model, rng))
        sched.step(METRICS[epoch])
    tx = from_torch(opt, sched, steps_per_epoch=steps)
    params = weights_from_torch(model, optimizer=opt)
    state = tx.init(params)
    step = jax.jit(lambda g, s, p: tx.update(g, s, p))  # no value= at the updates
    plateau = jax.jit(lambda s, m: step_plateau(tx, s, m))
    worst, lrs = 0.0, set()
    for epoch in range(convert_epoch, len(METRICS)):
        for _ in range(steps):
            g = _grads(model, rng)
            _torch_step(model, opt, g)
            u, state = step(_like(params, g), state, params)
            params = ju.apply_updates(params, u)
            worst = max(worst, _rel(model, params))
        sched.step(METRICS[epoch])
        state = plateau(state, METRICS[epoch])
        want = [g["lr"] for g in opt.param_groups]
        assert current_lr(tx, state) == pytest.approx(want, rel=1e-15)
        lrs.add(tuple(want))
    assert len(lrs) >= 3 and lrs >= {(0.0125, 0.02), (0.01, 0.02)}  # reduced, min_lr held
    assert worst <= TOL64


def test_per_epoch_plateau_native():
    """per_epoch(reduce_lr_on_plateau(...)) + step_plateau, side by side with torch."""
    from jaxupdate.lr_scheduler import (
        get_hyperparams,
        inject_hyperparams,
        per_epoch,
        reduce_lr_on_plateau,
    )

    model = _mlp()
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, mode="max", factor=0.3, patience=0)
    plateau = per_epoch(reduce_lr_on_plateau(0.01, mode="max", factor=0.3, patience=0), 3)
    assert "per_epoch(" in repr(plateau)
    tx = inject_hyperparams(ju.adam)(lr=plateau)
    params = weights_from_torch(model)
    state = tx.init(params)
    rng = np.random.default_rng(0)
    accuracy = [0.5, 0.6, 0.55, 0.7, 0.65, 0.6]
    for acc in accuracy:
        for _ in range(3):
            g = _grads(model, rng)
            _torch_step(model, opt, g)
            u, state = tx.update(_like(params, g), state, params)  # no value= needed
            params = ju.apply_updates(params, u)
        sched.step(acc)
        state = step_plateau(tx, state, acc)
        assert float(get_hyperparams(state)["lr"]) == pytest.approx(sched.get_last_lr()[0],
                                                                    rel=1e-15)
    assert sched.get_last_lr()[0] < 0.01 * 0.3 * 0.3 * 1.0001
    assert _rel(model, params) <= TOL64
    params = {"w": jnp.ones(3)}
    with pytest.raises(ValueError, match="no reduce_lr_on_plateau"):
        step_plateau(ju.sgd(lr=0.1), ju.sgd(lr=0.1).init(params), 1.0)


# --- point 4: the current lr of a converted run ------------------------------------------------

SCHEDULES = {
    "hf_cosine": lambda o: get_cosine_schedule_with_warmup(o, WARMUP, TOTAL),
    "one_cycle": lambda o: torch.optim.lr_scheduler.OneCycleLR(
        o, max_lr=[0.1, 0.05], total_steps=TOTAL),
    "step": lambda o: torch.optim.lr_scheduler.StepLR(o, step_size=4, gamma=0.5),
}


@pytest.mark.parametrize("name", sorted(SCHEDULES))
def test_current_lr_of_converted_run(name):
    model = _mlp()
    opt = torch.optim.AdamW(param_groups_weight_decay(model, 0.05), lr=0.01)
    sched = SCHEDULES[name](opt)
    rng = np.random.default_rng(0)
    for _ in range(5):
        _torch_step(model, opt, _grads(model, rng), sched)
    tx = from_torch(opt, sched)
    params = weights_from_torch(model, optimizer=opt)
    state = tx.init(params)
    assert current_lr(tx, state) == pytest.approx(sched.get_last_lr(), rel=1e-15)
    step = jax.jit(lambda g, s, p: tx.update(g, s, p))
    for _ in range(12):
        g = _grads(model, rng)
        _torch_step(model, opt, g, sched)
        u, state = step(_like(params, g), state, params)
        params = ju.apply_updates(params, u)
        assert current_lr(tx, state) == pytest.approx(sched.get_last_lr(), rel=1e-15)
    assert _rel(model, params) <= TOL64


# --- and back to torch ---------------------------------------------------------------------------


def _jax_steps(tx, state, params, model, rng, n, opt=None, sched=None):
    """``n`` jaxupdate steps (and, with ``opt``, the same torch steps) on fresh gradients."""
    for _ in range(n):
        g = _grads(model, rng)
        if opt is not None:
            _torch_step(model, opt, g, sched)
        u, state = tx.update(_like(params, g), state, params)
        params = ju.apply_updates(params, u)
    return state, params


def test_hf_schedule_back_to_torch():
    """from_torch of an HF run, jaxupdate alone for a while, to_torch, both continue."""
    model = _mlp()
    opt = torch.optim.AdamW(param_groups_weight_decay(model, 0.05), lr=5e-3)
    sched = get_cosine_schedule_with_warmup(opt, WARMUP, TOTAL)
    rng = np.random.default_rng(0)
    for _ in range(3):
        _torch_step(model, opt, _grads(model, rng), sched)
    tx = from_torch(opt, sched)
    params = weights_from_torch(model, optimizer=opt)
    state, params = _jax_steps(tx, tx.init(params), params, model, rng, 7)  # torch waits
    ju.interop.to_torch(opt, tx, state, params, sched)
    assert sched.get_last_lr() == pytest.approx(current_lr(tx, state), rel=1e-15)
    state, params = _jax_steps(tx, state, params, model, rng, 10, opt, sched)
    assert _rel(model, params) <= TOL64


def test_per_epoch_plateau_back_to_torch():
    model = _mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=0)
    tx = from_torch(opt, sched, steps_per_epoch=3)
    params = weights_from_torch(model)
    state = tx.init(params)
    rng = np.random.default_rng(0)
    for epoch in range(4):  # jaxupdate alone: lr halves at epochs 2 and 3
        state, params = _jax_steps(tx, state, params, model, rng, 3)
        state = step_plateau(tx, state, METRICS[epoch])
    assert current_lr(tx, state) == [0.025]
    ju.interop.to_torch(opt, tx, state, params, sched)
    assert sched.get_last_lr() == [0.025] and sched.num_bad_epochs == 0
    for epoch in range(4, 8):
        state, params = _jax_steps(tx, state, params, model, rng, 3, opt)
        sched.step(METRICS[epoch])
        state = step_plateau(tx, state, METRICS[epoch])
        assert current_lr(tx, state) == pytest.approx(sched.get_last_lr(), rel=1e-15)
    assert _rel(model, params) <= TOL64


def test_python_lambda_probed_where_torch_calls_it():
    """MultiplicativeLR calls its lambda from step 1 on: one undefined at 0 is accepted."""
    def mult(e):
        return 0.9 + 0.01 * math.log(e)  # math.log(0) raises, torch never asks for it

    j, t = P.trajectories(
        "SGD", {"lr": 0.05}, "float64", 12,
        scheduler_fn=lambda o: torch.optim.lr_scheduler.MultiplicativeLR(o, mult),
        tx_fn=lambda: ju.sgd(lr=multiplicative_lr(0.05, mult)), jit=True,
    )
    assert P.rel_err(j, t) <= TOL64
    j, t = P.trajectories(
        "SGD", {"lr": 0.05}, "float64", 12,
        scheduler_fn=lambda o: torch.optim.lr_scheduler.MultiplicativeLR(o, mult),
        via_from_torch=True, convert_at=4, jit=True,
    )
    assert P.rel_err(j, t) <= TOL64

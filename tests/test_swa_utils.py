"""Parity of jaxupdate.swa_utils with torch.optim.swa_utils.

AveragedModel with every averaging function (torch's defaults, the four ``get_*`` factories and
a custom one), with and without buffers (float and integer), in float64/float32/complex; SWALR's
lr sequence; update_bn on the same MLP/BatchNorm model in torch and flax.nnx.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx
from torch.optim import swa_utils as tsu

from jaxupdate import swa_utils as jsu
from jaxupdate.optim import sgd
from tests.parity import JAX_DTYPE, TOL, rel_err

# ---------------------------------------------------------------------------------------------
# AveragedModel
# ---------------------------------------------------------------------------------------------


class Holder(torch.nn.Module):
    """A torch module holding given parameters and buffers (any dtypes, integer buffers too)."""

    def __init__(self, params, buffers):
        super().__init__()
        self.ps = torch.nn.ParameterList([torch.nn.Parameter(p.clone()) for p in params])
        for i, b in enumerate(buffers):
            self.register_buffer(f"b{i}", b.clone())


def _draw(rng, shape, dtype):
    x = rng.standard_normal(shape)
    if dtype.is_complex:
        x = x + 1j * rng.standard_normal(shape)
    return torch.tensor(x).to(dtype)


SHAPES = ((3, 4), (5,), ())


def _model_sequence(dtype, steps, seed=0):
    """Successive (params, buffers) of a model: float params of ``dtype`` plus a float64 one,
    a float buffer and an integer buffer (like BatchNorm's num_batches_tracked)."""
    rng = np.random.default_rng(seed)
    seq = []
    for t in range(steps):
        params = [_draw(rng, s, dtype) for s in SHAPES] + [_draw(rng, (2,), torch.float64)]
        buffers = [_draw(rng, (3,), torch.float64).abs(), torch.tensor(7 * t + 3)]
        seq.append((params, buffers))
    return seq


def _np(t):
    return t.detach().clone().numpy()


AVG_CASES = {
    "default": lambda: ({}, {}),
    "swa_avg_fn": lambda: (dict(avg_fn=tsu.get_swa_avg_fn()), dict(avg_fn=jsu.get_swa_avg_fn())),
    "swa_multi": lambda: (
        dict(multi_avg_fn=tsu.get_swa_multi_avg_fn()),
        dict(multi_avg_fn=jsu.get_swa_multi_avg_fn()),
    ),
    "ema_avg_fn": lambda: (
        dict(avg_fn=tsu.get_ema_avg_fn(0.9)),
        dict(avg_fn=jsu.get_ema_avg_fn(0.9)),
    ),
    "ema_multi": lambda: (
        dict(multi_avg_fn=tsu.get_ema_multi_avg_fn(0.7)),
        dict(multi_avg_fn=jsu.get_ema_multi_avg_fn(0.7)),
    ),
    "ema_multi_default_decay": lambda: (
        dict(multi_avg_fn=tsu.get_ema_multi_avg_fn()),
        dict(multi_avg_fn=jsu.get_ema_multi_avg_fn()),
    ),
    "custom_avg_fn": lambda: (
        dict(avg_fn=lambda a, m, n: 0.25 * a + 0.75 * m),
        dict(avg_fn=lambda a, m, n: 0.25 * a + 0.75 * m),
    ),
}


def _run_both(case, use_buffers, dtype, steps=6, jit=True):
    t_kw, j_kw = AVG_CASES[case]()
    seq = _model_sequence(dtype, steps)
    model = Holder(*seq[0])
    swa = tsu.AveragedModel(model, use_buffers=use_buffers, **t_kw)
    avg = jsu.averaged_model(use_buffers=use_buffers, **j_kw)
    to_j = lambda ts: [jnp.asarray(_np(t), JAX_DTYPE[t.dtype]) if t.is_floating_point()
                       or t.is_complex() else jnp.asarray(_np(t)) for t in ts]
    state = avg.init(to_j(seq[0][0]), to_j(seq[0][1]))
    update = jax.jit(avg.update) if jit else avg.update
    t_traj, j_traj = [], []
    for params, buffers in seq:
        with torch.no_grad():
            for p, v in zip(model.parameters(), params):
                p.copy_(v)
            for b, v in zip(model.buffers(), buffers):
                b.copy_(v)
        swa.update_parameters(model)
        state = update(state, to_j(params), to_j(buffers))
        t_traj.append([_np(p) for p in swa.module.parameters()] +
                      [_np(b) for b in swa.module.buffers()])
        j_traj.append([np.asarray(x) for x in state.params] +
                      [np.asarray(x) for x in state.buffers])
        assert int(state.n_averaged) == int(swa.n_averaged)
    return t_traj, j_traj


# torch's multi SWA raises on integer buffers (test_swa_multi_integer_error_...)
AVG_GRID = [(c, b) for c in AVG_CASES for b in (False, True) if not (c == "swa_multi" and b)]


@pytest.mark.parametrize(
    "case,use_buffers", AVG_GRID, ids=[f"{c}-{'buffers' if b else 'params'}" for c, b in AVG_GRID]
)
def test_averaged_model_matches_torch(case, use_buffers):
    """float64 params (and a float and an integer buffer): every averaging function."""
    t_traj, j_traj = _run_both(case, use_buffers, torch.float64)
    assert rel_err(j_traj, t_traj) <= TOL[torch.float64]
    # integer buffer (num_batches_tracked-like): exactly torch's truncated value
    assert [j[-1] for j in j_traj] == [t[-1] for t in t_traj]


@pytest.mark.parametrize("dtype", [torch.float32, torch.complex128, torch.complex64], ids=str)
@pytest.mark.parametrize("case", ["default", "swa_multi", "ema_avg_fn", "ema_multi"])
def test_averaged_model_other_dtypes(case, dtype):
    t_traj, j_traj = _run_both(case, False, dtype, steps=5)
    assert rel_err(j_traj, t_traj) <= TOL[dtype]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
def test_default_swa_average_is_bit_exact(dtype):
    """torch's CPU default ``a + (m - a) / (n + 1)`` reproduced bit for bit, eagerly and under
    jit: the division stays a true division (XLA would otherwise multiply by ``1 / (n + 1)``,
    which differs from torch in about a third of the elements). The lerp- and product-based
    functions agree to one ulp (torch's vectorised lerp is a fused multiply-add; XLA fuses or
    not depending on jit), covered by the tolerance tests above."""
    for jit in (False, True):
        t_traj, j_traj = _run_both("default", False, dtype, steps=6, jit=jit)
        for js, ts in zip(j_traj, t_traj):
            for a, b in zip(js, ts):
                np.testing.assert_array_equal(a, b)


def test_swa_multi_uses_torchs_float32_weight():
    """torch's multi SWA weight is the float32 tensor 1 / (n + 1): float64 leaves see it."""
    fn = jsu.get_swa_multi_avg_fn()
    out = fn([jnp.zeros(1)], [jnp.ones(1)], jnp.asarray(2))[0]
    a, b = torch.zeros(1, dtype=torch.float64), torch.ones(1, dtype=torch.float64)
    tsu.get_swa_multi_avg_fn()([a], [b], torch.tensor(2))
    assert float(out[0]) == a.item() == float(np.float32(1 / 3))


def test_swa_multi_integer_error_and_argument_errors():
    t_kw, j_kw = AVG_CASES["swa_multi"]()
    with pytest.raises(RuntimeError, match="Integer division with addcdiv"):
        _run_both("swa_multi", True, torch.float64, steps=2)
    with pytest.raises(AssertionError, match="Only one of avg_fn and multi_avg_fn"):
        tsu.AveragedModel(torch.nn.Linear(1, 1), avg_fn=tsu.get_swa_avg_fn(),
                          multi_avg_fn=tsu.get_swa_multi_avg_fn())
    with pytest.raises(AssertionError, match="Only one of avg_fn and multi_avg_fn"):
        jsu.averaged_model(avg_fn=jsu.get_swa_avg_fn(), multi_avg_fn=jsu.get_swa_multi_avg_fn())
    for bad in (-0.1, 1.5):
        for t_fn, j_fn in ((tsu.get_ema_avg_fn, jsu.get_ema_avg_fn),
                           (tsu.get_ema_multi_avg_fn, jsu.get_ema_multi_avg_fn)):
            with pytest.raises(ValueError) as t_info:
                t_fn(bad)
            with pytest.raises(ValueError) as j_info:
                j_fn(bad)
            assert str(j_info.value) == str(t_info.value)


def test_averaged_model_flax_states_are_copies():
    """nnx.state(...) aliases the model's Variables: the averaged state must not follow them."""
    model = nnx.Linear(2, 3, rngs=nnx.Rngs(0))
    avg = jsu.averaged_model(multi_avg_fn=jsu.get_ema_multi_avg_fn(0.5))
    state = avg.init(nnx.state(model, nnx.Param))
    state = avg.update(state, nnx.state(model, nnx.Param))
    before = np.asarray(state.params["kernel"][...])
    model.kernel[...] = jnp.zeros((2, 3), jnp.float32)
    np.testing.assert_array_equal(np.asarray(state.params["kernel"][...]), before)
    state = jax.jit(avg.update)(state, nnx.state(model, nnx.Param))
    np.testing.assert_allclose(np.asarray(state.params["kernel"][...]), 0.5 * before)
    assert int(state.n_averaged) == 2


def test_signatures_match_torch():
    import inspect

    t = inspect.signature(tsu.AveragedModel.__init__).parameters
    j = inspect.signature(jsu.averaged_model).parameters
    expected = [(p.name, p.default) for p in t.values() if p.name not in ("self", "model",
                                                                          "device")]
    assert [(p.name, p.default) for p in j.values()] == expected
    for name in ("get_ema_multi_avg_fn", "get_swa_multi_avg_fn", "get_ema_avg_fn",
                 "get_swa_avg_fn"):
        tp = inspect.signature(getattr(tsu, name)).parameters
        jp = inspect.signature(getattr(jsu, name)).parameters
        assert [(p.name, p.default) for p in tp.values()] == [
            (p.name, p.default) for p in jp.values()
        ]
    t = inspect.signature(tsu.SWALR.__init__).parameters
    j = inspect.signature(jsu.swa_lr).parameters
    assert [(p.name, p.default) for p in t.values() if p.name not in ("self", "optimizer",
                                                                      "last_epoch")] == [
        (p.name, p.default) for p in list(j.values())[1:]
    ]
    t = inspect.signature(tsu.update_bn).parameters
    j = inspect.signature(jsu.update_bn).parameters
    assert [(p.name, p.default) for p in t.values()] == [(p.name, p.default) for p in j.values()]


# ---------------------------------------------------------------------------------------------
# SWALR
# ---------------------------------------------------------------------------------------------


def _torch_swalr_lrs(lr, swa_lr, anneal_epochs, anneal_strategy, steps):
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=lr)
    sched = tsu.SWALR(opt, swa_lr=swa_lr, anneal_epochs=anneal_epochs,
                      anneal_strategy=anneal_strategy)
    lrs = []
    for _ in range(steps):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return lrs


SWALR_CASES = [
    (0.1, 0.05, 10, "cos"),
    (0.1, 0.05, 10, "linear"),
    (0.5, 0.01, 3, "cos"),
    (0.02, 0.2, 4, "linear"),  # annealing upwards
    (0.1, 0.05, 1, "cos"),
    (0.1, 0.05, 0, "cos"),
    (0.1, 0.05, 0, "linear"),
    (0.3, 0.3, 5, "cos"),
]


@pytest.mark.parametrize("lr,swa,epochs,strategy", SWALR_CASES, ids=str)
def test_swa_lr_matches_torch_group_lr(lr, swa, epochs, strategy):
    """count -> lr equals the group's lr after `count` scheduler steps, bit for bit; the
    closed form used for array hyperparameters to 1e-15."""
    steps = epochs + 6
    t_lrs = _torch_swalr_lrs(lr, swa, epochs, strategy, steps)
    sched = jsu.swa_lr(lr, swa, epochs, strategy)
    j_lrs = [float(sched(c)) for c in range(steps)]
    assert j_lrs == t_lrs
    assert [float(v) for v in jax.jit(jax.vmap(sched))(jnp.arange(steps))] == t_lrs
    closed = jsu.swa_lr(jnp.asarray(lr), jnp.asarray(swa), epochs, strategy)
    np.testing.assert_allclose([float(closed(c)) for c in range(steps)], t_lrs, rtol=1e-15)


def test_swa_lr_as_optimizer_lr_matches_torch_training():
    """SGD stepped 3 times per epoch with SWALR stepped per epoch, as torch's loop."""
    rng = np.random.default_rng(0)
    p0 = rng.standard_normal(4)
    grads = rng.standard_normal((24, 4))
    tp = torch.tensor(p0, requires_grad=True)
    opt = torch.optim.SGD([tp], lr=0.2, momentum=0.5)
    sched = tsu.SWALR(opt, swa_lr=0.03, anneal_epochs=4)
    t_traj = []
    for i, g in enumerate(grads):
        tp.grad = torch.tensor(g)
        opt.step()
        t_traj.append([tp.detach().clone().numpy()])
        if (i + 1) % 3 == 0:
            sched.step()
    s = jsu.swa_lr(0.2, 0.03, anneal_epochs=4)
    tx = sgd(lr=lambda count: s(count // 3), momentum=0.5)
    p = [jnp.asarray(p0)]
    state = tx.init(p)
    step = jax.jit(lambda g, st, p: tx.update(g, st, p))
    j_traj = []
    for g in grads:
        u, state = step([jnp.asarray(g)], state, p)
        p = [p[0] + u[0]]
        j_traj.append([np.asarray(p[0])])
    assert rel_err(j_traj, t_traj) <= TOL[torch.float64]


def test_swa_lr_errors_match_torch():
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)
    for kw in (dict(anneal_strategy="exp"), dict(anneal_epochs=-1), dict(anneal_epochs=2.0)):
        with pytest.raises(ValueError) as t_info:
            tsu.SWALR(opt, swa_lr=0.05, **kw)
        with pytest.raises(ValueError) as j_info:
            jsu.swa_lr(0.1, 0.05, **kw)
        assert str(j_info.value) == str(t_info.value)


# ---------------------------------------------------------------------------------------------
# update_bn
# ---------------------------------------------------------------------------------------------


class TorchMLP(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.l1 = torch.nn.Linear(3, 8)
        self.bn1 = torch.nn.BatchNorm1d(8)
        self.l2 = torch.nn.Linear(8, 4)
        self.bn2 = torch.nn.BatchNorm1d(4, momentum=0.3)

    def forward(self, x):
        return self.bn2(self.l2(torch.relu(self.bn1(self.l1(x)))))


class FlaxMLP(nnx.Module):
    def __init__(self, rngs):
        self.l1 = nnx.Linear(3, 8, rngs=rngs)
        self.bn1 = nnx.BatchNorm(8, momentum=0.9, rngs=rngs)  # torch's momentum 0.1
        self.l2 = nnx.Linear(8, 4, rngs=rngs)
        self.bn2 = nnx.BatchNorm(4, momentum=0.7, rngs=rngs)

    def __call__(self, x):
        return self.bn2(self.l2(jax.nn.relu(self.bn1(self.l1(x)))))


def _twin_models(dtype):
    torch.manual_seed(0)
    tm = TorchMLP().to(dtype)
    with torch.no_grad():  # non-trivial affine parameters and stale running statistics
        for bn in (tm.bn1, tm.bn2):
            bn.weight.uniform_(0.5, 1.5)
            bn.bias.uniform_(-0.5, 0.5)
            bn.running_mean.fill_(3.0)
            bn.running_var.fill_(5.0)
    fm = FlaxMLP(nnx.Rngs(0))
    jdt = JAX_DTYPE[dtype]
    for tl, fl in ((tm.l1, fm.l1), (tm.l2, fm.l2)):
        fl.kernel = nnx.Param(jnp.asarray(_np(tl.weight).T, jdt))
        fl.bias = nnx.Param(jnp.asarray(_np(tl.bias), jdt))
    for tb, fb in ((tm.bn1, fm.bn1), (tm.bn2, fm.bn2)):
        fb.scale = nnx.Param(jnp.asarray(_np(tb.weight), jdt))
        fb.bias = nnx.Param(jnp.asarray(_np(tb.bias), jdt))
        fb.mean = nnx.BatchStat(jnp.asarray(_np(tb.running_mean), jdt))
        fb.var = nnx.BatchStat(jnp.asarray(_np(tb.running_var), jdt))
    return tm, fm


def _loader(dtype, sizes=(16, 7, 32, 5), tuples=True):
    rng = np.random.default_rng(1)
    out = []
    for i, n in enumerate(sizes):
        x = 2.0 * rng.standard_normal((n, 3)) + 1.0
        y = rng.standard_normal((n,))
        out.append((x, y) if tuples and i % 2 == 0 else x)
    return out


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
def test_update_bn_matches_torch(dtype):
    """Same MLP (Linear-BatchNorm1d-ReLU-Linear-BatchNorm1d) and data: equal running mean and
    (unbiased) running var, equal eval-mode outputs after; modes and momenta restored."""
    tm, fm = _twin_models(dtype)
    loader = _loader(dtype)
    t_loader = [tuple(torch.tensor(a).to(dtype) for a in b) if isinstance(b, tuple)
                else torch.tensor(b).to(dtype) for b in loader]
    jdt = JAX_DTYPE[dtype]
    j_loader = [tuple(jnp.asarray(a, jdt) for a in b) if isinstance(b, tuple)
                else jnp.asarray(b, jdt) for b in loader]
    tm.eval()
    fm.eval()
    tsu.update_bn(t_loader, tm)
    jsu.update_bn(j_loader, fm)
    tol = TOL[dtype]
    for tb, fb in ((tm.bn1, fm.bn1), (tm.bn2, fm.bn2)):
        assert fb.mean[...].dtype == jdt
        assert rel_err([[np.asarray(fb.mean[...])]], [[_np(tb.running_mean)]]) <= tol
        assert rel_err([[np.asarray(fb.var[...])]], [[_np(tb.running_var)]]) <= tol
    # restored: class, eval mode, momentum; no helper state left behind
    assert type(fm.bn1) is nnx.BatchNorm and fm.bn1.use_running_average is True
    assert fm.bn2.momentum == 0.7 and tm.bn2.momentum == 0.3 and not tm.training
    assert {path for path, _ in nnx.to_flat_state(nnx.state(fm, nnx.BatchStat))} == {
        ("bn1", "mean"), ("bn1", "var"), ("bn2", "mean"), ("bn2", "var")
    }
    x = j_loader[1]
    with torch.no_grad():
        t_out = _np(tm(t_loader[1]))
    assert rel_err([[np.asarray(fm(x))]], [[t_out]]) <= tol


def test_update_bn_multi_axis_input_and_train_mode_restored():
    """BatchNorm over (N, L, C) (flax, features last) vs torch's BatchNorm1d over (N, C, L):
    statistics over N*L values per channel. A model left in train mode stays in train mode."""
    rng = np.random.default_rng(2)
    batches = [rng.standard_normal((n, 5, 3)) * 3 + 2 for n in (4, 2, 6)]
    tbn = torch.nn.BatchNorm1d(3).double()
    tsu.update_bn([torch.tensor(b).transpose(1, 2) for b in batches], tbn)
    fbn = nnx.BatchNorm(3, rngs=nnx.Rngs(0))
    fbn.mean = nnx.BatchStat(jnp.full(3, 9.0))
    fbn.var = nnx.BatchStat(jnp.full(3, 9.0))
    fbn.train()
    jsu.update_bn([jnp.asarray(b) for b in batches], fbn)
    np.testing.assert_allclose(np.asarray(fbn.mean[...]), _np(tbn.running_mean), rtol=1e-13)
    np.testing.assert_allclose(np.asarray(fbn.var[...]), _np(tbn.running_var), rtol=1e-13)
    assert fbn.use_running_average is False
    # a model without BatchNorm is left alone, as torch
    lin = nnx.Linear(3, 2, rngs=nnx.Rngs(0))
    jsu.update_bn([jnp.ones((2, 3))], lin)


def test_update_bn_single_value_per_channel_error():
    tbn = torch.nn.BatchNorm1d(3).double()
    with pytest.raises(ValueError, match="Expected more than 1 value per channel when training"):
        tsu.update_bn([torch.ones(1, 3, dtype=torch.float64)], tbn)
    fbn = nnx.BatchNorm(3, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="Expected more than 1 value per channel when training"):
        jsu.update_bn([jnp.ones((1, 3), jnp.float32)], fbn)
    assert type(fbn) is nnx.BatchNorm  # restored after the error
    assert math.isfinite(float(fbn.var[...][0]))

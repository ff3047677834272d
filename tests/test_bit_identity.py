"""float32 bit for bit against torch CPU, on tensors of realistic size (needs jax_enable_x64).

Each elementwise optimizer runs side by side with ``torch.optim.<X>(..., foreach=False)`` for
100 steps on a 1,000 x 33 matrix and a 100,003-element vector (torch's vectorized loops and
their scalar tails), and the share of parameter elements identical bit for bit is asserted.

One cause is outside jaxupdate's reach: torch's float32 ``sqrt`` on a contiguous CPU tensor is
MKL's ``vsSqrt`` (``at::vml``, mode ``VML_HA``), which is not correctly rounded on every CPU
(measured on this project's AMD EPYC: 16.9% of random float32 inputs one ulp off, 0.75 ulp at
most), while XLA's ``sqrt`` is (IEEE). The optimizers that take a square root are therefore
checked twice: against torch with ``Tensor.sqrt`` / ``sqrt_`` made correctly rounded (every
other operation torch's own; the target, 100% or >= 99.9%, must hold there), and against
torch as it is, where the share is asserted at the floor measured here with that reason.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch

import jaxupdate as ju
from jaxupdate import numerics as N
from jaxupdate.interop import parity as P

N_TAIL = 100_003  # not a multiple of 16: the scalar tail of torch's kernels runs too

# the optimizers whose torch step takes a float32 square root (vml::vsqrt)
USES_SQRT = {"Adam", "AdamW", "RMSprop", "Adagrad", "Adadelta", "NAdam", "RAdam", "Adafactor"}
FULL = {"SGD", "Adam", "AdamW"}  # 100% demanded; >= 99.9% for the others


def _ids(cases):
    return [f"{n}-{i}" for i, (n, _) in enumerate(cases)]


def _correct_sqrt(monkeypatch):
    """torch's Tensor.sqrt / sqrt_ for float32, correctly rounded (numpy's IEEE sqrt)."""
    real_sqrt, real_sqrt_ = torch.Tensor.sqrt, torch.Tensor.sqrt_

    def sqrt(t):
        if t.dtype != torch.float32:
            return real_sqrt(t)
        return torch.from_numpy(np.sqrt(t.detach().numpy()))

    def sqrt_(t):
        if t.dtype != torch.float32:
            return real_sqrt_(t)
        return t.copy_(sqrt(t))

    monkeypatch.setattr(torch.Tensor, "sqrt", sqrt)
    monkeypatch.setattr(torch.Tensor, "sqrt_", sqrt_)


def _torch_sqrt_share():
    x = np.abs(np.random.default_rng(3).standard_normal(N_TAIL)).astype(np.float32) + 0.1
    return float(np.mean(torch.tensor(x).sqrt().numpy() == np.sqrt(x)))


# --- the kernels, one by one ----------------------------------------------------------------


def _draw(k, n=N_TAIL, seed=1):
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(n).astype(np.float32) for _ in range(k)]


def _same(a, b):
    return float(np.mean(np.asarray(a).view(np.int32) == np.asarray(b).view(np.int32)))


@pytest.mark.parametrize("w", [0.001, 0.1, 0.5, 0.9, 0.999])
def test_lerp_kernel(w):
    x, y = _draw(2)
    want = torch.tensor(x).lerp_(torch.tensor(y), w).numpy()
    assert _same(jax.jit(lambda a, b: N.lerp(a, b, w))(x, y), want) == 1.0
    # a traced weight takes jnp.where over both formulas
    got = jax.jit(lambda a, b, w: N.lerp(a, b, w))(x, y, jnp.float32(w))
    assert _same(got, want) == 1.0


@pytest.mark.parametrize("alpha", [-0.1, 0.9, 1 - 0.999, -1e-3 / 0.7])
def test_add_scaled_kernel(alpha):
    x, y = _draw(2)
    want = torch.tensor(x).add_(torch.tensor(y), alpha=alpha).numpy()
    assert _same(jax.jit(lambda a, b: N.add_scaled(a, alpha, b))(x, y), want) == 1.0


@pytest.mark.parametrize("value", [1.0, 1 - 0.999, -1.0])
def test_addcmul_kernel_after_mul(value):
    """``avg.mul_(beta).addcmul_(g, g, value=v)``: the product ``avg * beta`` rounded first
    (XLA would fuse it into the float64 emulation's add otherwise)."""
    x, g = _draw(2)
    want = torch.tensor(x).mul_(0.999).addcmul_(torch.tensor(g), torch.tensor(g), value=value)
    got = jax.jit(lambda a, b: N.addcmul(N.scale(a, 0.999), value, b, b))(x, g)
    assert _same(got, want.numpy()) == 1.0
    if value == 1 - 0.999:
        assert _same(jax.jit(lambda a, b: N.ema_square(a, b, 0.999))(x, g), want.numpy()) == 1.0


@pytest.mark.parametrize("value", [-1e-3, -0.01 / 0.3, 1.0])
def test_addcdiv_kernel(value):
    x, t1, t2 = _draw(3)
    t2 = np.abs(t2) + np.float32(0.1)
    want = torch.tensor(x).addcdiv_(torch.tensor(t1), torch.tensor(t2), value=value).numpy()
    assert _same(jax.jit(lambda a, b, c: N.addcdiv(a, value, b, c))(x, t1, t2), want) == 1.0
    # the term alone, added by apply_updates
    got = jax.jit(lambda a, b, c: optax.apply_updates(a, N.addcdiv_term(value, b, c)))(x, t1, t2)
    assert _same(got, want) == 1.0


@pytest.mark.parametrize("d", [0.9, 0.999, 1 / 0.7])
def test_true_divide_kernel(d):
    """torch divides a tensor by a Python scalar truly; XLA would multiply by the reciprocal
    (measured: 74-87% of elements agree that way)."""
    (x,) = _draw(1)
    want = torch.tensor(x).div_(d).numpy()
    got = jax.jit(lambda a, s: N.true_divide(a, s))(x, jnp.float32(d))
    assert _same(got, want) == 1.0


def test_xla_contracts_multiply_add():
    """Why ``unfused`` exists: XLA:CPU turns float32 ``a * b + c`` into one fused
    multiply-add under jit (all elements equal the FMA), while torch's ``mul_`` then
    ``add_`` round twice; ``scale`` keeps the product rounded."""
    a, b, c = _draw(3)
    fma = (a.astype(np.float64) * b.astype(np.float64) + c.astype(np.float64)).astype(np.float32)
    assert _same(jax.jit(lambda a, b, c: a * b + c)(a, b, c), fma) == 1.0
    two = torch.tensor(a).mul_(torch.tensor(b)).add_(torch.tensor(c)).numpy()
    assert _same(two, fma) < 0.9
    assert _same(jax.jit(lambda a, b, c: N.unfused(a * b) + c)(a, b, c), two) == 1.0


def test_float32_updates_fail_only_where_the_difference_is_inexact():
    """optax's protocol: ``apply_updates`` adds a float32 update, a second rounding. The
    update ``new - p`` lands on ``new`` wherever that subtraction is exact (Sterbenz:
    ``p / 2 <= new <= 2 p``); where it fails, the step is larger than the result. One SGD
    step (lr = 0.1) on unit normal data: 3.2% of elements fail; ``wide_updates`` fixes all."""
    p, g = _draw(2)
    tx = ju.sgd(lr=0.1)
    want = torch.tensor(p).add_(torch.tensor(g), alpha=-0.1).numpy()
    for wide in (False, True):
        step = jax.jit(lambda g, s, p, wide=wide: tx.update(g, s, p, wide_updates=wide))
        u, _ = step(g, tx.init(p), p)
        new = np.asarray(optax.apply_updates(jnp.asarray(p), u))
        ok = new == want
        if wide:
            assert u.dtype == jnp.float64 and ok.all()
            continue
        assert u.dtype == jnp.float32
        exact = np.asarray(u, np.float64) == want.astype(np.float64) - p.astype(np.float64)
        assert ok[exact].all()  # an exact difference always lands
        assert (np.abs(want[~ok]) < np.abs(np.asarray(u)[~ok])).mean() > 0.9
        assert 0.02 < 1 - ok.mean() < 0.05


# --- whole optimizers, 100 steps ------------------------------------------------------------

# Adafactor is left out: its step size comes from whole-tensor float32 norms
# (``param.norm(2).item()``, ``update.norm(2)``), and torch's CPU reduction order is neither
# numpy's pairwise float32 sum nor a float64 sum (measured: neither reproduces torch's norm of
# 100,003 elements), so one ulp in a norm moves every element's step. Measured share: README.
CASES = [c for c in P.BIT_CASES if c[0] != "Adafactor"]
NO_SQRT = [c for c in CASES if c[0] not in USES_SQRT]
WITH_SQRT = [c for c in CASES if c[0] in USES_SQRT]


@pytest.mark.parametrize("name,kwargs", NO_SQRT, ids=_ids(NO_SQRT))
def test_bit_identical_without_sqrt(name, kwargs):
    share = P.bit_identical_share(name, kwargs)
    assert share == 1.0 if name in FULL else share >= 0.999, share


@pytest.mark.parametrize("name,kwargs", WITH_SQRT, ids=_ids(WITH_SQRT))
def test_bit_identical_with_correctly_rounded_sqrt(name, kwargs, monkeypatch):
    _correct_sqrt(monkeypatch)
    share = P.bit_identical_share(name, kwargs)
    assert share == 1.0 if name in FULL else share >= 0.999, share


# Against torch's own sqrt: floors a little below the shares measured here (AMD EPYC, torch
# 2.13, MKL vsSqrt one ulp off on 16.9% of inputs; worst configuration of each optimizer in
# parity.BIT_CASES: Adam 98.62%, AdamW 98.58%, RMSprop 73.9% (centered; 93.4% plain),
# Adagrad 94.0%, Adadelta 73.8%, NAdam 94.5%, RAdam 99.76%). The reason is torch's sqrt alone:
# test_bit_identical_with_correctly_rounded_sqrt holds the target on the same runs. Where
# torch's sqrt is correctly rounded (another CPU or MKL build), the full target applies.
MKL_SQRT_FLOOR = {
    "Adam": 0.98, "AdamW": 0.98, "RMSprop": 0.70, "Adagrad": 0.92, "Adadelta": 0.70,
    "NAdam": 0.92, "RAdam": 0.99,
}


@pytest.mark.parametrize("name,kwargs", WITH_SQRT, ids=_ids(WITH_SQRT))
def test_share_against_torch_sqrt(name, kwargs):
    share = P.bit_identical_share(name, kwargs)
    if _torch_sqrt_share() == 1.0:
        assert share == 1.0 if name in FULL else share >= 0.999, share
    else:
        assert share >= MKL_SQRT_FLOOR[name], share


def test_share_needs_x64():
    jax.config.update("jax_enable_x64", False)
    try:
        with pytest.raises(RuntimeError, match="jax_enable_x64"):
            P.bit_identical_share("SGD", {"lr": 0.1}, steps=1)
    finally:
        jax.config.update("jax_enable_x64", True)

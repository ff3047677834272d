"""Step counters: torch's numbers while torch's float32 ``step`` is exact, and sane beyond 2^31.

torch keeps ``state['step']`` as a float32 tensor (``_get_scalar_dtype()`` under the default
dtype) and adds 1 per step: exact up to 2^24 = 16,777,216, after which ``2^24 + 1`` rounds back
to 2^24 and torch's step stops advancing (its bias corrections then use a stale step).
jaxupdate counts in int32 (``count``, updates already applied, ``step = count + 1`` converted
to the scalar dtype) and increments with ``optax.safe_increment``, which saturates at int32's
maximum 2^31 - 1 instead of wrapping to a negative number: past 2^31 updates ``step`` stays at
2^31. By then every bias correction ``1 - beta**step`` with ``beta <= 1 - 1e-8`` is 1 to
double precision, so the update is the same as with the true step; for a ``beta2`` as close
to 1 as ``1 - 1e-10`` it is not, and the parameters after step 2^31 + 5 differ from the
true-step formula by 4.8e-12 of their scale (measured below).

Counters are not stepped billions of times: the tests set every ``count`` of a state directly
(:func:`set_counts`) next to the matching torch state.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

import jaxupdate as ju
from tests.parity import TOL

INT32_MAX = 2**31 - 1


def set_counts(opt_state, n):
    """``opt_state`` with the optimizer's step count set to ``n`` (in its dtype)."""
    return ju.transforms.with_step_count(opt_state, n)


def counts(opt_state):
    """The optimizer's step count, in a list (one per optimizer: one here)."""
    return [int(ju.transforms.step_count(opt_state))]


def replace_fields(opt_state, **values):
    """``opt_state`` with the named NamedTuple fields replaced wherever they occur."""
    if hasattr(opt_state, "_fields"):
        hit = {k: v for k, v in values.items() if k in opt_state._fields}
        inner = [replace_fields(x, **values) for x in opt_state]
        return type(opt_state)(*inner)._replace(**hit)
    if isinstance(opt_state, tuple):
        return tuple(replace_fields(x, **values) for x in opt_state)
    return opt_state


def _data(seed=0, steps=8):
    rng = np.random.default_rng(seed)
    shapes = ((3, 4), (5,))
    params = [rng.standard_normal(s) for s in shapes]
    m0 = [0.1 * rng.standard_normal(s) for s in shapes]
    v0 = [0.1 + 0.5 * rng.random(s) for s in shapes]
    grads = [[rng.standard_normal(s) for s in shapes] for _ in range(steps)]
    return params, m0, v0, grads


def adam_reference(params, m0, v0, grads, first_step, lr, b1, b2, eps, step_cap=None):
    """torch's Adam in float64 numpy with exact integer steps (optionally capped)."""
    p = [x.copy() for x in params]
    m = [x.copy() for x in m0]
    v = [x.copy() for x in v0]
    traj = []
    for k, g in enumerate(grads):
        t = first_step + k
        if step_cap is not None:
            t = min(t, step_cap)
        bc1 = 1 - b1**t
        bc2_sqrt = (1 - b2**t) ** 0.5
        for i in range(len(p)):
            m[i] = m[i] + (1 - b1) * (g[i] - m[i])
            v[i] = b2 * v[i] + (1 - b2) * g[i] * g[i]
            p[i] = p[i] - (lr / bc1) * m[i] / (np.sqrt(v[i]) / bc2_sqrt + eps)
        traj.append([x.copy() for x in p])
    return traj


def run_ju_adam(params, m0, v0, grads, count0, **kw):
    tx = ju.adam(**kw)
    jp = [jnp.asarray(x) for x in params]
    state = tx.init(jp)
    state = replace_fields(
        set_counts(state, count0),
        exp_avg=[jnp.asarray(x) for x in m0],
        exp_avg_sq=[jnp.asarray(x) for x in v0],
    )

    @jax.jit
    def step(g, state, p):
        updates, state = tx.update(g, state, p)
        return ju.apply_updates(p, updates), state, updates

    traj, seen = [], []
    for g in grads:
        jp, state, updates = step([jnp.asarray(x) for x in g], state, jp)
        assert all(bool(jnp.all(jnp.isfinite(u))) for u in updates)
        traj.append([np.asarray(x) for x in jp])
        seen.append(counts(state))
    return traj, seen


def rel(a_traj, b_traj):
    return max(
        float(np.max(np.abs(a - b)) / np.max(np.abs(b)))
        for sa, sb in zip(a_traj, b_traj, strict=True)
        for a, b in zip(sa, sb, strict=True)
    )


def test_adam_equals_torch_up_to_2_24_then_keeps_counting():
    """Around 2^24: torch equals jaxupdate while its float32 step is exact, then stalls."""
    count0 = 2**24 - 4  # next torch step: 2^24 - 3
    kw = dict(lr=0.01, betas=(0.9, 1 - 1e-8), eps=1e-8)  # beta2 so close to 1 that it matters
    params, m0, v0, grads = _data()
    tp = [torch.tensor(x).requires_grad_() for x in params]
    opt = torch.optim.Adam(tp, **kw)
    for t, m, v in zip(tp, m0, v0):
        opt.state[t] = {
            "step": torch.tensor(float(count0), dtype=torch.float32),
            "exp_avg": torch.tensor(m),
            "exp_avg_sq": torch.tensor(v),
        }
    t_traj, t_steps = [], []
    for g in grads:
        for t, gg in zip(tp, g):
            t.grad = torch.tensor(gg)
        opt.step()
        t_traj.append([t.detach().numpy().copy() for t in tp])
        t_steps.append(float(opt.state[tp[0]]["step"]))
    j_traj, j_counts = run_ju_adam(params, m0, v0, grads, count0, **kw)
    ref = adam_reference(params, m0, v0, grads, count0 + 1, kw["lr"], *kw["betas"], kw["eps"])

    # torch's float32 step: exact up to 2^24, then stuck there
    assert t_steps == [float(min(count0 + k, 2**24)) for k in range(1, 9)]
    assert all(c == [count0 + k] for k, c in zip(range(1, 9), j_counts))
    exact = 4  # steps 2^24 - 3 .. 2^24
    assert rel(j_traj[:exact], t_traj[:exact]) <= TOL[torch.float64]
    assert rel(j_traj, ref) <= TOL[torch.float64]
    # measured: 0.0 for both (bitwise). Past 2^24 torch's stale step shows (measured
    # 4.6e-10 from the exact formula); jaxupdate stays on it
    assert rel(t_traj, ref) > 100 * TOL[torch.float64]


@pytest.mark.parametrize("betas", [(0.9, 0.999), (0.9, 1 - 1e-10)])
def test_adam_past_2_31_saturates_finite_and_correct(betas):
    """Counts saturate at 2^31 - 1 (no wrap, no NaN); updates follow the float64 formula."""
    count0 = INT32_MAX - 3  # steps 2^31 - 2, 2^31 - 1, 2^31, 2^31 + 1, ... 2^31 + 5
    kw = dict(lr=0.01, betas=betas, eps=1e-8)
    params, m0, v0, grads = _data(seed=1)
    j_traj, j_counts = run_ju_adam(params, m0, v0, grads, count0, **kw)
    assert [c[0] for c in j_counts] == [min(count0 + k, INT32_MAX) for k in range(1, 9)]
    assert all(np.isfinite(x).all() for s in j_traj for x in s)
    # what it computes: torch's formula with step = min(true step, 2^31)
    capped = adam_reference(params, m0, v0, grads, count0 + 1, kw["lr"], *betas, kw["eps"],
                            step_cap=2**31)
    assert rel(j_traj, capped) <= TOL[torch.float64]
    # against the true step (2^31 + 5 at the end)
    true = adam_reference(params, m0, v0, grads, count0 + 1, kw["lr"], *betas, kw["eps"])
    if betas[1] == 0.999:
        # 0.999 ** 2^31 underflows to 0: both bias corrections are exactly 1 in float64
        assert rel(j_traj, true) <= TOL[torch.float64]
    else:
        # beta2 = 1 - 1e-10: beta2**t = 0.81, and t = 2^31 instead of 2^31 + 5 changes
        # sqrt(1 - beta2**t) by 5 * 0.5 * 1e-10 * 0.81 / 0.19 = 1.1e-9 relative in the step,
        # which moves params (steps ~1e-2 of params ~1) by ~1e-11 of their scale at most;
        # measured 4.8e-12
        assert 1e-14 < rel(j_traj, true) <= 2e-11


ALL = [
    ("sgd", dict(lr=0.1, momentum=0.9)),
    ("adam", dict(lr=0.01)),
    ("adamw", dict(lr=0.01, amsgrad=True)),
    ("rmsprop", dict(lr=0.01, centered=True, momentum=0.5)),
    ("adagrad", dict(lr=0.1, lr_decay=1e-3)),
    ("adadelta", dict(lr=0.5)),
    ("adamax", dict(lr=0.01)),
    ("nadam", dict(lr=0.01)),
    ("radam", dict(lr=0.01)),
    ("asgd", dict(lr=0.01, t0=100.0)),
    ("rprop", dict(lr=0.01)),
    ("adafactor", dict(lr=0.01)),
    ("muon", dict(lr=0.01)),
]


def _drive_past_2_31(name, kwargs, float64_scalars: bool):
    shapes = ((3, 4), (4, 2)) if name == "muon" else ((3, 4), (5,))
    rng = np.random.default_rng(2)
    dt = jnp.float64 if float64_scalars else jnp.float32
    params = [jnp.asarray(rng.standard_normal(s), dt) for s in shapes]
    tx = getattr(ju, name)(**kwargs)
    state = tx.init(params)
    # warm the moments with a few real steps, then jump the counters to just below 2^31
    for _ in range(3):
        g = [jnp.asarray(rng.standard_normal(s), dt) for s in shapes]
        updates, state = tx.update(g, state, params)
        params = ju.apply_updates(params, updates)
    state = set_counts(state, INT32_MAX - 2)
    if name == "nadam":  # mu_product after 2^31 steps: a product of ~0.9s, i.e. 0
        state = replace_fields(state, mu_product=jnp.zeros_like(state[0].mu_product))
    step = jax.jit(tx.update)
    for k in range(1, 6):
        g = [jnp.asarray(rng.standard_normal(s), dt) for s in shapes]
        updates, state = step(g, state, params)
        params = ju.apply_updates(params, updates)
        assert all(bool(jnp.all(jnp.isfinite(u))) for u in updates), (name, k)
        assert all(bool(jnp.any(u != 0)) for u in updates), (name, k)  # still moving
        assert set(counts(state)) == {min(INT32_MAX - 2 + k, INT32_MAX)}, (name, k)
    assert all(bool(jnp.all(jnp.isfinite(p))) for p in params)


@pytest.mark.parametrize("name,kwargs", ALL, ids=[a[0] for a in ALL])
def test_every_optimizer_past_2_31_is_finite(name, kwargs):
    _drive_past_2_31(name, kwargs, float64_scalars=True)


@pytest.mark.parametrize("name", ["adam", "nadam", "radam", "asgd", "adafactor"])
def test_float32_scalar_path_past_2_31(name):
    """Without jax_enable_x64 the scalars are float32: step = float32(2^31) is exact and the
    expm1-based bias corrections reach exactly 1, no overflow to inf - inf."""
    with jax.enable_x64(False):
        _drive_past_2_31(name, dict(ALL)[name], float64_scalars=False)

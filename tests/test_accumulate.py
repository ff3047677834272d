"""Parity of jaxupdate.accumulate with torch's accumulation idiom.

torch: ``loss.backward()`` on every micro-batch (``.grad`` sums), ``step(); zero_grad()`` every
k. The losses have parameter-dependent gradients, so the comparison covers the whole loop:
gradients at the right parameters, the sum in torch's order, the step at the right time.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch

from jaxupdate.accumulate import accumulate_grads
from jaxupdate.clip_grad import clip_grad_norm
from jaxupdate.optim import adam, sgd
from jaxupdate.transforms import step_count
from tests.parity import JAX_DTYPE, TOL, rel_err

SHAPES = ((3, 4), (5,), ())


def _data(micro_steps, seed=0):
    """Initial parameters, and per micro-batch (c_i, a): loss = sum_i <c_i, p_i> + a/2 |p|^2."""
    rng = np.random.default_rng(seed)
    params = [rng.standard_normal(s) for s in SHAPES]
    batches = [
        ([rng.standard_normal(s) for s in SHAPES], float(rng.uniform(0.1, 2.0)))
        for _ in range(micro_steps)
    ]
    return params, batches


def _torch_loss(tp, cs, a, scale=1.0):
    loss = sum((t * torch.as_tensor(c, dtype=t.dtype)).sum() for t, c in zip(tp, cs))
    loss = loss + 0.5 * a * sum((t * t).sum() for t in tp)
    return loss * scale if scale != 1.0 else loss


def _jax_loss(params, cs, a):
    loss = sum(jnp.sum(p * c) for p, c in zip(params, cs))
    return loss + 0.5 * a * sum(jnp.sum(p * p) for p in params)


def _run_torch(params, batches, dtype, opt_cls, opt_kw, k, clip=None, divide=False):
    tp = [torch.tensor(p).to(dtype).requires_grad_() for p in params]
    opt = opt_cls(tp, **opt_kw)
    traj = []
    for i, (cs, a) in enumerate(batches):
        _torch_loss(tp, cs, a, 1.0 / k if divide else 1.0).backward()  # .grad += g
        if (i + 1) % k == 0:
            if clip is not None:
                torch.nn.utils.clip_grad_norm_(tp, clip)
            opt.step()
            opt.zero_grad()
        traj.append([t.detach().clone().numpy() for t in tp])
    return traj


def _run_jax(tx, params, batches, dtype):
    jdt = JAX_DTYPE[dtype]
    jp = [jnp.asarray(p, jdt) for p in params]
    state = tx.init(jp)

    @jax.jit
    def step(jp, state, cs, a):
        grads = jax.grad(_jax_loss)(jp, cs, a)
        updates, state = tx.update(grads, state, jp)
        return optax.apply_updates(jp, updates), state

    traj = []
    for cs, a in batches:
        jp, state = step(jp, state, [jnp.asarray(c, jdt) for c in cs], jnp.asarray(a, jdt))
        traj.append([np.asarray(x) for x in jp])
    return traj, state


CASES = [
    ("sgd-momentum", torch.optim.SGD, sgd, dict(lr=0.05, momentum=0.9), None),
    ("adam", torch.optim.Adam, adam, dict(lr=0.05), None),
    ("adam-amsgrad-wd", torch.optim.Adam, adam, dict(lr=0.05, weight_decay=0.1, amsgrad=True),
     None),
    ("clip+adam", torch.optim.Adam, adam, dict(lr=0.05), 0.5),
]


# every case with k = 1 (a step per backward) and 3 in float64, k = 3 in float32, and k = 4
GRID = (
    [(*c, k, torch.float64) for c in CASES for k in (1, 3)]
    + [(*c, 3, torch.float32) for c in CASES]
    + [(*CASES[3], 4, torch.float64)]
)


@pytest.mark.parametrize(
    "name,t_cls,j_fn,kw,clip,k,dtype", GRID, ids=[f"{g[0]}-k{g[5]}-{g[6]}" for g in GRID]
)
def test_accumulate_grads_matches_torch_summed_grad(name, t_cls, j_fn, kw, clip, k, dtype):
    """Parameters after every micro-batch (unchanged between steps) equal torch's."""
    params, batches = _data(6 * k)
    t_traj = _run_torch(params, batches, dtype, t_cls, kw, k, clip)
    inner = j_fn(**kw) if clip is None else optax.chain(clip_grad_norm(clip), j_fn(**kw))
    j_traj, state = _run_jax(accumulate_grads(inner, k), params, batches, dtype)
    assert rel_err(j_traj, t_traj) <= TOL[dtype]
    assert int(state.gradient_step) == 6 and int(state.mini_step) == 0


def test_optax_multisteps_is_the_loss_over_k_recipe():
    """optax.MultiSteps averages: it equals torch's loop with (loss / k).backward(), and not the
    plain summed .grad (for SGD, a k times smaller step)."""
    k = 3
    params, batches = _data(5 * k, seed=1)
    kw = dict(lr=0.05, momentum=0.9)
    t_div = _run_torch(params, batches, torch.float64, torch.optim.SGD, kw, k, divide=True)
    t_sum = _run_torch(params, batches, torch.float64, torch.optim.SGD, kw, k)
    # MultiSteps keeps its running mean in float32 unless told (accumulator_dtype)
    ms = optax.MultiSteps(sgd(**kw), every_k_schedule=k, accumulator_dtype=jnp.float64)
    j_ms, _ = _run_jax(ms, params, batches, torch.float64)
    j_acc, _ = _run_jax(accumulate_grads(sgd(**kw), k), params, batches, torch.float64)
    # running mean acc + (g - acc) / n against torch's sum of g / k: rounding only
    assert rel_err(j_ms, t_div) <= TOL[torch.float64]
    assert rel_err(j_ms, t_sum) > 1e-2
    ms32 = optax.MultiSteps(sgd(**kw), every_k_schedule=k)  # the default: float32 accumulator
    j_ms32, _ = _run_jax(ms32, params, batches, torch.float64)
    assert rel_err(j_ms32, t_div) > 1e-10
    assert rel_err(j_acc, t_sum) <= TOL[torch.float64]


def test_zero_updates_between_steps_state_untouched_and_scan():
    """Between steps: zero updates, the optimizer's state is not advanced; runs in lax.scan."""
    tx = accumulate_grads(adam(lr=0.1), 3)
    params = {"w": jnp.ones(2)}
    state = tx.init(params)
    g = {"w": jnp.array([1.0, -2.0])}
    u1, s1 = tx.update(g, state, params)
    u2, s2 = tx.update(g, s1, params)
    assert np.all(np.asarray(u1["w"]) == 0) and np.all(np.asarray(u2["w"]) == 0)
    assert int(step_count(s2.inner_state)) == 0 and int(s2.mini_step) == 2
    np.testing.assert_array_equal(np.asarray(s2.grad["w"]), [2.0, -4.0])
    u3, s3 = tx.update(g, s2, params)
    assert int(step_count(s3.inner_state)) == 1 and int(s3.gradient_step) == 1
    ref, _ = adam(lr=0.1).update({"w": jnp.array([3.0, -6.0])}, adam(lr=0.1).init(params), params)
    np.testing.assert_array_equal(np.asarray(u3["w"]), np.asarray(ref["w"]))

    def body(carry, g):
        p, s = carry
        u, s = tx.update({"w": g}, s, p)
        return (optax.apply_updates(p, u), s), None

    gs = jnp.tile(jnp.array([1.0, -2.0]), (6, 1))
    (p, s), _ = jax.jit(lambda c, gs: jax.lax.scan(body, c, gs))((params, state), gs)
    assert int(s.gradient_step) == 2 and int(s.mini_step) == 0


def test_every_k_validation():
    for bad in (0, -1, 2.0, True):
        with pytest.raises(ValueError, match="every_k must be an integer >= 1"):
            accumulate_grads(sgd(lr=0.1), bad)

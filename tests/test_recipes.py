"""Widely used torch recipes, side by side with torch (issue 15).

Hugging Face warmup schedules (LambdaLR with plain-Python lambdas) under jit, timm /
torchvision parameter groups, torchvision's EMA with its warm-up reset of ``n_averaged``,
and ReduceLROnPlateau stepped once per epoch, each through the jaxupdate route a torch user
would take and through :func:`jaxupdate.interop.from_torch` of the live torch objects.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

import jaxupdate as ju
from jaxupdate.interop import parity as P
from jaxupdate.lr_scheduler import lambda_lr, multiplicative_lr
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

"""Property-based parity with torch: hypothesis draws hyperparameters, shapes, dtypes, data.

For each optimizer, hypothesis draws every constructor option (each float over the range torch
users set it in, exact zeros included since torch skips branches on ``== 0``; each bool), a
list of parameter shapes (0-d to 3-d, empty dimensions included), a dtype (float64, float32,
and complex where torch supports it), the number of steps, the gradients' seed and scale
(1e-3 to 1e3), and checks jaxupdate against torch.optim with ``tests/parity.py`` (float64 to
1e-12 relative; float32 to the harness's tolerance, which falls back to ten times torch's
own float32 error only where torch itself is that far from float64).

The examples are derandomized (the same every run, so CI is reproducible) and few, to keep the
file fast. ``JAXUPDATE_HYPOTHESIS_EXPLORE=200`` draws 200 fresh random examples per optimizer.
"""

from __future__ import annotations

import math
import os

import pytest
import torch
from hypothesis import HealthCheck, given, note, settings
from hypothesis import strategies as st

from jaxupdate.interop import optimizer_fn_for
from jaxupdate.interop.parity import optimizer_table
from tests.parity import assert_parity

EXPLORE = int(os.environ.get("JAXUPDATE_HYPOTHESIS_EXPLORE", "0"))
SETTINGS = settings(
    max_examples=EXPLORE or 4,
    deadline=None,
    derandomize=not EXPLORE,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


def log_uniform(lo, hi):
    return st.floats(math.log10(lo), math.log10(hi)).map(lambda e: float(10.0**e))


def zero_or(strategy):
    """Exactly 0 (torch's ``if x != 0`` branch off) or a value from ``strategy``."""
    return st.one_of(st.just(0.0), strategy)


LR = log_uniform(1e-4, 1e-1)
EPS = log_uniform(1e-10, 1e-2)
WD = zero_or(log_uniform(1e-4, 0.5))
BETAS = st.tuples(st.floats(0.0, 0.99), st.floats(0.5, 0.9999))
FLAG = st.booleans()
# the options Adam, AdamW, Adamax, NAdam and RAdam share
ADAM_LIKE = dict(lr=LR, betas=BETAS, eps=EPS, weight_decay=WD, maximize=FLAG)


@st.composite
def sgd_kwargs(draw):
    momentum = draw(zero_or(st.floats(0.05, 0.99)))
    nesterov = momentum > 0 and draw(FLAG)
    return dict(
        lr=draw(LR),
        momentum=momentum,
        dampening=0.0 if nesterov else draw(zero_or(st.floats(0.0, 0.9))),
        weight_decay=draw(WD),
        nesterov=nesterov,
        maximize=draw(FLAG),
    )


# torch class name -> kwargs strategy (or a dict of them); the jaxupdate function is the one
# declared for that class, complex support as torch's optim_db says
OPTIMIZERS = {
    "SGD": sgd_kwargs(),
    "Adam": dict(ADAM_LIKE, amsgrad=FLAG, decoupled_weight_decay=FLAG),
    "AdamW": dict(ADAM_LIKE, amsgrad=FLAG),
    "RMSprop": dict(
        lr=LR,
        alpha=st.floats(0.5, 0.999),
        eps=EPS,
        weight_decay=WD,
        momentum=zero_or(st.floats(0.05, 0.95)),
        centered=FLAG,
        maximize=FLAG,
    ),
    "Adagrad": dict(
        lr=LR,
        lr_decay=zero_or(log_uniform(1e-4, 0.1)),
        weight_decay=WD,
        initial_accumulator_value=zero_or(st.floats(0.01, 1.0)),
        eps=EPS,
        maximize=FLAG,
    ),
    "Adadelta": dict(
        lr=log_uniform(0.1, 2.0),
        rho=st.floats(0.5, 0.99),
        eps=log_uniform(1e-8, 1e-4),
        weight_decay=WD,
        maximize=FLAG,
    ),
    "Adamax": ADAM_LIKE,
    "NAdam": dict(
        ADAM_LIKE, momentum_decay=log_uniform(1e-3, 1e-2), decoupled_weight_decay=FLAG
    ),
    "RAdam": dict(ADAM_LIKE, decoupled_weight_decay=FLAG),
    "ASGD": dict(
        lr=LR,
        lambd=zero_or(log_uniform(1e-5, 1e-2)),
        alpha=st.floats(0.5, 1.0),
        t0=st.integers(1, 10).map(float),
        weight_decay=WD,
        maximize=FLAG,
    ),
    "Rprop": dict(
        lr=LR,
        etas=st.tuples(st.floats(0.1, 0.9), st.floats(1.05, 2.0)),
        step_sizes=st.tuples(log_uniform(1e-7, 1e-5), log_uniform(1.0, 100.0)),
        maximize=FLAG,
    ),
    "Adafactor": dict(
        lr=LR,
        beta2_decay=st.floats(-1.0, -0.5),
        eps=st.tuples(st.just(None), log_uniform(1e-4, 1e-2)),
        d=st.floats(1.0, 4.0),
        weight_decay=WD,
        maximize=FLAG,
    ),
}

def shapes(min_dim=0):
    shape = st.lists(st.integers(min_dim, 4), min_size=0, max_size=3).map(tuple)
    return st.lists(shape, min_size=1, max_size=3).map(tuple)


# torch's Adafactor divides by the element count (ZeroDivisionError on an empty parameter)
MIN_DIM = {"Adafactor": 1}
COMPLEX_SUPPORT = {name: cplx for name, _, cplx in optimizer_table()}
REAL = (torch.float64, torch.float32)
COMPLEX = (torch.complex128,)


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_random_configurations_match_torch(name):
    torch_cls, ju_fn = getattr(torch.optim, name), optimizer_fn_for(name)
    kwargs_strategy = OPTIMIZERS[name]
    if isinstance(kwargs_strategy, dict):
        kwargs_strategy = st.fixed_dictionaries(kwargs_strategy)
    dtypes = REAL + (COMPLEX if COMPLEX_SUPPORT[name] else ())

    @SETTINGS
    @given(
        kwargs=kwargs_strategy,
        dtype=st.sampled_from(dtypes),
        shapes=shapes(MIN_DIM.get(name, 0)),
        steps=st.integers(1, 12),
        seed=st.integers(0, 2**16),
        grad_scale=log_uniform(1e-3, 1e3),
    )
    def check(kwargs, dtype, shapes, steps, seed, grad_scale):
        err = assert_parity(
            torch_cls,
            ju_fn,
            kwargs,
            dtype,
            steps=steps,
            shapes=shapes,
            seed=seed,
            grad_scale=grad_scale,
        )
        note(f"{name} {dtype} {shapes} steps={steps}: rel err {err:.2e}")

    check()

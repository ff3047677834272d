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

from jaxupdate.optim.adadelta import adadelta
from jaxupdate.optim.adafactor import adafactor
from jaxupdate.optim.adagrad import adagrad
from jaxupdate.optim.adam import adam, adamw
from jaxupdate.optim.adamax import adamax
from jaxupdate.optim.asgd import asgd
from jaxupdate.optim.nadam import nadam
from jaxupdate.optim.radam import radam
from jaxupdate.optim.rmsprop import rmsprop
from jaxupdate.optim.rprop import rprop
from jaxupdate.optim.sgd import sgd
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


# name -> (torch class, jaxupdate function, kwargs strategy, complex supported)
OPTIMIZERS = {
    "sgd": (torch.optim.SGD, sgd, sgd_kwargs(), True),
    "adam": (
        torch.optim.Adam,
        adam,
        st.fixed_dictionaries(
            dict(
                lr=LR,
                betas=BETAS,
                eps=EPS,
                weight_decay=WD,
                amsgrad=FLAG,
                maximize=FLAG,
                decoupled_weight_decay=FLAG,
            )
        ),
        True,
    ),
    "adamw": (
        torch.optim.AdamW,
        adamw,
        st.fixed_dictionaries(
            dict(lr=LR, betas=BETAS, eps=EPS, weight_decay=WD, amsgrad=FLAG, maximize=FLAG)
        ),
        True,
    ),
    "rmsprop": (
        torch.optim.RMSprop,
        rmsprop,
        st.fixed_dictionaries(
            dict(
                lr=LR,
                alpha=st.floats(0.5, 0.999),
                eps=EPS,
                weight_decay=WD,
                momentum=zero_or(st.floats(0.05, 0.95)),
                centered=FLAG,
                maximize=FLAG,
            )
        ),
        True,
    ),
    "adagrad": (
        torch.optim.Adagrad,
        adagrad,
        st.fixed_dictionaries(
            dict(
                lr=LR,
                lr_decay=zero_or(log_uniform(1e-4, 0.1)),
                weight_decay=WD,
                initial_accumulator_value=zero_or(st.floats(0.01, 1.0)),
                eps=EPS,
                maximize=FLAG,
            )
        ),
        True,
    ),
    "adadelta": (
        torch.optim.Adadelta,
        adadelta,
        st.fixed_dictionaries(
            dict(
                lr=log_uniform(0.1, 2.0),
                rho=st.floats(0.5, 0.99),
                eps=log_uniform(1e-8, 1e-4),
                weight_decay=WD,
                maximize=FLAG,
            )
        ),
        True,
    ),
    "adamax": (
        torch.optim.Adamax,
        adamax,
        st.fixed_dictionaries(
            dict(lr=LR, betas=BETAS, eps=EPS, weight_decay=WD, maximize=FLAG)
        ),
        True,
    ),
    "nadam": (
        torch.optim.NAdam,
        nadam,
        st.fixed_dictionaries(
            dict(
                lr=LR,
                betas=BETAS,
                eps=EPS,
                weight_decay=WD,
                momentum_decay=log_uniform(1e-3, 1e-2),
                decoupled_weight_decay=FLAG,
                maximize=FLAG,
            )
        ),
        True,
    ),
    "radam": (
        torch.optim.RAdam,
        radam,
        st.fixed_dictionaries(
            dict(
                lr=LR,
                betas=BETAS,
                eps=EPS,
                weight_decay=WD,
                decoupled_weight_decay=FLAG,
                maximize=FLAG,
            )
        ),
        True,
    ),
    "asgd": (
        torch.optim.ASGD,
        asgd,
        st.fixed_dictionaries(
            dict(
                lr=LR,
                lambd=zero_or(log_uniform(1e-5, 1e-2)),
                alpha=st.floats(0.5, 1.0),
                t0=st.integers(1, 10).map(float),
                weight_decay=WD,
                maximize=FLAG,
            )
        ),
        True,
    ),
    "rprop": (
        torch.optim.Rprop,
        rprop,
        st.fixed_dictionaries(
            dict(
                lr=LR,
                etas=st.tuples(st.floats(0.1, 0.9), st.floats(1.05, 2.0)),
                step_sizes=st.tuples(log_uniform(1e-7, 1e-5), log_uniform(1.0, 100.0)),
                maximize=FLAG,
            )
        ),
        True,
    ),
    "adafactor": (
        torch.optim.Adafactor,
        adafactor,
        st.fixed_dictionaries(
            dict(
                lr=LR,
                beta2_decay=st.floats(-1.0, -0.5),
                eps=st.tuples(st.just(None), log_uniform(1e-4, 1e-2)),
                d=st.floats(1.0, 4.0),
                weight_decay=WD,
                maximize=FLAG,
            )
        ),
        False,
    ),
}

def shapes(min_dim=0):
    shape = st.lists(st.integers(min_dim, 4), min_size=0, max_size=3).map(tuple)
    return st.lists(shape, min_size=1, max_size=3).map(tuple)


# torch's Adafactor divides by the element count (ZeroDivisionError on an empty parameter)
MIN_DIM = {"adafactor": 1}
REAL = (torch.float64, torch.float32)
COMPLEX = (torch.complex128,)


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_random_configurations_match_torch(name):
    torch_cls, ju_fn, kwargs_strategy, supports_complex = OPTIMIZERS[name]
    dtypes = REAL + (COMPLEX if supports_complex else ())

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

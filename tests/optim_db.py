"""One table of the elementwise optimizers, in the manner of torch's ``optim_db``.

Each ``OptimInfo`` names the torch class, the jaxupdate function and torch's own config and
error tables (``torch/testing/_internal/common_optimizers.py``), plus what torch's table does not
cover: an option grid, the exact error wording, the state keys to compare and a schedule.
``tests/test_optim_db.py`` turns every entry into the same parity, signature, error, state and
schedule tests; a test file per optimizer keeps only what is particular to it. A new optimizer
gets its shared tests by adding one entry here.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import numpy as np
import torch
from torch.testing._internal import common_optimizers as co

import jaxupdate as ju
from jaxupdate.transforms.adaptive import (
    TorchAdadeltaState,
    TorchAdagradState,
    TorchAdamaxState,
    TorchRpropState,
)
from tests.parity import grid, pairwise


@dataclasses.dataclass(frozen=True)
class OptimInfo:
    name: str
    torch_cls: type
    ju_fn: Callable
    inputs_fn: Callable  # torch's optim_inputs_func_<name>
    errors_fn: Callable  # torch's optim_error_inputs_func_<name>
    grid: list  # option grid on top of torch's table (float64, float32, complex)
    wording: list  # (kwargs, torch's exact ValueError message)
    # (kwargs, state NamedTuple type, torch state keys) compared after 15 steps, or None where
    # the optimizer's own test file compares the state step by step
    state: tuple | None = None
    # (kwargs, lr schedule): torch with group["lr"] = schedule(count) before each step
    schedule: tuple | None = None
    # kwargs whose float hyperparameters are all also passed as 1-element arrays and schedules
    hparams: dict | None = None
    # kwargs of a trajectory run inside one jitted lax.scan (a switch kept in Python-side flags
    # instead of the state fails it)
    scan: dict | None = None
    # (kwargs, {hyperparameter: schedule, or a tuple with schedules}): torch with those group
    # values set before each step
    group_schedules: tuple | None = None
    # kwargs run with update(grads, state), no params (torch's step up to one add less)
    without_params: dict | None = None
    # kwargs run in float32 with JAX's default x64 off (float32 scalar math)
    float32_without_x64: dict | None = None
    # kwargs whose update(grads, state), without params, must raise (weight decay reads them)
    needs_params: dict | None = None
    id_skip: tuple = ()  # options left out of the grid's test ids


def _sgd_grid():
    return [
        kw
        for kw in grid(
            lr=[0.05],
            momentum=[0.0, 0.9],
            dampening=[0.0, 0.3],
            weight_decay=[0.0, 0.1],
            nesterov=[False, True],
            maximize=[False, True],
        )
        # torch's constructor refuses nesterov without momentum or with dampening
        if not (kw["nesterov"] and (kw["momentum"] == 0 or kw["dampening"] != 0))
    ]


# torch checks eps before betas and betas before weight_decay (NAdam, RAdam)
_ADAM_FAMILY_WORDING = [
    (dict(lr=-1.0), "Invalid learning rate: -1.0"),
    (dict(eps=-1e-8), "Invalid epsilon value: -1e-08"),
    (dict(betas=(0.9, 1.0)), "Invalid beta parameter at index 1: 1.0"),
    (dict(betas=(-0.1, 0.9)), "Invalid beta parameter at index 0: -0.1"),
    (dict(weight_decay=-0.1), "Invalid weight_decay value: -0.1"),
    (dict(eps=-1.0, betas=(1.0, 0.9)), "Invalid epsilon value: -1.0"),
    (dict(betas=(1.0, 0.9), weight_decay=-1.0), "Invalid beta parameter at index 0: 1.0"),
]


OPTIMS = [
    OptimInfo(
        "sgd", torch.optim.SGD, ju.sgd, co.optim_inputs_func_sgd, co.optim_error_inputs_func_sgd,
        grid=_sgd_grid(),
        wording=[
            (dict(lr=-1.0), "Invalid learning rate: -1.0"),
            (dict(lr=np.array([1e-3, 1e-3])), "Tensor lr must be 1-element"),
            (dict(momentum=-0.5), "Invalid momentum value: -0.5"),
            (dict(weight_decay=-1), "Invalid weight_decay value: -1"),
            (dict(momentum=0.0, nesterov=True),
             "Nesterov momentum requires a momentum and zero dampening"),
            (dict(momentum=0.9, dampening=0.1, nesterov=True),
             "Nesterov momentum requires a momentum and zero dampening"),
        ],
        schedule=(dict(momentum=0.9, weight_decay=0.1), lambda c: 0.1 * 0.9**c),
        needs_params=dict(lr=0.1, weight_decay=0.1),
    ),
    OptimInfo(
        "adam", torch.optim.Adam, ju.adam, co.optim_inputs_func_adam,
        co.optim_error_inputs_func_adam,
        grid=grid(
            lr=[0.01],
            betas=[(0.9, 0.999), (0.5, 0.9)],
            eps=[1e-8, 1e-3],
            weight_decay=[0.0, 0.1],
            amsgrad=[False, True],
            maximize=[False, True],
            decoupled_weight_decay=[False, True],
        ),
        wording=[
            (dict(betas=(1.0, 0.0)), "Invalid beta parameter at index 0: 1.0"),
            (dict(betas=(0.9, 1.0)), "Invalid beta parameter at index 1: 1.0"),
            (dict(eps=-1e-8), "Invalid epsilon value: -1e-08"),
            (dict(betas=(0.9, np.array(0.99))),
             "betas must be either both floats or both Tensors"),
        ],
        schedule=(dict(amsgrad=True, weight_decay=0.1), lambda c: 0.01 * 0.9**c),
    ),
    OptimInfo(
        "adamw", torch.optim.AdamW, ju.adamw, co.optim_inputs_func_adamw,
        co.optim_error_inputs_func_adamw,
        grid=grid(
            lr=[0.01], weight_decay=[0.0, 0.01, 0.5], amsgrad=[False, True],
            maximize=[False, True],
        ),
        wording=[(dict(lr=-0.1), "Invalid learning rate: -0.1")],
        schedule=(dict(weight_decay=0.1), lambda c: 0.01 * 0.9**c),
    ),
    OptimInfo(
        "rmsprop", torch.optim.RMSprop, ju.rmsprop, co.optim_inputs_func_rmsprop,
        co.optim_error_inputs_func_rmsprop,
        grid=grid(
            lr=[0.01],
            alpha=[0.99, 0.5],
            eps=[1e-8, 1e-2],
            weight_decay=[0.0, 0.1],
            momentum=[0.0, 0.9],
            centered=[False, True],
            maximize=[False, True],
        ),
        wording=[
            (dict(alpha=-0.5), "Invalid alpha value: -0.5"),
            (dict(eps=-1.0), "Invalid epsilon value: -1.0"),
            (dict(momentum=-1.0), "Invalid momentum value: -1.0"),
        ],
        schedule=(dict(momentum=0.5, centered=True), lambda c: 0.01 * 0.9**c),
    ),
    OptimInfo(
        "adagrad", torch.optim.Adagrad, ju.adagrad, co.optim_inputs_func_adagrad,
        co.optim_error_inputs_func_adagrad,
        grid=pairwise(
            lr=[0.05, 0.5],
            lr_decay=[0, 0.5],
            weight_decay=[0, 0.1],
            initial_accumulator_value=[0, 0.1],
            eps=[1e-10, 1e-2],
            maximize=[False, True],
        ),
        wording=[
            (dict(lr=-0.1), "Invalid learning rate: -0.1"),
            (dict(lr_decay=-1e-3), "Invalid lr_decay value: -0.001"),
            (dict(weight_decay=-1), "Invalid weight_decay value: -1"),
            (dict(initial_accumulator_value=-0.5),
             "Invalid initial_accumulator_value value: -0.5"),
            (dict(eps=-1e-10), "Invalid epsilon value: -1e-10"),
        ],
        # `sum` starts at initial_accumulator_value, not 0
        state=(dict(lr=0.1, lr_decay=0.3, initial_accumulator_value=0.7, weight_decay=0.1),
               TorchAdagradState, ["sum"]),
        # clr = lr_t / (1 + (t - 1) * lr_decay), lr_t read each step as torch reads group["lr"]
        schedule=(dict(lr_decay=0.2, weight_decay=0.1), lambda c: 0.1 * 0.9**c),
        hparams=dict(lr=0.1, lr_decay=0.5, weight_decay=0.1, initial_accumulator_value=0.2,
                     eps=1e-3),
    ),
    OptimInfo(
        "adadelta", torch.optim.Adadelta, ju.adadelta, co.optim_inputs_func_adadelta,
        co.optim_error_inputs_func_adadelta,
        grid=pairwise(
            lr=[1.0, 0.1],
            rho=[0.9, 0.0, 1.0],  # both ends of its closed range
            eps=[1e-6, 1e-2],
            weight_decay=[0, 0.1],
            maximize=[False, True],
        ),
        wording=[
            (dict(lr=-1.0), "Invalid learning rate: -1.0"),
            (dict(rho=-0.1), "Invalid rho value: -0.1"),
            (dict(rho=1.5), "Invalid rho value: 1.5"),
            (dict(eps=-1e-6), "Invalid epsilon value: -1e-06"),
            (dict(weight_decay=-0.5), "Invalid weight_decay value: -0.5"),
        ],
        state=(dict(rho=0.8, weight_decay=0.1), TorchAdadeltaState,
               ["square_avg", "acc_delta"]),
        schedule=(dict(rho=0.9), lambda c: 1.0 * 0.9**c),
        hparams=dict(lr=0.5, rho=0.8, eps=1e-4, weight_decay=0.1),
    ),
    OptimInfo(
        "adamax", torch.optim.Adamax, ju.adamax, co.optim_inputs_func_adamax,
        co.optim_error_inputs_func_adamax,
        grid=pairwise(
            lr=[0.05],
            betas=[(0.9, 0.999), (0.5, 0.9), (0.0, 0.0)],  # (0, 0): m = g, u = |g| + eps
            eps=[1e-8, 1e-1],
            weight_decay=[0, 0.1],
            maximize=[False, True],
        ),
        wording=[
            (dict(lr=-1e-3), "Invalid learning rate: -0.001"),
            (dict(eps=-1.0), "Invalid epsilon value: -1.0"),
            (dict(betas=(1.0, 0.9)), "Invalid beta parameter at index 0: 1.0"),
            (dict(betas=(-0.1, 0.9)), "Invalid beta parameter at index 0: -0.1"),
            (dict(betas=(0.9, 1.5)), "Invalid beta parameter at index 1: 1.5"),
            (dict(weight_decay=-0.1), "Invalid weight_decay value: -0.1"),
        ],
        state=(dict(betas=(0.8, 0.95), weight_decay=0.1), TorchAdamaxState,
               ["exp_avg", "exp_inf"]),
        schedule=(dict(weight_decay=0.1), lambda c: 0.05 * 0.9**c),
        hparams=dict(lr=0.05, betas=(0.8, 0.95), eps=1e-3, weight_decay=0.1),
    ),
    OptimInfo(
        "rprop", torch.optim.Rprop, ju.rprop, co.optim_inputs_func_rprop,
        co.optim_error_inputs_func_rprop,
        # lr=1e-7 lies below step_size_min, so the first step clamps it
        grid=pairwise(
            lr=[1e-2, 1e-7, 0.5],
            etas=[(0.5, 1.2), (0.1, 3.0)],
            step_sizes=[(1e-6, 50), (1e-3, 0.02)],
            maximize=[False, True],
        ),
        wording=[
            (dict(lr=-1e-2), "Invalid learning rate: -0.01"),
            (dict(etas=(0.0, 1.2)), "Invalid eta values: 0.0, 1.2"),
            (dict(etas=(0.5, 1.0)), "Invalid eta values: 0.5, 1.0"),
            (dict(etas=(1.5, 2.0)), "Invalid eta values: 1.5, 2.0"),
        ],
        state=(dict(lr=0.05, etas=(0.4, 1.3)), TorchRpropState, ["prev", "step_size"]),
        hparams=dict(lr=0.05, etas=(0.4, 1.3), step_sizes=(1e-3, 0.2)),
    ),
    OptimInfo(
        "nadam", torch.optim.NAdam, ju.nadam, co.optim_inputs_func_nadam,
        co.optim_error_inputs_func_nadam,
        grid=pairwise(
            lr=[0.01],
            betas=[(0.9, 0.999), (0.5, 0.9)],
            eps=[1e-8, 1e-3],
            weight_decay=[0.0, 0.1],
            momentum_decay=[4e-3, 0.1],
            decoupled_weight_decay=[False, True],
            maximize=[False, True],
        ),
        wording=_ADAM_FAMILY_WORDING
        + [(dict(momentum_decay=-1e-3), "Invalid momentum_decay value: -0.001")],
        hparams=dict(lr=0.01, betas=(0.8, 0.99), eps=1e-6, weight_decay=0.1, momentum_decay=0.01),
        scan=dict(lr=0.01, weight_decay=0.1, decoupled_weight_decay=True, maximize=True),
        group_schedules=(dict(weight_decay=0.1), dict(
            lr=lambda c: 0.02 * 0.9**c,
            momentum_decay=lambda c: 4e-3 + 1e-3 * c,
            betas=(lambda c: 0.9 - 0.01 * c, 0.999),
        )),
        without_params=dict(lr=0.01, maximize=True),
        float32_without_x64=dict(lr=0.01, weight_decay=0.1, decoupled_weight_decay=True),
        needs_params=dict(weight_decay=0.1, decoupled_weight_decay=True),
        id_skip=("lr",),
    ),
    OptimInfo(
        "radam", torch.optim.RAdam, ju.radam, co.optim_inputs_func_radam,
        co.optim_error_inputs_func_radam,
        grid=pairwise(
            lr=[0.01],
            betas=[(0.9, 0.999), (0.5, 0.9)],  # the rho_t > 5 switch at step 6 for both
            eps=[1e-8, 1e-3],
            weight_decay=[0.0, 0.1],
            decoupled_weight_decay=[False, True],
            maximize=[False, True],
        ),
        wording=_ADAM_FAMILY_WORDING,
        hparams=dict(lr=0.01, betas=(0.8, 0.99), eps=1e-6, weight_decay=0.1),
        # the rectification switch (rho_t > 5) must live in the state
        scan=dict(lr=0.01, weight_decay=0.1, decoupled_weight_decay=True, maximize=True),
        group_schedules=(dict(weight_decay=0.1), dict(
            lr=lambda c: 0.02 * 0.9**c,
            betas=(lambda c: 0.9 - 0.01 * c, lambda c: 0.99 - 0.001 * c),
        )),
        without_params=dict(lr=0.01, maximize=True),
        float32_without_x64=dict(
            lr=0.01, weight_decay=0.1, decoupled_weight_decay=True, betas=(0.9, 0.99)
        ),
        needs_params=dict(weight_decay=0.1, decoupled_weight_decay=True),
        id_skip=("lr",),
    ),
    OptimInfo(
        "asgd", torch.optim.ASGD, ju.asgd, co.optim_inputs_func_asgd,
        co.optim_error_inputs_func_asgd,
        # t0 = 5 starts the averaging (mu != 1) within the 40 steps
        grid=pairwise(
            lr=[0.01, 0.05],
            lambd=[1e-4, 0.1],
            alpha=[0.75, 0.5],
            t0=[1e6, 5.0],
            weight_decay=[0.0, 0.1],
            maximize=[False, True],
        ),
        wording=[
            (dict(lr=-1.0), "Invalid learning rate: -1.0"),
            (dict(weight_decay=-0.1), "Invalid weight_decay value: -0.1"),
            (dict(lr=-1.0, weight_decay=-0.1), "Invalid learning rate: -1.0"),
        ],
        float32_without_x64=dict(lr=0.05, lambd=0.01, t0=5.0, weight_decay=0.1),
        needs_params={},  # the averaged parameters ax follow params
    ),
]

BY_NAME = {o.name: o for o in OPTIMS}

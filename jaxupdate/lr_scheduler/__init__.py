"""torch.optim.lr_scheduler as pure, jittable schedules that reproduce torch's numbers.

``ju.lr_scheduler.<name>(lr, **torch_kwargs)`` returns a schedule: ``schedule(count)`` is the
learning rate torch's optimizer holds after ``count`` calls of ``scheduler.step()`` (``count = 0``
gives the initial lr). torch's ``optimizer`` argument becomes ``lr``, the optimizer's initial
learning rate; ``cyclic_lr`` and ``one_cycle_lr`` set the lr themselves and keep their own
leading arguments. A schedule is accepted wherever a jaxupdate optimizer takes ``lr`` (or any
other float hyperparameter: ``momentum=sched.momentum``, ``betas=(sched.momentum, 0.999)``)::

    # torch
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=30, gamma=0.1)
    for x, y in batches:
        loss_fn(model(x), y).backward()
        optimizer.step()
        scheduler.step()

    # jaxupdate
    tx = ju.sgd(lr=ju.lr_scheduler.step_lr(0.1, step_size=30, gamma=0.1), momentum=0.9)

Schedulers torch steps once per epoch: :func:`per_epoch`. Hyperparameters held in the
optimizer state, set by hand without recompiling, and ReduceLROnPlateau driven by
``update(..., value=metric)``: :func:`inject_hyperparams`, :func:`set_hyperparams`;
ReduceLROnPlateau stepped once per epoch: ``per_epoch(reduce_lr_on_plateau(...), n)`` and
:func:`step_plateau`. Python ``lr_lambda`` functions (Hugging Face's warm-up schedules) work
under ``jit``: see :func:`lambda_lr`.
"""

from jaxupdate.lr_scheduler._base import Schedule, per_epoch
from jaxupdate.lr_scheduler.basic import (
    constant_lr,
    exponential_lr,
    lambda_lr,
    linear_lr,
    multi_step_lr,
    multiplicative_lr,
    polynomial_lr,
    step_lr,
)
from jaxupdate.lr_scheduler.compose import chained_scheduler, sequential_lr
from jaxupdate.lr_scheduler.cosine import cosine_annealing_lr, cosine_annealing_warm_restarts
from jaxupdate.lr_scheduler.cyclic import cyclic_lr, one_cycle_lr
from jaxupdate.lr_scheduler.inject import (
    InjectState,
    get_hyperparams,
    inject_hyperparams,
    set_hyperparams,
    step_plateau,
)
from jaxupdate.lr_scheduler.plateau import PlateauState, ReduceLROnPlateau, reduce_lr_on_plateau

__all__ = [
    "InjectState",
    "PlateauState",
    "ReduceLROnPlateau",
    "Schedule",
    "chained_scheduler",
    "constant_lr",
    "cosine_annealing_lr",
    "cosine_annealing_warm_restarts",
    "cyclic_lr",
    "exponential_lr",
    "get_hyperparams",
    "inject_hyperparams",
    "lambda_lr",
    "linear_lr",
    "multi_step_lr",
    "multiplicative_lr",
    "one_cycle_lr",
    "per_epoch",
    "polynomial_lr",
    "reduce_lr_on_plateau",
    "sequential_lr",
    "set_hyperparams",
    "step_plateau",
    "step_lr",
]

"""ReduceLROnPlateau as a pure, jittable state machine (and a stateful schedule for optimizers)."""

from __future__ import annotations

import copy
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp

from jaxupdate._hparams import scalar_dtype
from jaxupdate.lr_scheduler._base import Schedule, as_float, check_base_lr, torch_scheduler


class PlateauState(NamedTuple):
    """torch's ReduceLROnPlateau attributes, plus the group's lr."""

    lr: jax.Array  # the optimizer's lr (torch's param_group["lr"])
    best: jax.Array
    num_bad_epochs: jax.Array
    cooldown_counter: jax.Array
    last_epoch: jax.Array


@torch_scheduler
class ReduceLROnPlateau:
    """See :func:`reduce_lr_on_plateau`."""

    momentum = None
    #: False (``per_epoch``): ``tx.update`` leaves the plateau alone, ``step_plateau`` steps it
    on_update = True
    every = None

    @classmethod
    def from_torch(cls, s, g: int, group: dict, *, base, probe: int = 0, convert=None):
        """torch's ``ReduceLROnPlateau`` ``s`` for group ``g``, from the group's current lr
        ``base`` (its position, ``best`` ..., is state: see ``from_torch``); the arguments as
        in :meth:`Schedule.from_torch`."""
        return reduce_lr_on_plateau(
            base,
            mode=s.mode,
            factor=s.factor,
            patience=s.patience,
            threshold=s.threshold,
            threshold_mode=s.threshold_mode,
            cooldown=s.cooldown,
            min_lr=s.min_lrs[g],
            eps=s.eps,
        )

    def __init__(
        self, lr, mode, factor, patience, threshold, threshold_mode, cooldown, min_lr, eps
    ):
        if factor >= 1.0:
            raise ValueError("Factor should be < 1.0.")
        if isinstance(lr, Schedule):
            self.schedule, self.lr = lr, lr.lr
        else:
            self.schedule, self.lr = None, check_base_lr(lr)
        if isinstance(min_lr, (list, tuple)):
            if len(min_lr) != 1:
                raise ValueError(f"expected 1 min_lrs, got {len(min_lr)}")
            min_lr = min_lr[0]
        if mode not in {"min", "max"}:
            raise ValueError("mode " + mode + " is unknown!")
        if threshold_mode not in {"rel", "abs"}:
            raise ValueError("threshold mode " + threshold_mode + " is unknown!")
        self.mode, self.factor, self.patience = mode, factor, patience
        self.threshold, self.threshold_mode = threshold, threshold_mode
        self.cooldown, self.min_lr, self.eps = cooldown, min_lr, eps
        self.mode_worse = math.inf if mode == "min" else -math.inf
        self._repr_args = {
            "lr": lr,
            "mode": mode,
            "factor": factor,
            "patience": patience,
            "threshold": threshold,
            "threshold_mode": threshold_mode,
            "cooldown": cooldown,
            "min_lr": min_lr,
            "eps": eps,
        }


    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in self._repr_args.items())
        out = f"reduce_lr_on_plateau({args})"
        return out if self.on_update else f"per_epoch({out}, steps_per_epoch={self.every})"

    def per_epoch(self, steps_per_epoch: int) -> "ReduceLROnPlateau":
        """This plateau stepped once per epoch by ``step_plateau``, not by the updates."""
        out = copy.copy(self)
        out.on_update, out.every = False, steps_per_epoch
        return out

    def init(self) -> PlateauState:
        """State right after torch's constructor (which leaves the lr as it is)."""
        lr0 = self.schedule(0) if self.schedule is not None else self.lr
        return PlateauState(
            lr=as_float(lr0),
            best=as_float(self.mode_worse),
            num_bad_epochs=jnp.zeros((), jnp.int32),
            cooldown_counter=jnp.zeros((), jnp.int32),
            last_epoch=jnp.zeros((), jnp.int32),
        )

    def _is_better(self, a, best):
        if self.mode == "min" and self.threshold_mode == "rel":
            return a < best * (1.0 - self.threshold)
        if self.mode == "min":
            return a < best - self.threshold
        if self.threshold_mode == "rel":
            return a > best * (self.threshold + 1.0)
        return a > best + self.threshold

    def step(self, state: PlateauState, metric) -> PlateauState:
        """torch's ``scheduler.step(metric)``; jittable, ``metric`` a scalar (e.g. a val loss).

        If this plateau was built on a schedule (the schedulers torch steps before it on the
        same optimizer), that schedule's chainable step is applied to the lr first.
        """
        current = jnp.reshape(jnp.asarray(metric, scalar_dtype()), ())
        epoch = state.last_epoch + 1
        lr = state.lr
        if self.schedule is not None:
            lr = self.schedule.step(lr, epoch)
        better = self._is_better(current, state.best)
        best = jnp.where(better, current, state.best)
        bad = jnp.where(better, 0, state.num_bad_epochs + 1)
        cooling = state.cooldown_counter > 0
        cooldown_counter = jnp.where(cooling, state.cooldown_counter - 1, state.cooldown_counter)
        bad = jnp.where(cooling, 0, bad)
        reduce = bad > self.patience
        new_lr = jnp.maximum(lr * self.factor, self.min_lr)
        lr = jnp.where(reduce & (lr - new_lr > self.eps), new_lr, lr)
        cooldown_counter = jnp.where(reduce, self.cooldown, cooldown_counter)
        bad = jnp.where(reduce, 0, bad)
        return PlateauState(
            lr=as_float(lr),
            best=as_float(best),
            num_bad_epochs=bad.astype(jnp.int32),
            cooldown_counter=cooldown_counter.astype(jnp.int32),
            last_epoch=epoch,
        )

    # optax's StatefulSchedule protocol: optax.inject_hyperparams(...)(lr=plateau) works too
    def update(self, state: PlateauState, *, value=None, **extra_args) -> PlateauState:
        if value is None:
            raise ValueError(
                "reduce_lr_on_plateau needs the metric: call "
                "tx.update(grads, opt_state, params, value=metric)"
            )
        return self.step(state, value)

    def __call__(self, state, **extra_args):
        if not isinstance(state, PlateauState):
            raise TypeError(
                "reduce_lr_on_plateau is stateful: pass it as a hyperparameter of an optimizer "
                "built with jaxupdate.lr_scheduler.inject_hyperparams (or optax's), or use "
                "init()/step(state, metric) and set the lr with set_hyperparams"
            )
        return state.lr


def reduce_lr_on_plateau(
    lr,
    mode: str = "min",
    factor: float = 0.1,
    patience: int = 10,
    threshold: float = 1e-4,
    threshold_mode: str = "rel",
    cooldown: int = 0,
    min_lr=0,
    eps: float = 1e-8,
) -> ReduceLROnPlateau:
    r"""torch.optim.lr_scheduler.ReduceLROnPlateau as a pure state machine.

    torch's ``step(metric)``::

        better = metric < best * (1 - threshold)     # mode="min", threshold_mode="rel"
                 metric < best - threshold           # "min", "abs"
                 metric > best * (1 + threshold)     # "max", "rel"
                 metric > best + threshold           # "max", "abs"
        if better: best, num_bad_epochs = metric, 0  else: num_bad_epochs += 1
        if cooldown_counter > 0: cooldown_counter -= 1; num_bad_epochs = 0
        if num_bad_epochs > patience:
            new_lr = max(lr * factor, min_lr)
            if lr - new_lr > eps: lr = new_lr
            cooldown_counter, num_bad_epochs = cooldown, 0

    Two ways to use it, as in torch:

    Per epoch (``init`` / ``step(state, metric)``, all jittable), writing the lr into an
    optimizer built with :func:`inject_hyperparams`::

        plateau = reduce_lr_on_plateau(0.1, mode="min", patience=5)
        tx = inject_hyperparams(ju.sgd)(lr=0.1, momentum=0.9)
        opt_state, p_state = tx.init(params), plateau.init()
        for epoch in range(epochs):
            ...                                              # training updates
            p_state = plateau.step(p_state, val_loss)        # scheduler.step(val_loss)
            opt_state = set_hyperparams(opt_state, lr=p_state.lr)

    Per update, as a hyperparameter of an optimizer built with :func:`inject_hyperparams`
    (or ``optax.inject_hyperparams``: it is an optax ``StatefulSchedule``); the metric goes
    in as ``update(..., value=metric)`` and is applied after that update, like torch's
    ``optimizer.step(); scheduler.step(metric)``::

        tx = inject_hyperparams(ju.adam)(lr=reduce_lr_on_plateau(1e-3, patience=10))
        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, opt_state = tx.update(grads, opt_state, params, value=loss)

    Per epoch inside an optimizer built with :func:`inject_hyperparams` (torch's usual loop:
    the metric is a validation loss computed after the epoch's last update): wrap it in
    :func:`jaxupdate.lr_scheduler.per_epoch`, so that updates leave it alone, and step it
    with :func:`jaxupdate.lr_scheduler.step_plateau` (also what
    ``from_torch(opt, plateau, steps_per_epoch=n)`` returns)::

        plateau = per_epoch(reduce_lr_on_plateau(0.1), steps_per_epoch=len(loader))
        tx = inject_hyperparams(ju.sgd)(lr=plateau)
        for epoch in range(epochs):
            for batch in loader:
                updates, opt_state = tx.update(grads, opt_state, params)   # no value=
                ...
            opt_state = step_plateau(tx, opt_state, val_loss)    # scheduler.step(val_loss)

    torch's pattern of other schedulers stepped before the plateau on the same optimizer
    (``ExponentialLR(opt, 0.9)`` then ``ReduceLROnPlateau(opt)``) is a plateau built on
    that schedule: ``reduce_lr_on_plateau(exponential_lr(1e-3, gamma=0.9))``, which applies
    the schedule's chainable step, then the plateau's, at every ``step``.

    Args (torch's, ``optimizer`` replaced by ``lr``): ``lr`` the optimizer's initial lr (or
    a schedule stepped before the plateau), ``mode="min"``, ``factor=0.1``, ``patience=10``,
    ``threshold=1e-4``, ``threshold_mode="rel"``, ``cooldown=0``, ``min_lr=0`` (a number or
    a one-element list), ``eps=1e-8``.

    Example::

        >>> from jaxupdate.lr_scheduler import reduce_lr_on_plateau
        >>> plateau = reduce_lr_on_plateau(0.1, patience=1)
        >>> s = plateau.init()
        >>> for loss in [1.0, 1.0, 1.0]:
        ...     s = plateau.step(s, loss)
        >>> round(float(s.lr), 6)        # two epochs without improvement > patience
        0.01
    """
    return ReduceLROnPlateau(
        lr, mode, factor, patience, threshold, threshold_mode, cooldown, min_lr, eps
    )

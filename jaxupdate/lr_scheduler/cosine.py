"""CosineAnnealingLR (torch's recursive form, oscillating past T_max) and warm restarts (SGDR)."""

from __future__ import annotations

import math

import jax.numpy as jnp
from jax import lax

from jaxupdate.lr_scheduler._base import (
    Schedule,
    SelfSetting,
    as_float,
    check_base_lr,
    div,
    torch_scheduler,
)
from jaxupdate.numerics import unfused


@torch_scheduler
class CosineAnnealingLR(Schedule):
    @classmethod
    def from_torch(cls, s, g: int, group: dict, *, base, probe: int = 0, convert=None):
        """Converts a torch ``CosineAnnealingLR``: see :meth:`Schedule.from_torch`."""
        return cosine_annealing_lr(base, s.T_max, s.eta_min)

    def __init__(self, lr, T_max, eta_min):
        self.lr = check_base_lr(lr)
        if T_max == 0:
            # torch raises this at the first scheduler.step() (``% (2 * T_max)``)
            raise ZeroDivisionError("integer modulo by zero")
        self.T_max = T_max
        self.eta_min = eta_min
        self._repr_args = {"lr": lr, "T_max": T_max, "eta_min": eta_min}

    def _closed(self, t):
        # torch's _get_closed_form_lr; equals its recursion to rounding (measured in the tests)
        cos = jnp.cos(div(math.pi * as_float(t), self.T_max))
        return self.eta_min + unfused((self.lr - self.eta_min) * (1 + cos) / 2)

    def _next(self, lr, t):
        T, eta = self.T_max, self.eta_min
        # at the bottom of each period torch adds the step instead of dividing by ~0
        bottom = (t - 1 - T) % (2 * T) == 0
        add = lr + (self.lr - eta) * (1 - math.cos(math.pi / T)) / 2
        tf = as_float(t)
        num = 1 + jnp.cos(div(math.pi * tf, T))
        den = 1 + jnp.cos(div(math.pi * (tf - 1), T))
        ratio = num / jnp.where(bottom, 1.0, den)
        return jnp.where(bottom, add, unfused(ratio * (lr - eta)) + eta)

    def _restart(self, lr):
        cos = math.cos(math.pi * 0 / self.T_max)
        return self.eta_min + (self.lr - self.eta_min) * (1 + cos) / 2


def cosine_annealing_lr(lr, T_max: int, eta_min: float = 0.0) -> Schedule:
    r"""torch.optim.lr_scheduler.CosineAnnealingLR, in torch's recursive form.

    torch's ``get_lr`` (chainable)::

        (last_epoch - 1 - T_max) % (2 T_max) == 0:
            group_lr + (lr - eta_min) * (1 - cos(pi / T_max)) / 2
        otherwise:
            (1 + cos(pi t / T_max)) / (1 + cos(pi (t - 1) / T_max)) * (group_lr - eta_min) + eta_min

    Unchained it equals ``eta_min + (lr - eta_min) * (1 + cos(pi * count / T_max)) / 2``,
    which ``schedule(count)`` computes: the lr keeps oscillating past ``T_max`` (it rises back
    to ``lr`` at ``2 T_max``), unlike optax's ``cosine_decay_schedule`` which stays at the
    end value. Chained with other schedulers (``chained_scheduler``) or with an lr set by
    hand, the recursion is applied.

    Args:
      lr: the optimizer's initial learning rate.
      T_max: half period, in scheduler steps.
      eta_min: minimum learning rate, default ``0.0``.

    Example::

        >>> from jaxupdate.lr_scheduler import cosine_annealing_lr
        >>> sched = cosine_annealing_lr(0.1, T_max=10)
        >>> [round(float(sched(c)), 6) for c in (0, 5, 10, 20)]
        [0.1, 0.05, 0.0, 0.1]
    """
    return CosineAnnealingLR(lr, T_max, eta_min)


def _restart_position(t, T_0: int, T_mult: int):
    """torch's ``T_cur`` and ``T_i`` after ``t`` steps: periods T_0, T_0 T_mult, ... removed."""
    if T_mult == 1:
        return t % T_0, jnp.asarray(T_0, t.dtype)

    def cond(c):
        t_cur, t_i = c
        return t_cur >= t_i

    def body(c):
        t_cur, t_i = c
        return t_cur - t_i, t_i * T_mult

    return lax.while_loop(cond, body, (t, jnp.asarray(T_0, t.dtype)))


@torch_scheduler
class CosineAnnealingWarmRestarts(SelfSetting):
    # Restarted by SequentialLR, torch's get_lr runs with T_cur still 0 from construction:
    # _value(0), which SelfSetting._restart gives.

    @classmethod
    def from_torch(cls, s, g: int, group: dict, *, base, probe: int = 0, convert=None):
        """Converts a torch ``CosineAnnealingWarmRestarts``: see :meth:`Schedule.from_torch`."""
        return cosine_annealing_warm_restarts(base, s.T_0, s.T_mult, s.eta_min)

    def __init__(self, lr, T_0, T_mult, eta_min):
        if T_0 <= 0 or not isinstance(T_0, int):
            raise ValueError(f"Expected positive integer T_0, but got {T_0}")
        if T_mult < 1 or not isinstance(T_mult, int):
            raise ValueError(f"Expected integer T_mult >= 1, but got {T_mult}")
        if not isinstance(eta_min, (float, int)):
            raise ValueError(
                f"Expected float or int eta_min, but got {eta_min} of type {type(eta_min)}"
            )
        self.lr = check_base_lr(lr)
        self.T_0, self.T_mult, self.eta_min = T_0, T_mult, eta_min
        self._repr_args = {"lr": lr, "T_0": T_0, "T_mult": T_mult, "eta_min": eta_min}

    def _value(self, t):
        t_cur, t_i = _restart_position(t, self.T_0, self.T_mult)
        cos = jnp.cos(div(math.pi * as_float(t_cur), t_i))
        return self.eta_min + unfused((self.lr - self.eta_min) * (1 + cos) / 2)


def cosine_annealing_warm_restarts(lr, T_0: int, T_mult: int = 1, eta_min: float = 0.0) -> Schedule:
    r"""torch.optim.lr_scheduler.CosineAnnealingWarmRestarts (SGDR), stepped once per call.

    torch's ``get_lr``: ``eta_min + (lr - eta_min) * (1 + cos(pi * T_cur / T_i)) / 2``, where
    ``T_cur`` counts steps since the last restart and the period ``T_i`` starts at ``T_0`` and
    is multiplied by ``T_mult`` at each restart. ``schedule(count)`` is torch's
    ``scheduler.step()`` called ``count`` times without an epoch argument (the fractional
    ``step(epoch + i / iters)`` idiom corresponds to calling ``schedule`` per iteration with
    a smaller ``T_0``: ``T_0 * iters``).

    Args:
      lr: the optimizer's initial learning rate.
      T_0: steps until the first restart, a positive int.
      T_mult: period multiplier after each restart, an int ``>= 1``, default ``1``.
      eta_min: minimum learning rate, default ``0.0``.

    Example::

        >>> from jaxupdate.lr_scheduler import cosine_annealing_warm_restarts
        >>> sched = cosine_annealing_warm_restarts(0.1, T_0=10, T_mult=2)
        >>> [round(float(sched(c)), 6) for c in (0, 5, 10, 20, 30)]
        [0.1, 0.05, 0.1, 0.05, 0.1]
    """
    return CosineAnnealingWarmRestarts(lr, T_0, T_mult, eta_min)

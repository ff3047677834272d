"""LambdaLR, MultiplicativeLR, StepLR, MultiStepLR, ConstantLR, LinearLR, ExponentialLR and
PolynomialLR.

Each follows torch's ``get_lr`` (the chainable form, which multiplies the group's current lr)
for :meth:`Schedule.step`, and a closed form for ``schedule(count)`` wherever that form equals
torch's recursive sequence to rounding (a few ulps per step; measured in the tests).
"""

from __future__ import annotations

import bisect
from collections import Counter
from typing import Callable

import jax.numpy as jnp

from jaxupdate._hparams import is_number
from jaxupdate.lr_scheduler._base import (
    HostFunction,
    Schedule,
    SelfSetting,
    as_count,
    as_float,
    check_base_lr,
    div,
    torch_scheduler,
)
from jaxupdate.numerics import unfused


def _one_lambda(lr_lambda):
    """torch accepts a function or a list/tuple with one function per parameter group."""
    if isinstance(lr_lambda, (list, tuple)):
        if len(lr_lambda) != 1:
            raise ValueError(f"Expected 1 lr_lambdas, but got {len(lr_lambda)}")
        return lr_lambda[0]
    return lr_lambda


def _is_int(x) -> bool:
    return is_number(x) and float(x).is_integer()


class _Factor(Schedule):
    """A scheduler whose step multiplies the group's lr by a factor that does not depend on it."""

    def _closed(self, t):
        f = self._factor(t)
        return None if f is None else self.lr * f


@torch_scheduler
class LambdaLR(SelfSetting):
    @classmethod
    def from_torch(cls, s, g: int, group: dict, *, base, probe: int = 0, convert=None):
        """Converts a torch ``LambdaLR``: see :meth:`Schedule.from_torch`."""
        return cls(base, s.lr_lambdas[g], probe)

    def __init__(self, lr, lr_lambda, probe: int = 0):
        self.lr = check_base_lr(lr)
        self.lr_lambda = _one_lambda(lr_lambda)
        if not callable(self.lr_lambda):
            # torch calls it in the constructor's initial step
            raise TypeError(f"'{type(self.lr_lambda).__name__}' object is not callable")
        # probe: the first count torch calls it with (last_epoch of a resumed scheduler)
        self._fn = HostFunction(self.lr_lambda, "lr_lambda", probe)
        self._repr_args = {"lr": lr, "lr_lambda": lr_lambda}

    def _value(self, t):
        # torch: base_lr * lmbda(last_epoch), one product of two Python floats
        return self.lr * self._fn(t)


def lambda_lr(lr, lr_lambda: Callable) -> Schedule:
    r"""torch.optim.lr_scheduler.LambdaLR: ``lr * lr_lambda(count)``.

    torch's ``get_lr``: ``base_lr * lr_lambda(last_epoch)``, recomputed from the initial lr at
    every step (an lr set by hand lasts until the next step).

    Args:
      lr: the optimizer's initial learning rate (torch's ``optimizer`` argument).
      lr_lambda: a function of the step count returning a factor. Written with arithmetic or
        ``jax.numpy`` (``lambda e: 0.95 ** e``, ``jnp.where(e < 10, ...)``) it runs inside
        the compiled step; plain Python that needs an int (``if``, ``max``, ``float``,
        ``math.cos``: Hugging Face's ``get_linear_schedule_with_warmup`` and
        ``get_cosine_schedule_with_warmup`` lambdas) runs on the host with a Python int, as
        in torch, under ``jit`` too (``jax.pure_callback``, one call per evaluation; see
        :class:`jaxupdate.lr_scheduler._base.HostFunction`). A function that works in
        neither way is refused here. A list or tuple of one function is accepted, as
        torch's one-per-group form.

    Example::

        >>> import jaxupdate as ju
        >>> from jaxupdate.lr_scheduler import lambda_lr
        >>> sched = lambda_lr(0.1, lr_lambda=lambda epoch: 0.95 ** epoch)
        >>> round(float(sched(2)), 6)   # 0.1 * 0.95 ** 2
        0.09025
        >>> tx = ju.sgd(lr=sched, momentum=0.9)
    """
    return LambdaLR(lr, lr_lambda)


@torch_scheduler
class MultiplicativeLR(Schedule):
    @classmethod
    def from_torch(cls, s, g: int, group: dict, *, base, probe: int = 0, convert=None):
        """Converts a torch ``MultiplicativeLR``: see :meth:`Schedule.from_torch`."""
        # its first call is at last_epoch >= 1 (the constructor does not call it)
        return cls(base, s.lr_lambdas[g], max(probe, 1))

    def __init__(self, lr, lr_lambda, probe: int = 1):
        self.lr = check_base_lr(lr)
        self.lr_lambda = _one_lambda(lr_lambda)
        if not callable(self.lr_lambda):
            raise TypeError(
                f"lr_lambda should be a function, but got {type(self.lr_lambda).__name__}"
            )
        # torch's get_lr calls it from last_epoch 1 on (not at construction)
        self._fn = HostFunction(self.lr_lambda, "lr_lambda", probe)
        self._repr_args = {"lr": lr, "lr_lambda": lr_lambda}

    def _next(self, lr, t):
        return lr * self._fn(t)

    def _restart(self, lr):
        # no closed form in torch: get_lr at last_epoch 0 multiplies the current lr
        return lr * self._fn(as_count(0))

    def _segment(self, t):
        return None


def multiplicative_lr(lr, lr_lambda: Callable) -> Schedule:
    r"""torch.optim.lr_scheduler.MultiplicativeLR: the lr is multiplied by ``lr_lambda(count)``.

    torch's ``get_lr``: ``group_lr * lr_lambda(last_epoch)`` at each step (not at
    construction), so ``schedule(count) = lr * prod(lr_lambda(k) for k in 1..count)``. There
    is no closed form for an arbitrary function: ``schedule(count)`` runs the product with
    ``lax.fori_loop`` (``count`` iterations); an optimizer wrapped in
    :func:`inject_hyperparams` applies one factor per update instead.

    Args:
      lr: the optimizer's initial learning rate.
      lr_lambda: a function of the step count returning the factor, in ``jax.numpy`` or in
        plain Python (run on the host, as for :func:`lambda_lr`); a list or tuple of one
        function is accepted.

    Example::

        >>> from jaxupdate.lr_scheduler import multiplicative_lr
        >>> sched = multiplicative_lr(0.1, lr_lambda=lambda epoch: 0.95)
        >>> round(float(sched(2)), 6)   # 0.1 * 0.95 * 0.95
        0.09025
    """
    return MultiplicativeLR(lr, lr_lambda)


@torch_scheduler
class StepLR(_Factor):
    @classmethod
    def from_torch(cls, s, g: int, group: dict, *, base, probe: int = 0, convert=None):
        """Converts a torch ``StepLR``: see :meth:`Schedule.from_torch`."""
        return step_lr(base, s.step_size, s.gamma)

    def __init__(self, lr, step_size, gamma):
        self.lr = check_base_lr(lr)
        if step_size == 0:
            # torch raises this at the first scheduler.step() (``last_epoch % step_size``)
            raise ZeroDivisionError("integer modulo by zero")
        self.step_size = step_size
        self.gamma = gamma
        self._repr_args = {"lr": lr, "step_size": step_size, "gamma": gamma}

    def _next(self, lr, t):
        return jnp.where(t % self.step_size == 0, lr * self.gamma, lr)

    def _restart(self, lr):
        return self.lr * self.gamma**0

    def _factor(self, t):
        if not _is_int(self.step_size):
            return None
        return self.gamma ** (t // abs(int(self.step_size)))


def step_lr(lr, step_size: int, gamma: float = 0.1) -> Schedule:
    r"""torch.optim.lr_scheduler.StepLR: multiply the lr by ``gamma`` every ``step_size`` steps.

    torch's ``get_lr``: ``group_lr * gamma`` when ``last_epoch % step_size == 0`` (and
    ``last_epoch > 0``), else unchanged; ``schedule(count) = lr * gamma ** (count //
    step_size)``.

    Args:
      lr: the optimizer's initial learning rate.
      step_size: period of the decay, in scheduler steps (use :func:`per_epoch` for epochs).
      gamma: multiplicative factor, default ``0.1``.

    Example::

        >>> from jaxupdate.lr_scheduler import step_lr
        >>> sched = step_lr(0.05, step_size=30, gamma=0.1)   # 0.05 for 0..29, 0.005 for 30..59
        >>> round(float(sched(30)), 6)
        0.005
    """
    return StepLR(lr, step_size, gamma)


@torch_scheduler
class MultiStepLR(_Factor):
    @classmethod
    def from_torch(cls, s, g: int, group: dict, *, base, probe: int = 0, convert=None):
        """Converts a torch ``MultiStepLR``: see :meth:`Schedule.from_torch`."""
        return multi_step_lr(base, sorted(s.milestones.elements()), s.gamma)

    def __init__(self, lr, milestones, gamma):
        self.lr = check_base_lr(lr)
        counts = Counter(milestones)
        self.milestones = sorted(counts.elements())
        self.gamma = gamma
        # milestones the chainable step can meet (last_epoch >= 0 is an int)
        self._hit = jnp.asarray(
            [int(m) for m in self.milestones if _is_int(m) and m >= 0] or [-1], jnp.int32
        )
        self._repr_args = {"lr": lr, "milestones": list(milestones), "gamma": gamma}

    def _hits(self, t):
        return jnp.sum(self._hit == t)

    def _first(self, lr):
        # torch's get_lr does not skip the construction step: a milestone at 0 applies
        return self._next(lr, as_count(0))

    def _next(self, lr, t):
        n = self._hits(t)
        return jnp.where(n > 0, lr * self.gamma**n, lr)

    def _restart(self, lr):
        return self.lr * self.gamma ** bisect.bisect_right(self.milestones, 0)

    def _factor(self, t):
        return self.gamma ** jnp.sum((self._hit >= 0) & (self._hit <= t))

    def _segment(self, t):
        before = bisect.bisect_right(self.milestones, 0)
        later = jnp.sum((self._hit >= 1) & (self._hit <= t))
        return self.lr * self.gamma ** (before + later)


def multi_step_lr(lr, milestones, gamma: float = 0.1) -> Schedule:
    r"""torch.optim.lr_scheduler.MultiStepLR: multiply the lr by ``gamma`` at each milestone.

    torch's ``get_lr``: ``group_lr * gamma ** milestones.count(last_epoch)`` (a milestone
    listed twice decays twice); ``schedule(count) = lr * gamma ** (number of milestones in
    [0, count])``.

    Args:
      lr: the optimizer's initial learning rate.
      milestones: increasing step indices (an iterable of ints).
      gamma: multiplicative factor, default ``0.1``.

    Example::

        >>> from jaxupdate.lr_scheduler import multi_step_lr
        >>> sched = multi_step_lr(0.05, milestones=[30, 80], gamma=0.1)
        >>> [round(float(sched(c)), 6) for c in (29, 30, 80)]
        [0.05, 0.005, 0.0005]
    """
    return MultiStepLR(lr, milestones, gamma)


@torch_scheduler
class ConstantLR(_Factor):
    @classmethod
    def from_torch(cls, s, g: int, group: dict, *, base, probe: int = 0, convert=None):
        """Converts a torch ``ConstantLR``: see :meth:`Schedule.from_torch`."""
        return constant_lr(base, s.factor, s.total_iters)

    def __init__(self, lr, factor, total_iters):
        if factor > 1.0 or factor < 0:
            raise ValueError("Constant multiplicative factor expected to be between 0 and 1.")
        self.lr = check_base_lr(lr)
        if factor == 0 and _is_int(total_iters) and total_iters >= 1:
            # torch raises this when the scheduler reaches total_iters (``1.0 / factor``)
            raise ZeroDivisionError("float division by zero")
        self.factor = factor
        self.total_iters = total_iters
        self._repr_args = {"lr": lr, "factor": factor, "total_iters": total_iters}

    def _first(self, lr):
        return lr * self.factor

    def _next(self, lr, t):
        inv = 1.0 / self.factor if self.factor != 0 else 1.0
        return jnp.where(t == self.total_iters, lr * inv, lr)

    def _restart(self, lr):
        return self.lr * (self.factor + (0 >= self.total_iters) * (1 - self.factor))

    def _factor(self, t):
        if not _is_int(self.total_iters):
            return None
        if self.total_iters < 1:  # last_epoch never equals it after the construction step
            return as_float(self.factor) + 0 * t
        # torch: (lr * factor) * (1.0 / factor) once last_epoch reaches total_iters
        return jnp.where(t >= self.total_iters, self.factor * (1.0 / self.factor), self.factor)

    def _closed(self, t):
        f = self._factor(t)
        if f is None:
            return None
        if self.total_iters < 1:
            return self.lr * f
        return jnp.where(
            t >= self.total_iters,
            (self.lr * self.factor) * (1.0 / self.factor),
            self.lr * self.factor,
        )

    def _segment(self, t):
        if _is_int(self.total_iters) and self.total_iters < 1:
            return as_float(self._restart(None)) + 0 * t
        return self._closed(t)


def constant_lr(lr, factor: float = 1.0 / 3, total_iters: int = 5) -> Schedule:
    r"""torch.optim.lr_scheduler.ConstantLR: ``lr * factor`` until ``total_iters``, then ``lr``.

    torch's ``get_lr``: ``group_lr * factor`` at construction, ``group_lr * (1.0 / factor)``
    when ``last_epoch == total_iters``, unchanged otherwise (so with ``total_iters <= 0`` the
    lr stays at ``lr * factor``).

    Args:
      lr: the optimizer's initial learning rate.
      factor: in ``[0, 1]``, default ``1/3``.
      total_iters: number of steps at the reduced lr, default ``5``.

    Example::

        >>> from jaxupdate.lr_scheduler import constant_lr
        >>> sched = constant_lr(0.05, factor=0.5, total_iters=4)
        >>> [round(float(sched(c)), 6) for c in (0, 3, 4)]
        [0.025, 0.025, 0.05]
    """
    return ConstantLR(lr, factor, total_iters)


@torch_scheduler
class LinearLR(_Factor):
    @classmethod
    def from_torch(cls, s, g: int, group: dict, *, base, probe: int = 0, convert=None):
        """Converts a torch ``LinearLR``: see :meth:`Schedule.from_torch`."""
        return linear_lr(base, s.start_factor, s.end_factor, s.total_iters)

    def __init__(self, lr, start_factor, end_factor, total_iters):
        if start_factor > 1.0 or start_factor <= 0:
            raise ValueError(
                "Starting multiplicative factor expected to be greater than 0 and less or "
                "equal to 1."
            )
        if end_factor > 1.0 or end_factor < 0:
            raise ValueError("Ending multiplicative factor expected to be between 0 and 1.")
        self.lr = check_base_lr(lr)
        self.start_factor = start_factor
        self.end_factor = end_factor
        self.total_iters = total_iters
        self._repr_args = {
            "lr": lr,
            "start_factor": start_factor,
            "end_factor": end_factor,
            "total_iters": total_iters,
        }

    def _first(self, lr):
        return lr * self.start_factor

    def _next(self, lr, t):
        s, e, n = self.start_factor, self.end_factor, self.total_iters
        step = lr * (1.0 + (e - s) / (n * s + unfused((as_float(t) - 1) * (e - s))))
        return jnp.where(t > n, lr, step)

    def _restart(self, lr):
        s, e, n = self.start_factor, self.end_factor, self.total_iters
        return self.lr * (s + (e - s) * min(n, 0) / n)

    def _factor(self, t):
        s, e, n = self.start_factor, self.end_factor, self.total_iters
        if not _is_int(n):
            return None
        if n < 1:  # the chainable step leaves the lr at lr * start_factor
            return as_float(s) + 0 * t
        return s + div((e - s) * jnp.minimum(n, t), n)

    def _segment(self, t):
        if _is_int(self.total_iters) and self.total_iters < 0:
            return as_float(self._restart(None)) + 0 * t
        return self._closed(t)


def linear_lr(
    lr, start_factor: float = 1.0 / 3, end_factor: float = 1.0, total_iters: int = 5
) -> Schedule:
    r"""torch.optim.lr_scheduler.LinearLR: factor going linearly from start to end over total_iters.

    torch's ``get_lr`` (chainable)::

        last_epoch == 0:          group_lr * start_factor
        last_epoch > total_iters: group_lr
        otherwise:                group_lr * (1 + (end - start) /
                                      (total_iters * start + (last_epoch - 1) * (end - start)))

    which telescopes to ``lr * (start + (end - start) * min(count, total_iters) /
    total_iters)``, the closed form used by ``schedule(count)`` (equal to rounding).

    Args:
      lr: the optimizer's initial learning rate.
      start_factor: in ``(0, 1]``, default ``1/3``.
      end_factor: in ``[0, 1]``, default ``1.0``.
      total_iters: number of steps to reach ``end_factor``, default ``5``.

    Example::

        >>> from jaxupdate.lr_scheduler import linear_lr
        >>> sched = linear_lr(0.05, start_factor=0.5, total_iters=4)   # warm-up
        >>> [round(float(sched(c)), 6) for c in range(6)]
        [0.025, 0.03125, 0.0375, 0.04375, 0.05, 0.05]
    """
    return LinearLR(lr, start_factor, end_factor, total_iters)


@torch_scheduler
class ExponentialLR(_Factor):
    @classmethod
    def from_torch(cls, s, g: int, group: dict, *, base, probe: int = 0, convert=None):
        """Converts a torch ``ExponentialLR``: see :meth:`Schedule.from_torch`."""
        return exponential_lr(base, s.gamma)

    def __init__(self, lr, gamma):
        self.lr = check_base_lr(lr)
        self.gamma = gamma
        self._repr_args = {"lr": lr, "gamma": gamma}

    def _next(self, lr, t):
        return lr * self.gamma

    def _restart(self, lr):
        return self.lr * self.gamma**0

    def _factor(self, t):
        return self.gamma ** as_float(t)


def exponential_lr(lr, gamma: float) -> Schedule:
    r"""torch.optim.lr_scheduler.ExponentialLR: multiply the lr by ``gamma`` every step.

    torch's ``get_lr``: ``group_lr * gamma``; ``schedule(count) = lr * gamma ** count`` (the
    product of ``count`` factors and the power agree to a few ulps).

    Args:
      lr: the optimizer's initial learning rate.
      gamma: multiplicative factor (required, as in torch).

    Example::

        >>> from jaxupdate.lr_scheduler import exponential_lr
        >>> sched = exponential_lr(0.1, gamma=0.9)
        >>> round(float(sched(2)), 6)
        0.081
    """
    return ExponentialLR(lr, gamma)


@torch_scheduler
class PolynomialLR(_Factor):
    @classmethod
    def from_torch(cls, s, g: int, group: dict, *, base, probe: int = 0, convert=None):
        """Converts a torch ``PolynomialLR``: see :meth:`Schedule.from_torch`."""
        return polynomial_lr(base, s.total_iters, s.power)

    def __init__(self, lr, total_iters, power):
        self.lr = check_base_lr(lr)
        self.total_iters = total_iters
        self.power = power
        self._repr_args = {"lr": lr, "total_iters": total_iters, "power": power}

    def _next(self, lr, t):
        n, tf = self.total_iters, as_float(t)
        safe = jnp.where(t > n, 0.0, tf)  # keeps the untaken branch finite
        decay = ((1.0 - div(safe, n)) / (1.0 - div(safe - 1, n))) ** self.power
        return jnp.where(t > n, lr, lr * decay)

    def _restart(self, lr):
        n = self.total_iters
        return self.lr * (1.0 - min(n, 0) / n) ** self.power

    def _factor(self, t):
        n = self.total_iters
        if not _is_int(n):
            return None
        if n < 1:  # last_epoch > total_iters from the first step on: the lr stays
            return as_float(1.0) + 0 * t
        return (1.0 - div(jnp.minimum(n, as_float(t)), n)) ** self.power

    def _segment(self, t):
        if _is_int(self.total_iters) and self.total_iters < 0:
            return as_float(self._restart(None)) + 0 * t
        return self._closed(t)


def polynomial_lr(lr, total_iters: int = 5, power: float = 1.0) -> Schedule:
    r"""torch.optim.lr_scheduler.PolynomialLR: polynomial decay to 0 over ``total_iters`` steps.

    torch's ``get_lr`` (chainable)::

        last_epoch > total_iters: group_lr
        otherwise: group_lr * ((1 - last_epoch / total_iters)
                               / (1 - (last_epoch - 1) / total_iters)) ** power

    which telescopes to ``lr * (1 - min(count, total_iters) / total_iters) ** power``.

    Args:
      lr: the optimizer's initial learning rate.
      total_iters: number of decay steps, default ``5``.
      power: power of the polynomial, default ``1.0``.

    Example::

        >>> from jaxupdate.lr_scheduler import polynomial_lr
        >>> sched = polynomial_lr(0.05, total_iters=4, power=1.0)
        >>> [round(float(sched(c)), 6) for c in range(6)]
        [0.05, 0.0375, 0.025, 0.0125, 0.0, 0.0]
    """
    return PolynomialLR(lr, total_iters, power)

"""CyclicLR and OneCycleLR, with their momentum (or Adam beta1) cycling."""

from __future__ import annotations

import math
from typing import Callable, Optional

import jax
import jax.numpy as jnp

from jaxupdate.lr_scheduler._base import (
    FunctionSchedule,
    HostFunction,
    Schedule,
    SelfSetting,
    as_count,
    as_float,
    div,
    one_group,
    torch_scheduler,
)
from jaxupdate.numerics import unfused


@torch_scheduler
class CyclicLR(SelfSetting):
    @classmethod
    def from_torch(cls, s, g: int, group: dict, *, base, probe: int = 0, convert=None):
        """Converts a torch ``CyclicLR``: see :meth:`Schedule.from_torch`."""
        momentum = s.cycle_momentum
        up = s.total_size * s.step_ratio
        out = cyclic_lr(
            s.base_lrs[g],
            s.max_lrs[g],
            step_size_up=up,
            step_size_down=s.total_size - up,
            mode=s.mode,
            gamma=s.gamma,
            scale_fn=s._scale_fn_custom,
            scale_mode=s.scale_mode,
            cycle_momentum=momentum,
            base_momentum=s.base_momentums[g] if momentum else 0.8,
            max_momentum=s.max_momentums[g] if momentum else 0.9,
        )
        out.total_size, out.step_ratio = s.total_size, s.step_ratio
        return out

    def __init__(
        self,
        base_lr,
        max_lr,
        step_size_up,
        step_size_down,
        mode,
        gamma,
        scale_fn,
        scale_mode,
        cycle_momentum,
        base_momentum,
        max_momentum,
    ):
        self.base_lr = one_group(base_lr, "base_lr")
        self.max_lr = one_group(max_lr, "max_lr")
        up = float(step_size_up)
        down = float(step_size_down) if step_size_down is not None else up
        self.total_size = up + down
        self.step_ratio = up / self.total_size
        if mode not in ["triangular", "triangular2", "exp_range"] and scale_fn is None:
            raise ValueError("mode is invalid and scale_fn is None")
        self.mode, self.gamma = mode, gamma
        # a user's scale_fn may be plain Python (if, math): evaluated on the host if need be
        probe = 1 if scale_mode == "cycle" else 0  # torch's first cycle is 1
        self._scale_fn = None
        if scale_fn is not None:
            self._scale_fn = HostFunction(scale_fn, "scale_fn", probe)
        self.scale_mode = scale_mode
        if scale_fn is None:
            if mode == "triangular":
                self._scale_fn, self.scale_mode = (lambda x: 1.0), "cycle"
            elif mode == "triangular2":
                self._scale_fn, self.scale_mode = (lambda x: 1 / (2.0 ** (x - 1))), "cycle"
            else:
                self._scale_fn, self.scale_mode = (lambda x: gamma**x), "iterations"
        if cycle_momentum:
            self.base_momentum = one_group(base_momentum, "base_momentum")
            self.max_momentum = one_group(max_momentum, "max_momentum")
            self.momentum = FunctionSchedule(self._momentum, "CyclicLR momentum")
        if up == 0:
            # torch's constructor step divides x = 0 by step_ratio = 0
            raise ZeroDivisionError("float division by zero")
        self._repr_args = {
            "base_lr": base_lr,
            "max_lr": max_lr,
            "step_size_up": step_size_up,
            "step_size_down": step_size_down,
            "mode": mode,
            "gamma": gamma,
            "scale_mode": scale_mode,
            "cycle_momentum": cycle_momentum,
        }

    def _position(self, t):
        tf = as_float(t)
        cycle = jnp.floor(1 + div(tf, self.total_size))
        x = 1.0 + div(tf, self.total_size) - cycle
        up = div(x, self.step_ratio)
        down = div(x - 1, self.step_ratio - 1) if self.step_ratio != 1 else 0.0 * x
        scale_factor = jnp.where(x <= self.step_ratio, up, down)
        scale = self._scale_fn(cycle.astype(t.dtype) if self.scale_mode == "cycle" else t)
        return scale_factor, scale

    def _value(self, t):
        scale_factor, scale = self._position(t)
        base_height = (self.max_lr - self.base_lr) * scale_factor
        return self.base_lr + unfused(base_height * scale)

    def _momentum(self, t):
        scale_factor, scale = self._position(as_count(t))
        base_height = (self.max_momentum - self.base_momentum) * scale_factor
        return self.max_momentum - unfused(base_height * scale)


def cyclic_lr(
    base_lr,
    max_lr,
    step_size_up: int = 2000,
    step_size_down: Optional[int] = None,
    mode: str = "triangular",
    gamma: float = 1.0,
    scale_fn: Optional[Callable] = None,
    scale_mode: str = "cycle",
    cycle_momentum: bool = True,
    base_momentum: float = 0.8,
    max_momentum: float = 0.9,
) -> Schedule:
    r"""torch.optim.lr_scheduler.CyclicLR, with its momentum schedule as ``.momentum``.

    torch's ``get_lr`` at ``t = last_epoch`` (computed from its arguments, not chained)::

        cycle = floor(1 + t / (up + down));  x = 1 + t / (up + down) - cycle
        s = x / ratio if x <= ratio else (x - 1) / (ratio - 1)       # ratio = up / (up + down)
        lr = base_lr + (max_lr - base_lr) * s * scale_fn(cycle or t)
        momentum = max_momentum - (max_momentum - base_momentum) * s * scale_fn(cycle or t)

    ``scale_fn`` is ``1`` (triangular), ``1 / 2 ** (cycle - 1)`` (triangular2) or
    ``gamma ** t`` (exp_range, ``scale_mode="iterations"``), or a custom function (written with
    ``jax.numpy``; it receives ``cycle`` or ``t`` as an integer array). torch steps CyclicLR
    after every batch: pass the schedule as it is.

    With ``cycle_momentum=True`` (torch's default) torch also cycles the optimizer's
    ``momentum`` (or Adam's ``betas[0]``) between ``max_momentum`` and ``base_momentum``;
    here that is ``schedule.momentum``, passed by the user to the optimizer::

        # torch
        opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        sched = CyclicLR(opt, base_lr=0.01, max_lr=0.1, step_size_up=4)
        # jaxupdate
        sched = cyclic_lr(base_lr=0.01, max_lr=0.1, step_size_up=4)
        tx = ju.sgd(lr=sched, momentum=sched.momentum)
        tx = ju.adam(lr=sched, betas=(sched.momentum, 0.999))   # Adam-family: beta1

    Args (torch's, without ``optimizer`` and ``last_epoch``): ``base_lr``, ``max_lr``
    (numbers, or a one-element list), ``step_size_up=2000``, ``step_size_down=None`` (=
    ``step_size_up``), ``mode="triangular"``, ``gamma=1.0``, ``scale_fn=None``,
    ``scale_mode="cycle"``, ``cycle_momentum=True``, ``base_momentum=0.8``,
    ``max_momentum=0.9``.

    Example::

        >>> from jaxupdate.lr_scheduler import cyclic_lr
        >>> sched = cyclic_lr(0.01, 0.1, step_size_up=4)
        >>> [round(float(sched(c)), 6) for c in (0, 2, 4, 6, 8)]
        [0.01, 0.055, 0.1, 0.055, 0.01]
        >>> [round(float(sched.momentum(c)), 6) for c in (0, 4)]
        [0.9, 0.8]
    """
    return CyclicLR(
        base_lr,
        max_lr,
        step_size_up,
        step_size_down,
        mode,
        gamma,
        scale_fn,
        scale_mode,
        cycle_momentum,
        base_momentum,
        max_momentum,
    )


@torch_scheduler
class OneCycleLR(SelfSetting):
    @classmethod
    def from_torch(cls, s, g: int, group: dict, *, base, probe: int = 0, convert=None):
        """Converts a torch ``OneCycleLR``: see :meth:`Schedule.from_torch`."""
        phases = s._schedule_phases
        n = s.total_steps
        pct = min(max((phases[0]["end_step"] + 1) / n, 0.0), 1.0)
        momentum = getattr(s, "cycle_momentum", False)
        out = one_cycle_lr(
            group["max_lr"],
            total_steps=n,
            pct_start=float(pct),
            anneal_strategy=getattr(s, "_anneal_func_type", "cos"),
            cycle_momentum=momentum,
            base_momentum=group.get("base_momentum", 0.85),
            max_momentum=group.get("max_momentum", 0.95),
            div_factor=group["max_lr"] / group["initial_lr"],
            final_div_factor=group["initial_lr"] / group["min_lr"],
            three_phase=len(phases) == 3,
        )
        # torch's own numbers, not values recomputed from recovered arguments
        out.phases = [
            (p["end_step"], p["start_lr"], p["end_lr"], p["start_momentum"], p["end_momentum"])
            for p in phases
        ]
        out.values = {k: group[k] for k in ("max_lr", "initial_lr", "min_lr")}
        if momentum:
            out.values.update(max_momentum=group["max_momentum"],
                              base_momentum=group["base_momentum"])
        return out

    def __init__(
        self,
        max_lr,
        total_steps,
        epochs,
        steps_per_epoch,
        pct_start,
        anneal_strategy,
        cycle_momentum,
        base_momentum,
        max_momentum,
        div_factor,
        final_div_factor,
        three_phase,
    ):
        if total_steps is not None:
            if total_steps <= 0 or not isinstance(total_steps, int):
                raise ValueError(f"Expected positive integer total_steps, but got {total_steps}")
            self.total_steps = total_steps
        elif epochs is not None and steps_per_epoch is not None:
            if not isinstance(epochs, int) or epochs <= 0:
                raise ValueError(f"Expected positive integer epochs, but got {epochs}")
            if not isinstance(steps_per_epoch, int) or steps_per_epoch <= 0:
                raise ValueError(
                    f"Expected positive integer steps_per_epoch, but got {steps_per_epoch}"
                )
            self.total_steps = epochs * steps_per_epoch
        else:
            raise ValueError("You must define either total_steps OR (epochs AND steps_per_epoch)")
        n = self.total_steps
        if three_phase:
            self.phases = [
                (float(pct_start * n) - 1, "initial_lr", "max_lr", "max_momentum", "base_momentum"),
                (
                    float(2 * pct_start * n) - 2,
                    "max_lr",
                    "initial_lr",
                    "base_momentum",
                    "max_momentum",
                ),
                (n - 1, "initial_lr", "min_lr", "max_momentum", "max_momentum"),
            ]
        else:
            self.phases = [
                (float(pct_start * n) - 1, "initial_lr", "max_lr", "max_momentum", "base_momentum"),
                (n - 1, "max_lr", "min_lr", "base_momentum", "max_momentum"),
            ]
        if pct_start < 0 or pct_start > 1 or not isinstance(pct_start, float):
            raise ValueError(f"Expected float between 0 and 1 pct_start, but got {pct_start}")
        if anneal_strategy not in ["cos", "linear"]:
            raise ValueError(
                f"anneal_strategy must be one of 'cos' or 'linear', instead got {anneal_strategy}"
            )
        self.anneal_strategy = anneal_strategy
        max_lr = one_group(max_lr, "max_lr")
        self.values = {"max_lr": max_lr, "initial_lr": max_lr / div_factor}
        self.values["min_lr"] = self.values["initial_lr"] / final_div_factor
        if cycle_momentum:
            self.values["max_momentum"] = one_group(max_momentum, "max_momentum")
            self.values["base_momentum"] = one_group(base_momentum, "base_momentum")
            self.momentum = FunctionSchedule(self._momentum, "OneCycleLR momentum")
        self._check_phase_widths()
        self._repr_args = {
            "max_lr": max_lr,
            "total_steps": self.total_steps,
            "pct_start": pct_start,
            "anneal_strategy": anneal_strategy,
            "cycle_momentum": cycle_momentum,
            "div_factor": div_factor,
            "final_div_factor": final_div_factor,
            "three_phase": three_phase,
        }

    def _check_phase_widths(self):
        """torch divides by a phase's width when a step lands in it: a zero width raises then."""
        start, earlier_ends = 0.0, []
        for i, (end, *_) in enumerate(self.phases):
            last = i == len(self.phases) - 1
            # the first integer step that no earlier phase takes
            first_t = 0 if not earlier_ends else max(0, math.floor(max(earlier_ends)) + 1)
            reachable = first_t <= self.total_steps and (last or first_t <= end)
            if reachable and end - start == 0:
                raise ZeroDivisionError("float division by zero")
            earlier_ends.append(end)
            start = end

    def _anneal(self, start, end, pct):
        if self.anneal_strategy == "cos":
            cos_out = jnp.cos(math.pi * pct) + 1
            return end + unfused((start - end) / 2.0 * cos_out)
        return unfused((end - start) * pct) + start

    def _phased(self, t, start_key: int, end_key: int):
        tf = as_float(t)
        start = 0.0
        pieces = []
        for end, *keys in self.phases:
            width = end - start
            pct = div(tf - start, width if width != 0 else 1.0)
            first, last = self.values[keys[start_key]], self.values[keys[end_key]]
            pieces.append((end, self._anneal(first, last, pct)))
            start = end
        out = pieces[-1][1]
        for end, value in reversed(pieces[:-1]):
            out = jnp.where(tf <= end, value, out)
        # torch raises ValueError past total_steps; under jit the schedule gives NaN there
        return jnp.where(t > self.total_steps, jnp.nan, out)

    def _check_count(self, count):
        try:
            step = int(count)
        except (TypeError, jax.errors.ConcretizationTypeError):
            return  # traced: the value past total_steps is NaN instead
        if step > self.total_steps:
            raise ValueError(
                f"Tried to step {step} times. The specified number of total steps is "
                f"{self.total_steps}"
            )

    def __call__(self, count):
        self._check_count(count)
        return super().__call__(count)

    def step(self, lr, count):
        self._check_count(count)
        return super().step(lr, count)

    def _value(self, t):
        return self._phased(t, 0, 1)

    def _momentum(self, t):
        self._check_count(t)
        return self._phased(as_count(t), 2, 3)


def one_cycle_lr(
    max_lr,
    total_steps: Optional[int] = None,
    epochs: Optional[int] = None,
    steps_per_epoch: Optional[int] = None,
    pct_start: float = 0.3,
    anneal_strategy: str = "cos",
    cycle_momentum: bool = True,
    base_momentum: float = 0.85,
    max_momentum: float = 0.95,
    div_factor: float = 25.0,
    final_div_factor: float = 1e4,
    three_phase: bool = False,
) -> Schedule:
    r"""torch.optim.lr_scheduler.OneCycleLR, with its momentum schedule as ``.momentum``.

    torch's phases (``T = total_steps``, ``p = pct_start``; ``initial = max_lr / div_factor``,
    ``min = initial / final_div_factor``)::

        two phases:   [0, p T - 1]        initial -> max_lr     momentum max -> base
                      (p T - 1, T - 1]    max_lr -> min         momentum base -> max
        three_phase:  [0, p T - 1]        initial -> max_lr
                      (p T - 1, 2 p T - 2] max_lr -> initial
                      (2 p T - 2, T - 1]  initial -> min

    within a phase ``pct = (t - phase_start) / (phase_end - phase_start)`` and the value is
    ``end + (start - end) / 2 * (1 + cos(pi pct))`` (``anneal_strategy="cos"``) or
    ``(end - start) * pct + start`` ("linear"). torch allows ``count <= total_steps`` and
    raises ``ValueError`` beyond: so does ``schedule(count)`` for a concrete count, while
    under ``jit`` the value past ``total_steps`` is NaN.

    With ``cycle_momentum=True`` (torch's default) ``schedule.momentum`` is the momentum (or
    Adam beta1) schedule torch writes into the optimizer::

        # torch
        opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        sched = OneCycleLR(opt, max_lr=0.1, total_steps=1000)
        # jaxupdate
        sched = one_cycle_lr(max_lr=0.1, total_steps=1000)
        tx = ju.sgd(lr=sched, momentum=sched.momentum)
        tx = ju.adamw(lr=sched, betas=(sched.momentum, 0.999))

    Args (torch's, without ``optimizer`` and ``last_epoch``): ``max_lr`` (a number or a
    one-element list), ``total_steps=None`` or ``epochs`` and ``steps_per_epoch``,
    ``pct_start=0.3``, ``anneal_strategy="cos"``, ``cycle_momentum=True``,
    ``base_momentum=0.85``, ``max_momentum=0.95``, ``div_factor=25.0``,
    ``final_div_factor=1e4``, ``three_phase=False``.

    Example::

        >>> from jaxupdate.lr_scheduler import one_cycle_lr
        >>> sched = one_cycle_lr(max_lr=0.1, total_steps=100)
        >>> [round(float(sched(c)), 6) for c in (0, 29)]
        [0.004, 0.1]
    """
    return OneCycleLR(
        max_lr,
        total_steps,
        epochs,
        steps_per_epoch,
        pct_start,
        anneal_strategy,
        cycle_momentum,
        base_momentum,
        max_momentum,
        div_factor,
        final_div_factor,
        three_phase,
    )

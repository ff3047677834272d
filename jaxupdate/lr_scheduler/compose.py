"""SequentialLR and ChainedScheduler: schedules built from schedules of the same optimizer lr."""

from __future__ import annotations

from typing import Optional, Sequence

import jax.numpy as jnp
from jax import lax

from jaxupdate.lr_scheduler._base import (
    FunctionSchedule,
    PerEpoch,
    Schedule,
    as_count,
    as_float,
    check_base_lr,
    same_value,
    torch_scheduler,
)
from jaxupdate.lr_scheduler.cyclic import OneCycleLR
from jaxupdate.lr_scheduler.plateau import ReduceLROnPlateau


def _check_members(cls_name: str, schedulers, lr):
    """torch's checks: schedulers, no ReduceLROnPlateau, all of the same optimizer (same lr)."""
    for idx, s in enumerate(schedulers):
        if not isinstance(s, (Schedule, ReduceLROnPlateau)):
            raise TypeError(f"{cls_name} at index {idx} should have `optimizer` as its attribute.")
        if isinstance(s, ReduceLROnPlateau):
            raise ValueError(
                f"{cls_name} does not support `ReduceLROnPlateau` scheduler as it "
                "requires additional kwargs to be specified when calling `step`, "
                f"but got one at index {idx} in the given schedulers sequence."
            )
        if not same_value(s.lr, lr):
            raise ValueError(
                f"{cls_name} expects all schedulers to belong to the same optimizer, but "
                f"got scheduler {s.torch_name} at index {idx} has lr={s.lr!r}, "
                f"which is different from lr={lr!r}. (jaxupdate: build every inner schedule "
                "from the optimizer's initial lr)"
            )


def _unwrap(s):
    while isinstance(s, PerEpoch):
        s = s.inner
    return s


def _is_composite(s) -> bool:
    return isinstance(_unwrap(s), (SequentialLR, ChainedScheduler))


@torch_scheduler
class SequentialLR(Schedule):
    @classmethod
    def from_torch(cls, s, g: int, group: dict, *, base, probe: int = 0, convert=None):
        """Converts a torch ``SequentialLR``: see :meth:`Schedule.from_torch`."""
        initial = group.get("initial_lr", base)
        return sequential_lr(
            initial, [convert(c, g, group) for c in s._schedulers], list(s._milestones)
        )

    def __init__(self, lr, schedulers, milestones):
        schedulers = list(schedulers)
        if len(schedulers) < 1:
            raise ValueError("SequentialLR expects at least one scheduler, but got no scheduler.")
        self.lr = check_base_lr(lr)
        _check_members("SequentialLR", schedulers, self.lr)
        milestones = list(milestones)
        if len(milestones) != len(schedulers) - 1:
            raise ValueError(
                "Sequential Schedulers expects number of schedulers provided to be one more "
                f"than the number of milestone points, but got number of schedulers "
                f"{len(schedulers)} and the number of milestones to be equal to {len(milestones)}"
            )
        for idx, s in enumerate(schedulers[1:], 1):
            if _is_composite(s):
                raise NotImplementedError(
                    f"SequentialLR cannot start the {s.torch_name} at index {idx} at its "
                    "milestone: torch calls its `_update_lr(0)`, which raises "
                    "NotImplementedError when the milestone is reached"
                )
        self.schedulers = schedulers
        self.milestones = milestones
        self._ms = jnp.asarray(milestones or [0], jnp.int32)
        # torch resets the group to group["initial_lr"], which OneCycleLR's constructor
        # overwrites with max_lr / div_factor
        one_cycles = [_unwrap(s) for s in schedulers if isinstance(_unwrap(s), OneCycleLR)]
        self.reset_lr = one_cycles[-1].values["initial_lr"] if one_cycles else self.lr
        if any(s.momentum is not None for s in schedulers):
            self.momentum = FunctionSchedule(self._momentum, "SequentialLR momentum")
        self._repr_args = {"lr": lr, "schedulers": schedulers, "milestones": milestones}

    def _index(self, t):
        if not self.milestones:
            return jnp.zeros((), jnp.int32)
        return jnp.searchsorted(self._ms, t, side="right").astype(jnp.int32)

    def _start(self, i):
        return 0 if i == 0 else self.milestones[i - 1]

    def _first(self, lr):
        # torch resets the group to its initial lr, then re-runs the first scheduler's initial step
        return self.schedulers[0]._first(as_float(self.reset_lr))

    def _next(self, lr, t):
        def branch(i):
            def run(lr, t):
                s = self.schedulers[i]
                local = t - self._start(i)
                stepped = as_float(s._next(lr, jnp.maximum(local, 1)))
                if i == 0:
                    return stepped
                # at its milestone torch calls the scheduler's _update_lr(0) (closed form at 0)
                return jnp.where(local == 0, as_float(s._restart(lr)), stepped)

            return run

        branches = [branch(i) for i in range(len(self.schedulers))]
        if len(branches) == 1:
            return branches[0](lr, t)
        return lax.switch(self._index(t), branches, as_float(lr), t)

    def _closed(self, t):
        first = self.schedulers[0]
        if self.reset_lr is self.lr or _unwrap(first).absolute:
            segments = [lambda t: as_float(first(t))]
        elif first._factor(as_count(0)) is not None:
            segments = [lambda t: as_float(self.reset_lr * first._factor(t))]
        else:
            return None
        for i, s in enumerate(self.schedulers[1:], 1):
            probe = s._segment(as_count(0))
            if probe is None:
                return None  # depends on the lr reached before the milestone: iterate
            segments.append(
                lambda t, s=s, i=i: as_float(s._segment(jnp.maximum(t - self._start(i), 0)))
            )
        if len(segments) == 1:
            return segments[0](t)
        return lax.switch(self._index(t), segments, t)

    def _momentum(self, t):
        """The group's momentum: set by the cycling scheduler of the segment, else kept."""
        scheds = self.schedulers
        cycling = [i for i, s in enumerate(scheds) if s.momentum is not None]
        # before any cycling scheduler has run, the last one constructed set it (its step 0)
        carried = as_float(scheds[cycling[-1]].momentum(0))
        values = []
        for i, s in enumerate(scheds):
            local = jnp.maximum(t - self._start(i), 0)
            if s.momentum is not None:
                values.append(as_float(s.momentum(local)))
                if i + 1 < len(scheds):
                    last_local = max(self.milestones[i] - self._start(i) - 1, 0)
                    carried = as_float(s.momentum(last_local))
            else:
                values.append(carried)
        out = values[-1]
        for i in reversed(range(len(values) - 1)):
            out = jnp.where(self._index(t) == i, values[i], out)
        return out


def sequential_lr(lr, schedulers: Sequence[Schedule], milestones: Sequence[int]) -> Schedule:
    r"""torch.optim.lr_scheduler.SequentialLR: one schedule after another, switching at milestones.

    torch's semantics: before the first milestone the first scheduler runs as if alone; at
    milestone ``m_i`` the next scheduler is restarted with its closed form at epoch 0
    (``_update_lr(0)``) and then stepped with ``last_epoch = count - m_i``. So every segment
    starts afresh from the optimizer's initial lr (MultiplicativeLR continues from the lr
    reached, as in torch).

    ``lr`` is torch's ``group["initial_lr"]``: the optimizer's lr, or, if a CyclicLR was the
    first scheduler constructed on the optimizer, its ``base_lr`` (torch sets the group's lr to
    it before the other schedulers read it). The reset at construction uses the
    ``max_lr / div_factor`` of an inner ``one_cycle_lr``, which overwrites torch's
    ``initial_lr`` the same way.

    The inner schedules are built from the same initial lr, as torch's are built on the same
    optimizer::

        # torch
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        warmup = LinearLR(opt, start_factor=0.1, total_iters=5)
        decay = CosineAnnealingLR(opt, T_max=95)
        sched = SequentialLR(opt, schedulers=[warmup, decay], milestones=[5])
        # jaxupdate
        lr = 0.1
        warmup = linear_lr(lr, start_factor=0.1, total_iters=5)
        decay = cosine_annealing_lr(lr, T_max=95)
        sched = sequential_lr(lr, schedulers=[warmup, decay], milestones=[5])
        tx = ju.sgd(lr=sched)

    Args:
      lr: the optimizer's initial learning rate (torch's ``optimizer``); every inner schedule
        must have been built from it.
      schedulers: the schedules, in order (not ``reduce_lr_on_plateau``).
      milestones: sorted step counts at which the next schedule starts; one fewer than
        ``schedulers``.

    If an inner schedule cycles momentum (CyclicLR / OneCycleLR), ``.momentum`` gives the
    momentum torch's group holds: the cycling scheduler's within its segment, kept elsewhere.

    Example::

        >>> from jaxupdate.lr_scheduler import constant_lr, exponential_lr, sequential_lr
        >>> lr = 0.05
        >>> sched = sequential_lr(lr, [constant_lr(lr, factor=0.1, total_iters=2),
        ...                            exponential_lr(lr, gamma=0.9)], milestones=[2])
        >>> [round(float(sched(c)), 6) for c in range(5)]
        [0.005, 0.005, 0.05, 0.045, 0.0405]
    """
    return SequentialLR(lr, schedulers, milestones)


@torch_scheduler
class ChainedScheduler(Schedule):
    @classmethod
    def from_torch(cls, s, g: int, group: dict, *, base, probe: int = 0, convert=None):
        """Converts a torch ``ChainedScheduler``: see :meth:`Schedule.from_torch`."""
        return chained_scheduler([convert(c, g, group) for c in s._schedulers])

    def __init__(self, schedulers, lr):
        schedulers = list(schedulers)
        if len(schedulers) < 1:
            raise ValueError(
                "ChainedScheduler expects at least one scheduler to be chained, but got no "
                "scheduler."
            )
        if lr is None:
            s0 = schedulers[0]
            if not isinstance(s0, (Schedule, ReduceLROnPlateau)):
                raise AttributeError(f"'{type(s0).__name__}' object has no attribute 'optimizer'")
            lr = next((s.lr for s in schedulers if getattr(s, "lr", None) is not None), None)
        else:
            lr = check_base_lr(lr)
        _check_members("ChainedScheduler", schedulers, lr)
        self.lr = lr
        self.schedulers = schedulers
        cycling = [s for s in schedulers if s.momentum is not None]
        if cycling:
            self.momentum = cycling[-1].momentum  # each step, the last one writes it
        self._repr_args = {"schedulers": schedulers, "lr": lr}

    def _first(self, lr):
        # torch: each scheduler's constructor stepped the group in turn
        for s in self.schedulers:
            lr = as_float(s._first(lr))
        return lr

    def _next(self, lr, t):
        for s in self.schedulers:
            lr = as_float(s._next(lr, t))
        return lr

    def _closed(self, t):
        scheds = self.schedulers
        last_abs = max((i for i, s in enumerate(scheds) if s.absolute), default=None)
        if last_abs is not None:
            # the last scheduler that ignores the group's lr resets the chain at every step
            first = as_float(scheds[last_abs](0))
            later = as_float(scheds[last_abs](t))
            t1 = jnp.maximum(t, 1)
            for s in scheds[last_abs + 1 :]:
                first = as_float(s._first(first))
                later = as_float(s._next(later, t1))
            return jnp.where(t == 0, first, later)
        factors = [s._factor(t) for s in scheds]
        if self.lr is None or any(f is None for f in factors):
            return None  # e.g. cosine (affine in the lr) or MultiplicativeLR: iterate
        out = as_float(self.lr)
        for f in factors:
            out = out * f
        return out


def chained_scheduler(schedulers: Sequence[Schedule], lr: Optional[float] = None) -> Schedule:
    r"""torch.optim.lr_scheduler.ChainedScheduler: every schedule stepped, in order, each step.

    torch's semantics: the schedulers were all constructed on the same optimizer (each
    constructor stepped the group's lr in turn) and ``step()`` calls each one's ``step()``
    in order, each acting on the lr the previous one left: the recursive (chainable) form of
    every scheduler, composed. ``schedule(count)`` uses a closed form when the chain allows it
    (products of multiplicative schedulers, or a chain after a scheduler that sets the lr
    itself) and iterates torch's recursion otherwise (e.g. cosine annealing followed by
    anything).

    The inner schedules are built from the same initial lr::

        # torch
        opt = torch.optim.SGD(model.parameters(), lr=1.0)
        sched = ChainedScheduler([ConstantLR(opt, factor=0.1, total_iters=2),
                                  ExponentialLR(opt, gamma=0.9)], optimizer=opt)
        # jaxupdate
        sched = chained_scheduler([constant_lr(1.0, factor=0.1, total_iters=2),
                                   exponential_lr(1.0, gamma=0.9)])
        tx = ju.sgd(lr=sched)

    Torch's idiom of several schedulers stepped one after the other in the training loop
    (``for s in schedulers: s.step()``) is the same chain.

    Args:
      schedulers: the schedules, in the order torch constructs and steps them (not
        ``reduce_lr_on_plateau``: pass the chain to it instead).
      lr: torch's ``optimizer`` argument: the optimizer's initial lr; by default the first
        schedule's.

    ``.momentum`` is the last cycling scheduler's momentum, if any.

    Example::

        >>> from jaxupdate.lr_scheduler import chained_scheduler, constant_lr, exponential_lr
        >>> sched = chained_scheduler([constant_lr(1.0, factor=0.1, total_iters=2),
        ...                            exponential_lr(1.0, gamma=0.9)])
        >>> [round(float(sched(c)), 6) for c in range(4)]
        [0.1, 0.09, 0.81, 0.729]
    """
    return ChainedScheduler(schedulers, lr)

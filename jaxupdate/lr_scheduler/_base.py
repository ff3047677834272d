"""The schedule shared by every scheduler: a function of ``count`` and torch's chainable step.

A torch scheduler mutates ``param_group["lr"]``: most of them multiply the group's *current* lr
by a factor (``get_lr``'s "chainable form"), a few compute it from ``base_lr`` alone. A
:class:`Schedule` carries both views of the same sequence:

- ``schedule(count)``: the lr the group holds after ``count`` calls of ``scheduler.step()``, as a
  pure, jittable function of ``count``. It uses a closed form where that form equals torch's
  recursive sequence to rounding (measured in ``tests/test_lr_scheduler.py``), and otherwise
  iterates torch's recursion with ``lax.fori_loop`` (MultiplicativeLR, some compositions).
- ``schedule.step(lr, count)``: torch's ``scheduler.step()`` itself, the group's new lr from its
  current ``lr`` when ``last_epoch`` becomes ``count``. :func:`inject_hyperparams` keeps the lr in
  the optimizer state and applies this once per update: O(1) per step, torch's exact recursion,
  and an lr set by hand (torch's ``group["lr"] = x``) is carried on from, as in torch.
"""

from __future__ import annotations

from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jaxupdate._hparams import is_number, is_schedule, normalize, scalar_dtype
from jaxupdate.numerics import true_divide
from jaxupdate.optim._base import check


def as_count(count) -> jax.Array:
    """The step count (torch's ``last_epoch``) as a scalar of JAX's default int type.

    int64 under ``jax_enable_x64``, so that user functions of it (``lr_lambda``, ``scale_fn``)
    compute in float64 like torch's Python ints do: ``1 / (1 + e)`` on an int32 is float32.
    """
    return jnp.asarray(count, dtype=jax.dtypes.canonicalize_dtype(jnp.int64))


def as_float(x) -> jax.Array:
    """A scalar in the schedule dtype (float64 under ``jax_enable_x64``, like torch's floats)."""
    return jnp.asarray(x, scalar_dtype())


def div(a, b):
    """``a / b`` as Python divides, ``b`` in the schedule dtype (see ``numerics.true_divide``:
    XLA would otherwise multiply by a reciprocal, and PolynomialLR's
    ``(1 - t / total_iters) ** power`` would turn into NaN)."""
    return true_divide(a, as_float(b))


class HostFunction:
    """A user's Python function of the step count (``lr_lambda``, ``scale_fn``), jittable.

    torch calls ``lr_lambda(last_epoch)`` with a Python int, and real recipes rely on it:
    Hugging Face's ``get_linear_schedule_with_warmup`` / ``get_cosine_schedule_with_warmup``
    are ``LambdaLR``\\ s whose lambdas use ``if``, ``max``, ``float`` and ``math.cos``, which
    fail on a traced count (``TracerBoolConversionError``). A function that traces (written
    with ``jax.numpy``, or plain arithmetic such as ``0.95 ** e``) is called on the traced
    count as it is; one that does not is evaluated on the host with a Python int, through
    ``jax.pure_callback``, so it works under ``jit`` / ``vmap`` at any count (no horizon) and
    returns the Python float torch would use (cast to the schedule dtype). One that works in
    neither way is refused here, at construction, with a message saying how to write it.

    The probe calls ``fn`` once on an abstract count and, if that fails, once with ``probe``
    (torch's constructor calls ``lr_lambda(0)`` too; CyclicLR's cycle count starts at 1).
    """

    def __init__(self, fn: Callable, name: str, probe: int = 0):
        self.fn, self.name = fn, name
        count = jax.ShapeDtypeStruct((), as_count(0).dtype)
        try:
            leaves = jax.tree.leaves(jax.eval_shape(fn, count))
            traced = len(leaves) == 1 and getattr(leaves[0], "shape", ()) == ()
        except Exception:  # noqa: BLE001 - any failure on a tracer: try the host path
            traced = False
        self.on_host = not traced
        if self.on_host:
            try:
                float(fn(probe))
            except Exception as e:  # noqa: BLE001 - reported with how to write it
                raise ValueError(
                    f"{name} {fn!r} cannot be evaluated: on a traced count it fails, and called "
                    f"with the Python int {probe} (as torch does) it raised "
                    f"{type(e).__name__}: {e}. "
                    f"Write {name} as a function of an integer step count returning a number, "
                    "either in plain Python (if/max/math.cos are fine: it runs on the host) "
                    "or with jax.numpy (jnp.where instead of if) to run inside the compiled step"
                ) from e

    def _host(self, t):
        return np.asarray(float(self.fn(int(t))), scalar_dtype())

    def __call__(self, t):
        if not self.on_host:
            return self.fn(t)
        return jax.pure_callback(
            self._host,
            jax.ShapeDtypeStruct((), scalar_dtype()),
            jnp.asarray(t),
            vmap_method="sequential",
        )

    def __repr__(self):
        return repr(self.fn)


def check_base_lr(lr):
    """The optimizer's initial lr: a number or a 1-element array, ``lr >= 0`` as torch checks it."""
    if is_schedule(lr):
        raise TypeError(
            "lr is the optimizer's initial learning rate (a float or a 1-element array), "
            f"got a schedule {lr!r}; to compose schedules use sequential_lr / chained_scheduler"
        )
    lr_n = normalize(lr, "lr")
    check(lr_n, lambda v: 0.0 <= v, f"Invalid learning rate: {lr}")
    return lr_n


def one_group(value, name: str, what: str = "values"):
    """torch's ``_format_param`` for a single parameter group: a value or a 1-element list."""
    if isinstance(value, (list, tuple)):
        if len(value) != 1:
            raise ValueError(
                f"{name} must have the same length as optimizer.param_groups. "
                f"{name} has {len(value)} {what}, param_groups has 1."
            )
        return value[0]
    return value


def same_value(a, b) -> bool:
    """Whether two initial lrs are the same (unknown values, e.g. traced arrays, pass)."""
    if a is b or a is None or b is None:
        return True
    try:
        return float(a) == float(b)
    except (TypeError, jax.errors.ConcretizationTypeError):
        return True


#: torch scheduler class name -> the jaxupdate class whose ``from_torch`` converts it, filled by
#: the classes themselves (:func:`torch_scheduler`); read by ``jaxupdate.interop.from_torch``.
TORCH_SCHEDULERS: dict = {}


def torch_scheduler(cls):
    """Class decorator: ``cls.from_torch`` converts the torch schedulers of ``cls``'s name,
    which is torch's class name (set as ``cls.torch_name``).

    Example::

        >>> from jaxupdate.lr_scheduler._base import TORCH_SCHEDULERS
        >>> TORCH_SCHEDULERS["StepLR"].torch_name
        'StepLR'
    """
    cls.torch_name = cls.__name__
    if cls.torch_name in TORCH_SCHEDULERS:
        raise ValueError(f"two schedule classes for torch's {cls.torch_name}")
    TORCH_SCHEDULERS[cls.torch_name] = cls
    return cls


class Schedule:
    """A torch learning-rate scheduler as a pure function of the step count.

    ``schedule(count)`` is the lr torch's optimizer holds after ``count`` calls of
    ``scheduler.step()`` (``count = 0``: right after construction). Pass it wherever a
    jaxupdate optimizer takes ``lr``; the optimizer evaluates it at the number of updates
    already applied, which is torch's ``optimizer.step(); scheduler.step()`` loop.

    ``schedule.step(lr, count)`` is torch's chainable ``scheduler.step()``: the group's new lr
    from its current ``lr`` when ``last_epoch`` becomes ``count`` (``count >= 1``).
    ``schedule.momentum`` is the momentum (or Adam beta1) schedule of CyclicLR / OneCycleLR with
    ``cycle_momentum=True``, else ``None``.
    """

    #: torch's class name, used in error messages.
    torch_name = "LRScheduler"
    #: the optimizer's initial lr (torch's ``base_lrs[0]``), None where the schedule sets it.
    lr: Any = None
    #: momentum / beta1 schedule (CyclicLR, OneCycleLR with ``cycle_momentum=True``).
    momentum: Optional["Schedule"] = None
    #: the step ignores the group's lr (LambdaLR, CyclicLR, OneCycleLR, warm restarts).
    absolute = False

    def __call__(self, count) -> jax.Array:
        t = as_count(count)
        out = self._closed(t)
        if out is None:
            out = self._iterate(t)
        return jnp.reshape(as_float(out), ())

    def step(self, lr, count) -> jax.Array:
        """torch's ``scheduler.step()``: group lr ``lr`` -> new lr, ``last_epoch`` -> ``count``."""
        return jnp.reshape(as_float(self._next(as_float(lr), as_count(count))), ())

    @classmethod
    def from_torch(cls, s, g: int, group: dict, *, base, probe: int = 0, convert=None):
        """The schedule of the live torch scheduler ``s`` (a ``cls.torch_name``) for group ``g``.

        ``group``: torch's param group ``g``; ``base``: its initial lr (torch's
        ``base_lrs[g]``, a float); ``probe``: the scheduler's position (``last_epoch``, at
        least 0), where a Python ``lr_lambda`` is first called (a resumed scheduler may never
        have called it at 0); ``convert(s, g, group)``: the conversion of a member scheduler
        (SequentialLR, ChainedScheduler). The schedule starts at step 0;
        :func:`jaxupdate.interop.from_torch` positions it and only reads ``s``. Classes
        registered with :func:`torch_scheduler` define it.
        """
        raise NotImplementedError(f"no jaxupdate schedule for torch scheduler {cls.torch_name}")

    # --- what each scheduler defines -------------------------------------------------------
    def _first(self, lr):
        """The constructor's initial step (``last_epoch = 0``) on a group holding ``lr``."""
        return lr

    def _next(self, lr, t):
        """``get_lr`` at ``last_epoch = t >= 1`` on a group holding ``lr``."""
        raise NotImplementedError

    def _restart(self, lr):
        """SequentialLR at a milestone: ``_update_lr(0)``, torch's closed form at epoch 0."""
        raise NotImplementedError(
            f"{self.torch_name} cannot be restarted by SequentialLR at a milestone "
            "(torch raises NotImplementedError there)"
        )

    def _closed(self, t):
        """Closed form of the standalone sequence where it equals torch's recursion, else None."""
        return None

    def _segment(self, t):
        """Closed form of the sequence SequentialLR starts with ``_restart``, else None."""
        return self._closed(t)

    def _factor(self, t):
        """Cumulative factor ``lr_t / lr`` for schedulers whose step multiplies, else None."""
        return None

    # --- generic machinery -------------------------------------------------------------------
    def _iterate(self, t):
        """torch's recursion itself: the initial step, then ``t`` chainable steps."""
        lr0 = as_float(self._first(as_float(self.lr)))
        return lax.fori_loop(1, t + 1, lambda k, lr: as_float(self._next(lr, k)), lr0)

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in getattr(self, "_repr_args", {}).items())
        return f"{type(self).__name__}({args})"


class SelfSetting(Schedule):
    """A scheduler whose lr is a function of the step count alone (``_value(t)``).

    torch's ``get_lr`` of LambdaLR, CosineAnnealingWarmRestarts, CyclicLR and OneCycleLR
    ignores the group's current lr, so the closed form, the constructor's initial step, each
    chainable step and SequentialLR's restart (``_update_lr(0)``) are all ``_value``, which
    each subclass defines.
    """

    absolute = True

    def _closed(self, t):
        return self._value(t)

    def _first(self, lr):
        return self._value(as_count(0))

    def _next(self, lr, t):
        return self._value(t)

    def _restart(self, lr):
        return self._value(as_count(0))


class FunctionSchedule(SelfSetting):
    """A schedule that is a function of ``count`` only (momentum of CyclicLR / OneCycleLR)."""

    def __init__(self, fn: Callable[[jax.Array], Any], name: str):
        self._fn = fn
        self.torch_name = name
        self._repr_args = {"of": name}

    def _value(self, t):
        return self._fn(t)


class PerEpoch(Schedule):
    """``schedule`` stepped once every ``steps_per_epoch`` updates; see :func:`per_epoch`."""

    def __init__(self, schedule: Schedule, steps_per_epoch: int):
        self.inner = schedule
        self.steps_per_epoch = steps_per_epoch
        self.lr = schedule.lr
        self.torch_name = schedule.torch_name
        # between epoch boundaries the group keeps whatever lr it holds
        self.absolute = schedule.absolute and steps_per_epoch == 1
        if schedule.momentum is not None:
            self.momentum = PerEpoch(schedule.momentum, steps_per_epoch)
        self._repr_args = {"schedule": schedule, "steps_per_epoch": steps_per_epoch}

    def _epoch(self, t):
        return t // self.steps_per_epoch

    def __call__(self, count):
        return self.inner(self._epoch(as_count(count)))

    def _closed(self, t):
        return self.inner(self._epoch(t))

    def _first(self, lr):
        return self.inner._first(lr)

    def _next(self, lr, t):
        # the scheduler steps at the epoch boundary only; in between the group keeps its lr
        epoch = jnp.maximum(self._epoch(t), 1)
        return jnp.where(t % self.steps_per_epoch == 0, self.inner._next(lr, epoch), lr)

    def _restart(self, lr):
        return self.inner._restart(lr)

    def _segment(self, t):
        return self.inner._segment(self._epoch(t))

    def _factor(self, t):
        return self.inner._factor(self._epoch(t))


def per_epoch(schedule: Schedule, steps_per_epoch: int) -> Schedule:
    """A schedule that torch steps once per epoch, driven by the per-update ``count``.

    torch steps epoch-wise schedulers after the inner loop::

        for epoch in range(epochs):
            for x, y in loader:                 # steps_per_epoch batches
                loss_fn(model(x), y).backward()
                optimizer.step()
            scheduler.step()                    # once per epoch

    jaxupdate optimizers evaluate their lr at the number of updates applied, so the same
    schedule becomes ``per_epoch(schedule, steps_per_epoch)``, whose value at update ``count``
    is ``schedule(count // steps_per_epoch)``::

        tx = ju.sgd(lr=per_epoch(step_lr(0.1, step_size=30), steps_per_epoch=len(loader)))

    A per-iteration scheduler (torch's ``scheduler.step()`` inside the batch loop, e.g.
    OneCycleLR) is passed as it is. The momentum schedule is wrapped too
    (``per_epoch(s, n).momentum``).

    ReduceLROnPlateau is stepped per epoch with a metric that exists only after the epoch's
    last update (a validation loss): ``per_epoch(reduce_lr_on_plateau(...), n)``, a
    hyperparameter of :func:`inject_hyperparams`, is left alone by the updates and stepped
    by :func:`jaxupdate.lr_scheduler.step_plateau` (torch's ``scheduler.step(val_loss)``).

    Args:
      schedule: a jaxupdate schedule (any of this package's schedulers), or a
        ``reduce_lr_on_plateau``.
      steps_per_epoch: number of optimizer updates per epoch, a positive int.
    """
    from jaxupdate.lr_scheduler.plateau import ReduceLROnPlateau  # (plateau imports this module)

    if isinstance(schedule, ReduceLROnPlateau):
        _check_steps_per_epoch(steps_per_epoch)
        return schedule.per_epoch(int(steps_per_epoch))
    if not isinstance(schedule, Schedule):
        raise TypeError(f"per_epoch expects a jaxupdate lr_scheduler schedule, got {schedule!r}")
    _check_steps_per_epoch(steps_per_epoch)
    return PerEpoch(schedule, int(steps_per_epoch))


def _check_steps_per_epoch(steps_per_epoch):
    if (
        not is_number(steps_per_epoch)
        or int(steps_per_epoch) != steps_per_epoch
        or (steps_per_epoch <= 0)
    ):
        raise ValueError(f"Expected positive integer steps_per_epoch, but got {steps_per_epoch}")

"""``to_torch(optimizer, tx, opt_state, params, scheduler)``: a jaxupdate run continued in torch.

The converse of :func:`jaxupdate.interop.from_torch`. A run is parameters, an optimizer state
and a scheduler position; :func:`to_torch` puts all three into a live torch optimizer (and
scheduler) over the same parameters, so that torch's usual loop continues the trajectory the
jaxupdate run would have followed::

    tx = ju.from_torch(opt, sched)               # or any described jaxupdate optimizer
    state = tx.init(params)
    for grads in ...:                            # k jaxupdate updates
        updates, state = tx.update(grads, state, params)
        params = ju.apply_updates(params, updates)
    ju.interop.to_torch(opt, tx, state, params, sched)
    for x, y in loader:                          # torch carries on
        loss_fn(model(x), y).backward(); opt.step(); sched.step()

What is moved:

* the optimizer state, as :func:`jaxupdate.interop.load_into_torch` moves it (the
  hyperparameters too: a schedule's value for the next update, an injected hyperparameter's
  current value), keeping the param-group keys that torch's schedulers own (``initial_lr``,
  OneCycleLR's ``max_lr`` / ``min_lr``, ...), which jaxupdate does not export;
* the parameters (``copy_params``), copied into the optimizer's tensors;
* the scheduler's position: a torch scheduler stepped fewer times than the jaxupdate run
  updated (the live scheduler ``from_torch`` converted, or a fresh one for a run that started
  in jaxupdate) is stepped forward to the run's position; ReduceLROnPlateau receives the run's
  ``best``, ``num_bad_epochs``, ``cooldown_counter`` and ``last_epoch`` (for a plateau
  stepped by hand, once per epoch say, from the state given as ``plateau_state=``).
"""

from __future__ import annotations

import copy
import math
import warnings
from typing import Any, Optional, Sequence

import jax
import numpy as np

from jaxupdate._described import Description, description
from jaxupdate.fused._flat import unflatten_state
from jaxupdate.interop import _torch as T
from jaxupdate.interop.from_torch import Positioned, torch_last_epoch
from jaxupdate.interop.state_dict import (
    apply_param_map,
    state_layout,
    torch_state_dict,
    unwrap_nnx,
)
from jaxupdate.lr_scheduler._base import PerEpoch, Schedule
from jaxupdate.lr_scheduler.inject import InjectState, plain_view
from jaxupdate.lr_scheduler.plateau import PlateauState, ReduceLROnPlateau
from jaxupdate.param_groups import GroupsDescription, ParamGroupsState
from jaxupdate.transforms.common import step_count
from jaxupdate.transforms.validate import check_state_fits, optimizer_name

# torch's warning when a scheduler steps before its optimizer ever did: moving a scheduler to
# the run's position is exactly that, and harmless here
_STEP_ORDER_WARNING = r"Detected call of `lr_scheduler.step\(\)` before `optimizer.step\(\)`"
# how far a scheduler's lr may be from the jaxupdate run's before to_torch says so: jaxupdate's
# closed forms equal torch's recursions to a few ulps; anything larger was set by hand or is
# another schedule
_LR_RTOL = 1e-6
# param-group keys that choose torch's kernels, not the mathematics
_KERNEL_KEYS = ("foreach", "fused", "capturable", "differentiable")


# ---------------------------------------------------------------------------------------------
# reading the jaxupdate run


class _Group:
    """One jaxupdate group as the conversion needs it."""

    def __init__(self, kwargs: dict, state):
        self.injected = isinstance(state, InjectState)
        if self.injected:
            # the values the next update uses are the injected ones (torch's group entries)
            self.kwargs = {**kwargs, **state.hyperparams}
            self.state = state.inner_state
            self.count = int(state.count)
            self.plateau = state.hyperparams_states.get("lr")
            if not isinstance(self.plateau, PlateauState):
                self.plateau = None
        else:
            self.kwargs, self.state = dict(kwargs), state
            self.count = int(step_count(state))  # one per optimizer (torch's step)
            self.plateau = None
        self.lr_spec = kwargs.get("lr")  # as built: a schedule, a plateau, a number


def _view(tx, opt_state):
    """``(described tx, state, groups)`` with injected hyperparameters made plain values.

    ``torch_state_dict`` reads a state whose hyperparameters are the description's; an
    ``inject_hyperparams`` optimizer (on its own or in ``param_groups``) keeps its current
    values (and its plateau state) in an ``InjectState`` around the optimizer's own state.
    ``groups`` keep what the torch scheduler needs: position, lr as built, plateau state.
    """
    desc = description(tx)
    if isinstance(desc, GroupsDescription):
        if not isinstance(opt_state, ParamGroupsState) or len(opt_state.groups) != len(
            desc.groups
        ):
            got = len(opt_state.groups) if isinstance(opt_state, ParamGroupsState) else "no"
            raise ValueError(
                f"opt_state holds {got} parameter groups, the transformation "
                f"{len(desc.groups)}: give the state of this tx"
            )
        groups = [_Group(g.kwargs, s) for g, s in zip(desc.groups, opt_state.groups)]
    elif isinstance(desc, Description):
        groups = [_Group(desc.kwargs, opt_state)]
    else:
        raise TypeError(
            "to_torch needs a transformation that says which optimizer it is: one from "
            "jaxupdate.interop.from_torch, a jaxupdate optimizer (ju.adam(...)), "
            "inject_hyperparams(ju.adam)(...), or param_groups(ju.adam, ...) (also around "
            "inject_hyperparams(ju.adam))"
        )
    view_tx, view_state = plain_view(tx, opt_state)
    return view_tx, view_state, groups


def _torch_epoch(spec, count: int) -> int:
    """How many times torch's scheduler has stepped when the run has taken ``count`` updates."""
    if isinstance(spec, Positioned):  # from_torch: torch's steps before the conversion count
        return _torch_epoch(spec.inner, spec.epoch + (count - spec.start) // spec.every)
    if isinstance(spec, PerEpoch):
        return _torch_epoch(spec.inner, count // spec.steps_per_epoch)
    return count


def current_lr(tx, opt_state) -> list[float]:
    """The lr each param group's next update uses: torch's ``scheduler.get_last_lr()``.

    For any run :func:`jaxupdate.interop.to_torch` takes (one from
    :func:`jaxupdate.interop.from_torch`, ``ju.adam(lr=schedule)``,
    ``inject_hyperparams(...)``, ``param_groups(...)``): a scheduled lr is the schedule at
    the number of updates the group has taken (positioned after torch's steps for a
    converted run), an injected one (ReduceLROnPlateau, a value set by hand) is the value
    held in the state, a constant is itself. One float per group, read outside ``jit``.

    Example::

        >>> import jax.numpy as jnp, jaxupdate as ju
        >>> from jaxupdate.interop import current_lr
        >>> from jaxupdate.lr_scheduler import step_lr
        >>> tx = ju.sgd(lr=step_lr(0.1, step_size=2, gamma=0.5), momentum=0.9)
        >>> params = {"w": jnp.ones(2)}
        >>> state = tx.init(params)
        >>> for _ in range(2):
        ...     _, state = tx.update({"w": jnp.ones(2)}, state, params)
        >>> [round(lr, 6) for lr in current_lr(tx, state)]     # after 2 updates: 0.1 * 0.5
        [0.05]
    """
    _, _, groups = _view(tx, opt_state)
    out = []
    for g, group in enumerate(groups):
        lr = group.kwargs.get("lr")
        if not group.injected and isinstance(lr, Schedule):
            lr = lr(group.count)
        elif not group.injected and callable(lr) and not hasattr(lr, "shape"):
            lr = lr(group.count)  # a plain function of the count, as the optimizers take it
        if lr is None or isinstance(lr, ReduceLROnPlateau):
            raise ValueError(f"param group {g} holds no lr value")
        out.append(float(np.asarray(lr).reshape(())))
    return out


# ---------------------------------------------------------------------------------------------
# the torch side


def _schedulers(s) -> list:
    """``s`` and the schedulers inside it (SequentialLR, ChainedScheduler)."""
    out = [s]
    for child in getattr(s, "_schedulers", ()):
        out.extend(_schedulers(child))
    return out


def _cycles_momentum(s) -> bool:
    return any(getattr(x, "cycle_momentum", False) for x in _schedulers(s))


def _momentum_key(group: dict) -> Optional[str]:
    return "betas" if "betas" in group else "momentum" if "momentum" in group else None


def _number(v) -> float:
    return float(T.to_numpy(v)) if T.is_tensor(v) else float(v)


def _close(a, b) -> bool:
    return math.isclose(_number(a), _number(b), rel_tol=_LR_RTOL, abs_tol=1e-15)


def _snapshot(optimizer, scheduler):
    """What stepping a scheduler changes, to undo it if a step fails."""
    groups = [
        {k: (v.clone() if T.is_tensor(v) else v) for k, v in g.items() if k != "params"}
        for g in optimizer.param_groups
    ]
    return copy.deepcopy(scheduler.state_dict()), groups


def _restore(optimizer, scheduler, snap):
    sched_state, groups = snap
    scheduler.load_state_dict(sched_state)
    for group, saved in zip(optimizer.param_groups, groups):
        for k, v in saved.items():
            if T.is_tensor(group.get(k)) and T.is_tensor(v):
                group[k].copy_(v)
            else:
                group[k] = v


def _set_group_value(group: dict, key: str, value):
    """``group[key] = value``, filling a tensor in place as torch's schedulers do."""
    old = group.get(key)
    if T.is_tensor(old):
        old.copy_(value) if T.is_tensor(value) else old.fill_(value)
    else:
        group[key] = value


def _plateau_checks(scheduler, groups: list) -> dict:
    specs = [g.lr_spec for g in groups]
    if not all(isinstance(s, ReduceLROnPlateau) for s in specs):
        raise ValueError(
            "the torch scheduler is a ReduceLROnPlateau, but the jaxupdate run's lr is not "
            "reduce_lr_on_plateau (from_torch(opt, plateau) or inject_hyperparams(ju.<opt>)"
            "(lr=reduce_lr_on_plateau(...))), so it holds no plateau state to export; for a "
            "plateau driven by hand (its state kept aside, the lr set with set_hyperparams) "
            "pass that state: to_torch(..., plateau_state=state)"
        )
    if any(s.schedule is not None for s in specs):
        raise NotImplementedError(
            "reduce_lr_on_plateau built on a schedule is two torch schedulers (the schedule, "
            "then the plateau): to_torch moves one; give the plateau's state to the torch "
            "ReduceLROnPlateau by hand"
        )
    for g, s in enumerate(specs):
        differ = []
        for name, theirs in (
            ("mode", scheduler.mode),
            ("factor", scheduler.factor),
            ("patience", scheduler.patience),
            ("threshold", scheduler.threshold),
            ("threshold_mode", scheduler.threshold_mode),
            ("cooldown", scheduler.cooldown),
            ("eps", scheduler.eps),
            ("min_lr", scheduler.min_lrs[g] if g < len(scheduler.min_lrs) else None),
        ):
            if getattr(s, name) != theirs:
                differ.append(f"{name}: {getattr(s, name)!r} here, {theirs!r} in torch's")
        if differ:
            raise ValueError(
                f"param group {g}: the torch ReduceLROnPlateau is not the run's "
                f"reduce_lr_on_plateau ({'; '.join(differ)}); build it with the same arguments"
            )
    return _plateau_attrs([g.plateau for g in groups])


def _plateau_attrs(states: list) -> dict:
    """torch's ReduceLROnPlateau attributes from the groups' plateau states (one per group)."""
    fields = ("best", "num_bad_epochs", "cooldown_counter", "last_epoch")
    values = {f: {float(getattr(p, f)) for p in states} for f in fields}
    split = [f for f in fields if len(values[f]) > 1]
    if split:
        raise ValueError(
            f"the groups' plateau states differ in {split}; torch's ReduceLROnPlateau keeps one"
        )
    p = states[0]
    return dict(
        best=float(p.best),
        num_bad_epochs=int(p.num_bad_epochs),
        cooldown_counter=int(p.cooldown_counter),
        last_epoch=int(p.last_epoch),
    )


def _given_plateau(plateau_state, scheduler, groups: list) -> dict:
    """Checks ``plateau_state=`` (a plateau driven by hand) against the run and the scheduler."""
    if not T.is_plateau_scheduler(scheduler):
        got = "no scheduler" if scheduler is None else f"a {type(scheduler).__name__}"
        raise ValueError(
            f"plateau_state is the state of a ReduceLROnPlateau, but the scheduler is {got}: "
            "give the torch ReduceLROnPlateau to continue with"
        )
    # PlateauState is itself a tuple: test it before the sequence case
    if isinstance(plateau_state, PlateauState):
        states, per_group = [plateau_state] * len(groups), False
    elif isinstance(plateau_state, (list, tuple)) and all(
        isinstance(p, PlateauState) for p in plateau_state
    ):
        states, per_group = list(plateau_state), True
        if len(states) != len(groups):
            raise ValueError(
                f"plateau_state holds {len(states)} plateau states, the run {len(groups)} "
                "param groups: give one PlateauState, or one per group"
            )
    else:
        raise TypeError(
            "plateau_state must be a jaxupdate.lr_scheduler.PlateauState (reduce_lr_on_plateau"
            f"(...).init() / .step(...)), or one per param group; got {type(plateau_state)}"
        )
    for g, group in enumerate(groups):
        spec = group.lr_spec
        if isinstance(spec, ReduceLROnPlateau):
            raise ValueError(
                f"param group {g}: the run's lr is reduce_lr_on_plateau, whose state is in "
                "opt_state already (to_torch exports it): leave plateau_state out"
            )
        if isinstance(spec, Schedule) or (callable(spec) and not hasattr(spec, "shape")):
            # the torch ReduceLROnPlateau would be the only scheduler stepping the lr
            raise ValueError(
                f"param group {g}: plateau_state is for an lr driven by hand (set_hyperparams), "
                f"but the run's lr is a schedule ({type(spec).__name__}), which torch's "
                "ReduceLROnPlateau does not step"
            )
    if per_group or len(groups) == 1:
        # a single state for several groups carries one lr: torch's plateau keeps none, the
        # groups' lrs are the run's
        for g, (group, p) in enumerate(zip(groups, states)):
            run = group.kwargs.get("lr")
            if not _close(run, p.lr):
                warnings.warn(
                    f"param group {g}: plateau_state's lr is {_number(p.lr)}, the jaxupdate "
                    f"run's {_number(run)}; keeping the run's (was set_hyperparams(state, "
                    "lr=plateau_state.lr) not called after the last plateau step?)",
                    stacklevel=3,
                )
    return _plateau_attrs(states)


# ---------------------------------------------------------------------------------------------


def to_torch(
    torch_optimizer,
    tx,
    opt_state,
    params,
    scheduler=None,
    *,
    param_map: Optional[Sequence] = None,
    copy_params: bool = True,
    plateau_state=None,
) -> None:
    """Continues a jaxupdate run in a torch optimizer (and scheduler): state, parameters,
    scheduler position.

    After ``to_torch``, torch's loop (``optimizer.step(); scheduler.step()`` per update, or
    ``scheduler.step(metric)`` for ReduceLROnPlateau, ``scheduler.step()`` once per epoch for a
    per-epoch schedule) follows the trajectory that further ``tx.update`` calls would have.

    What it does, after checking everything (nothing in torch changes when a check fails):

    1. The scheduler (if given) is brought to the run's position. The position is the number
       of times torch's scheduler would have stepped: the run's update count, counting the
       torch steps taken before :func:`jaxupdate.interop.from_torch` converted the run, and
       divided by ``steps_per_epoch`` for a per-epoch schedule
       (:func:`jaxupdate.lr_scheduler.per_epoch`, ``from_torch(..., steps_per_epoch=)``). A
       scheduler behind it (``last_epoch`` smaller) is stepped forward from the lrs it last
       set, torch's "scheduler.step() before optimizer.step()" warning silenced. A
       ReduceLROnPlateau gets the run's ``best``, ``num_bad_epochs``, ``cooldown_counter`` and
       ``last_epoch``: from the tx's lr, ``reduce_lr_on_plateau`` with the same arguments, or
       from ``plateau_state`` for a plateau driven by hand.
    2. The optimizer state is loaded as :func:`jaxupdate.interop.load_into_torch` does
       (optimizer class, group count and sizes, shapes checked), keeping the group keys the
       live optimizer has and the export lacks (scheduler state such as ``initial_lr``,
       ``max_lr``, ``base_momentum``) and its kernel choice (``foreach``, ``fused``,
       ``capturable``, ``differentiable``). A group value that is a tensor stays that tensor.
    3. Each group's lr (and the momentum / Adam ``beta1`` a cycling scheduler sets) is the
       scheduler's own value where it agrees with the run's to 1e-6 (torch's rounding
       kept); where it does not (an lr set by hand with ``set_hyperparams``, or a scheduler that
       is not the run's schedule), the run's value is kept and a warning names both.
    4. ``copy_params``: ``params`` are copied into the optimizer's tensors.

    Args:
      torch_optimizer: the ``torch.optim`` optimizer to continue in, of the tx's class, with
        as many param groups and parameters per group (the live one ``from_torch`` converted,
        or a fresh one).
      tx: the jaxupdate transformation of the run, one that says which optimizer it is: from
        ``from_torch``, a jaxupdate optimizer such as ``ju.adam(lr=schedule)``,
        ``inject_hyperparams(ju.adam)(...)`` (its current values are exported) or
        ``param_groups(ju.adam, ...)`` (also around ``inject_hyperparams(ju.adam)``).
      opt_state: its state (``nnx.Optimizer.opt_state`` nodes are read through).
      params: the run's parameters; group ``g``'s leaves in ``jax.tree.leaves`` order are
        torch's ``param_groups[g]["params"]`` (or give ``param_map``).
      scheduler: a ``torch.optim.lr_scheduler`` scheduler of ``torch_optimizer`` (any
        class, SequentialLR / ChainedScheduler / CyclicLR / OneCycleLR with momentum cycling
        included), at or before the run's position: the one ``from_torch`` converted, or a
        fresh one equivalent to the run's schedule.
      param_map: torch's parameter order and layouts, as for
        :func:`jaxupdate.interop.torch_state_dict`.
      copy_params: copy ``params`` into the torch parameters (``False``: the caller does).
      plateau_state: for a ReduceLROnPlateau stepped by hand (e.g. once per epoch: the
        :class:`jaxupdate.lr_scheduler.PlateauState` of ``reduce_lr_on_plateau(...)`` kept
        aside, ``plateau.step(ps, metric)``, the lr set with ``set_hyperparams``): that
        state (or one per param group), written into ``scheduler`` (then a torch
        ReduceLROnPlateau built with the same arguments, which cannot be checked here) as
        the run's own plateau is. The run's lr must be a value (not a schedule); a state's
        lr that is not the group's lr is warned about (the group's is kept).

    Raises:
      ValueError: another optimizer class, number of groups or of parameters per group,
        shapes; a scheduler of another optimizer, ahead of the run (it has stepped more times
        than the run's position), or that raises while being stepped there (it is rolled
        back); a ReduceLROnPlateau with other arguments than the run's, or
        for a run without one (and the reverse).
      TypeError: a transformation that does not describe itself.
      NotImplementedError: ``reduce_lr_on_plateau`` built on a schedule.
      TypeError / ValueError (``plateau_state``): not PlateauStates, not one per group,
        without a ReduceLROnPlateau, for a run whose lr is a schedule or a plateau.

    Example::

        >>> import torch, jax.numpy as jnp, jaxupdate as ju
        >>> from jaxupdate.interop import from_torch, to_torch
        >>> w = torch.nn.Parameter(torch.ones(2, dtype=torch.float64))
        >>> opt = torch.optim.SGD([w], lr=0.1, momentum=0.9)
        >>> sched = torch.optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.5)
        >>> tx = from_torch(opt, sched)
        >>> params = [jnp.asarray(w.detach().numpy())]
        >>> state = tx.init(params)
        >>> for _ in range(3):                              # three updates in jaxupdate
        ...     updates, state = tx.update([jnp.ones(2, jnp.float64)], state, params)
        ...     params = ju.apply_updates(params, updates)
        >>> to_torch(opt, tx, state, params, sched)
        >>> sched.last_epoch, opt.param_groups[0]["lr"]     # 0.1 halved at step 2
        (3, 0.05)
        >>> w.grad = torch.ones(2, dtype=torch.float64); opt.step(); sched.step()  # and on
    """
    torch = T.torch()
    params, opt_state = unwrap_nnx(params), unwrap_nnx(opt_state)
    _check_state(tx, opt_state, params)
    opt_state = unflatten_state(opt_state)  # a fused optimizer's flat state, per leaf
    view_tx, view_state, groups = _view(tx, opt_state)
    # the export validates the state against the transformation and the parameters
    sd = torch_state_dict(view_tx, view_state, params, param_map=param_map)
    layout = state_layout(view_tx, params, need_description=True)
    if param_map is not None:
        layout = apply_param_map(layout, param_map)

    # --- checks, before anything in torch changes
    cls = getattr(torch.optim, layout.spec.torch_class)
    if not isinstance(torch_optimizer, cls):
        raise ValueError(
            f"the jaxupdate run is torch.optim.{cls.__name__} ({layout.name}), the torch "
            f"optimizer a {type(torch_optimizer).__name__}: continue in a "
            f"torch.optim.{layout.spec.torch_class} over the same parameters"
        )
    t_groups = torch_optimizer.param_groups
    if len(t_groups) != len(sd["param_groups"]):
        raise ValueError(
            "loaded state dict has a different number of parameter groups "
            f"({len(sd['param_groups'])} in the jaxupdate run, {len(t_groups)} in the torch "
            "optimizer)"
        )
    for g, (mine, theirs) in enumerate(zip(sd["param_groups"], t_groups)):
        if len(mine["params"]) != len(theirs["params"]):
            raise ValueError(
                "loaded state dict contains a parameter group that doesn't match the size of "
                f"optimizer's group (group {g}: {len(mine['params'])} parameters in the "
                f"jaxupdate run, {len(theirs['params'])} in the torch optimizer)"
            )
    copies = _param_copies(layout, t_groups) if copy_params else []

    plateau = T.is_plateau_scheduler(scheduler)
    if scheduler is not None:
        for s in _schedulers(scheduler):
            if getattr(s, "optimizer", torch_optimizer) is not torch_optimizer:
                raise ValueError(
                    f"the scheduler ({type(s).__name__}) belongs to another optimizer: give "
                    "the scheduler of torch_optimizer"
                )
    if plateau_state is not None:
        plateau_attrs = _given_plateau(plateau_state, scheduler, groups)
    elif plateau:
        plateau_attrs = _plateau_checks(scheduler, groups)
    elif scheduler is not None:
        if any(isinstance(g.lr_spec, ReduceLROnPlateau) for g in groups):
            raise ValueError(
                "the jaxupdate run's lr is reduce_lr_on_plateau, the torch scheduler a "
                f"{type(scheduler).__name__}: continue with a torch ReduceLROnPlateau"
            )
        positions = {_torch_epoch(g.lr_spec, g.count) for g in groups}
        if len(positions) > 1:
            raise ValueError(
                f"the param groups are at different scheduler positions ({sorted(positions)}); "
                "one torch scheduler steps them all together"
            )
        target = positions.pop()
        current = torch_last_epoch(scheduler)
        if current > target:
            raise ValueError(
                f"the torch scheduler is ahead of the jaxupdate run: it has stepped "
                f"{current} times (last_epoch), the run is at {target}; give the scheduler "
                "from_torch converted (not stepped since), or a fresh one"
            )

    # --- the scheduler to the run's position
    want_lr, want_m = None, None
    if scheduler is not None and not plateau:
        if current < target:
            snap = _snapshot(torch_optimizer, scheduler)
            try:
                # chainable schedulers step from the group's lr: start from the one the
                # scheduler last set (not a value loaded or set since)
                for group, lr in zip(t_groups, scheduler.get_last_lr()):
                    _set_group_value(group, "lr", lr)
                with warnings.catch_warnings():
                    warnings.filterwarnings("ignore", message=_STEP_ORDER_WARNING)
                    for _ in range(target - current):
                        scheduler.step()
            except Exception as e:
                _restore(torch_optimizer, scheduler, snap)
                raise ValueError(
                    f"the torch {type(scheduler).__name__} could not be stepped from "
                    f"last_epoch {current} to the run's position {target}: {e}"
                ) from e
        want_lr = list(scheduler.get_last_lr())
        if _cycles_momentum(scheduler):
            want_m = [
                (k, g[k]) if (k := _momentum_key(g)) else None for g in t_groups
            ]

    # --- the optimizer state, keeping what the torch scheduler keeps in the groups
    tensors = []
    for new, old in zip(sd["param_groups"], t_groups):
        for key, value in old.items():
            new.setdefault(key, value)
        for key in _KERNEL_KEYS:  # the live optimizer's kernel choice, not the export's default
            if key in old:
                new[key] = old[key]
        tensors.append({k: v for k, v in old.items() if T.is_tensor(v) and k != "params"})
    torch_optimizer.load_state_dict(sd)
    for group, kept in zip(torch_optimizer.param_groups, tensors):
        for key, tensor in kept.items():
            if not T.is_tensor(group[key]) and isinstance(group[key], (int, float)):
                tensor.fill_(group[key])
                group[key] = tensor

    # --- the lrs (and cycled momenta) the scheduler wants
    if want_lr is not None:
        for g, (group, lr) in enumerate(zip(torch_optimizer.param_groups, want_lr)):
            _settle(group, "lr", lr, g, scheduler)
            if want_m is not None and want_m[g] is not None:
                key, value = want_m[g]
                if key == "betas":
                    run = group["betas"]
                    if _close(run[0], value[0]):
                        group["betas"] = (value[0], *tuple(run)[1:])
                    else:
                        _disagree("betas[0]", run[0], value[0], g, scheduler)
                else:
                    _settle(group, key, value, g, scheduler)
    if plateau:
        for name, value in plateau_attrs.items():
            setattr(scheduler, name, value)
        scheduler._last_lr = [group["lr"] for group in torch_optimizer.param_groups]

    # --- the parameters
    if copies:
        with torch.no_grad():
            for tensor, value in copies:
                tensor.copy_(value)


def _check_state(tx, opt_state, params):
    """``opt_state`` must be shaped as ``tx.init(params)``: the parameters are the run's.

    The comparison is ``validate_inputs``'s (the first mismatching path named)."""
    try:
        want = jax.eval_shape(tx.init, params)  # shapes only, nothing allocated
    except ValueError:
        raise  # the transformation's own message (e.g. from_torch: the number of leaves)
    except jax.errors.JAXTypeError:
        # an init that reads concrete values (from_torch's loads torch's state_dict)
        want = tx.init(params)
    check_state_fits(opt_state, want, "params", optimizer_name(tx))


def _settle(group: dict, key: str, wanted, g: int, scheduler):
    if _close(group[key], wanted):
        _set_group_value(group, key, wanted)  # torch's own rounding of the same value
    else:
        _disagree(key, group[key], wanted, g, scheduler, stacklevel=4)


def _disagree(key, run, wanted, g, scheduler, stacklevel=3):
    warnings.warn(
        f"param group {g}: the jaxupdate run's {key} is {_number(run)}, but the torch "
        f"{type(scheduler).__name__} at this position sets {_number(wanted)}; keeping the "
        "run's (set by hand? or the scheduler is not the run's schedule)",
        stacklevel=stacklevel,
    )


def _param_copies(layout, t_groups) -> list[tuple[Any, Any]]:
    """``(torch parameter, tensor)`` pairs, shapes and kinds checked."""
    out = []
    for g, (group, theirs) in enumerate(zip(layout.groups, t_groups)):
        for j, tensor in enumerate(theirs["params"]):
            pos = group.order[j]
            i = group.members[pos]
            value = layout.leaves[i]
            to_torch_fn = group.convert[j] and group.convert[j][1]
            if to_torch_fn is not None:
                value = to_torch_fn(value)
            a = np.asarray(value)
            where = f"parameter {j} of param group {g} ({layout.paths[i]!r})"
            if tuple(a.shape) != tuple(tensor.shape):
                raise ValueError(
                    f"{where} has shape {tuple(a.shape)}, the torch parameter "
                    f"{tuple(tensor.shape)}: give params in torch's order (or param_map)"
                )
            if np.iscomplexobj(a) != tensor.is_complex():
                raise ValueError(
                    f"{where} is {a.dtype}, the torch parameter {tensor.dtype}: one is complex"
                )
            out.append((tensor, T.to_tensor(a, tensor.dtype).to(tensor.device)))
    return out


__all__ = ["current_lr", "to_torch"]

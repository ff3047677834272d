"""``from_torch(optimizer, scheduler=None)``: the jaxupdate twin of a live torch optimizer.

A torch run is an optimizer (a class, param groups with their hyperparameters, per-parameter
state) and maybe a scheduler (its arguments and its position, ``last_epoch``).
:func:`from_torch` reads all of it and builds the equivalent jaxupdate transformation::

    opt = torch.optim.SGD([{"params": body}, {"params": head, "lr": 0.01}], lr=0.1,
                          momentum=0.9)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=[0.1, 0.01], total_steps=1000)
    ...                                          # torch trains for a while, then:
    tx = ju.from_torch(opt, sched)
    params = [jnp.asarray(p.detach().numpy()) for g in opt.param_groups for p in g["params"]]
    state = tx.init(params)                      # torch's current state and position
    for grads in ...:
        updates, state = tx.update(grads, state, params)
        params = ju.apply_updates(params, updates)

The parameters are a pytree whose leaves, in ``jax.tree.leaves`` order, are the optimizer's
parameters in param-group order (a list as above, or an ``OrderedDict`` from
:func:`jaxupdate.interop.weights.weights_from_torch` with ``optimizer=opt``, which orders a
module's parameters as the optimizer does: recipes such as timm's put biases and norms in a
first group, so the model's order is not the optimizer's; for a flax nnx model give
``load_torch_state_dict`` a ``param_map``). ``init`` checks every leaf's shape against the
torch parameter at its place and names the first that differs.

What carries over:

* the optimizer class (any of :data:`jaxupdate.interop.TORCH_OPTIMIZERS`), every param group
  with its own hyperparameters (a tensor ``lr`` becomes an array), as
  :func:`jaxupdate.param_groups.param_groups` groups;
* the optimizer's state: ``tx.init(params)`` returns the state loaded from
  ``optimizer.state_dict()`` as it was when ``from_torch`` was called (step counts, moment
  buffers, ...; :func:`jaxupdate.interop.load_torch_state_dict` does the same from any
  state_dict later), so continuing mid-run follows torch;
* the scheduler (any class of ``torch.optim.lr_scheduler``, SequentialLR and
  ChainedScheduler of them included): each group's lr becomes the matching
  :mod:`jaxupdate.lr_scheduler` schedule, positioned at the scheduler's ``last_epoch``;
  CyclicLR / OneCycleLR with ``cycle_momentum`` also schedule the group's ``momentum`` (or
  Adam's ``betas[0]``). ReduceLROnPlateau becomes an injected
  :func:`jaxupdate.lr_scheduler.reduce_lr_on_plateau` with torch's ``best``,
  ``num_bad_epochs``, ``cooldown_counter``; pass the metric to every update,
  ``tx.update(grads, state, params, value=metric)``, which applies it after that update as
  ``optimizer.step(); scheduler.step(metric)`` does.

The scheduler contract is torch's usual loop: ``scheduler.step()`` once after every
``optimizer.step()``. A scheduler stepped once per epoch (after ``steps_per_epoch``
optimizer steps) is ``from_torch(opt, sched, steps_per_epoch=len(loader))``, which wraps every
schedule in :func:`jaxupdate.lr_scheduler.per_epoch`; convert at an epoch boundary (after
``scheduler.step()``). ReduceLROnPlateau applies the metric at the update that receives
``value=``; a ReduceLROnPlateau stepped once per epoch (``scheduler.step(val_loss)`` after
the epoch's updates) is ``from_torch(opt, sched, steps_per_epoch=len(loader))``, whose
updates take no ``value=``: ``state = jaxupdate.lr_scheduler.step_plateau(tx, state,
val_loss)`` steps it. :func:`jaxupdate.interop.current_lr` reads each group's lr (torch's
``scheduler.get_last_lr()``) from any converted run.

Limits: an lr set by hand in torch (``group["lr"] = x`` while a scheduler runs) is not seen
(the schedule gives the scheduler's value; :func:`from_torch` warns when they differ).

Back to torch: :func:`jaxupdate.interop.to_torch` puts the state, the parameters and the
scheduler's position (ReduceLROnPlateau's included) into the live torch objects.
"""

from __future__ import annotations

import copy
import inspect
import math
import warnings
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxupdate._described import declaration
from jaxupdate.interop import _torch as T
from jaxupdate.interop.state_dict import load_torch_state_dict, optimizer_fn_for
from jaxupdate.lr_scheduler import inject_hyperparams, per_epoch
from jaxupdate.lr_scheduler._base import TORCH_SCHEDULERS, Schedule, as_count, as_float
from jaxupdate.lr_scheduler.plateau import ReduceLROnPlateau
from jaxupdate.param_groups import (
    ParamGroupsState,
    leaf_paths,
    param_groups,
)

_TORCH_ONLY = ("params", "foreach", "fused", "capturable", "differentiable")
_SCHEDULER_KEYS = ("initial_lr", "max_lr", "min_lr", "base_momentum", "max_momentum")


# ---------------------------------------------------------------------------------------------
# hyperparameters


def _value(v):
    """A param group value as jaxupdate takes it: tensors become arrays (also inside tuples)."""
    if T.is_tensor(v):
        return jnp.asarray(T.to_numpy(v))
    if isinstance(v, tuple):
        return tuple(_value(x) for x in v)
    if isinstance(v, list):
        return [_value(x) for x in v]
    return v


def _group_kwargs(fn, group: dict) -> dict:
    sig = inspect.signature(fn)
    return {k: _value(group[k]) for k in sig.parameters if k in group and k not in _TORCH_ONLY}


# ---------------------------------------------------------------------------------------------
# schedulers


def _schedule(s, g: int, group: dict) -> Schedule:
    """The jaxupdate schedule of torch scheduler ``s`` for param group ``g`` (from step 0): the
    ``from_torch`` of the schedule class registered under torch's class name."""
    name = type(s).__name__
    cls = TORCH_SCHEDULERS.get(name)
    if cls is None:
        raise NotImplementedError(f"no jaxupdate schedule for torch scheduler {name}")
    if T.is_plateau_scheduler(s):
        raise NotImplementedError(
            "ReduceLROnPlateau inside SequentialLR / ChainedScheduler: torch does not allow it"
        )
    base = s.base_lrs[g] if hasattr(s, "base_lrs") else group.get("initial_lr", group["lr"])
    if T.is_tensor(base):
        base = float(base)
    # a Python lambda is probed at the scheduler's position (a resumed scheduler may never
    # have called it at 0)
    probe = max(torch_last_epoch(s), 0)
    return cls.from_torch(s, g, group, base=base, probe=probe, convert=_schedule)


class Positioned(Schedule):
    """``inner`` continued from torch's position: at update ``count`` (``count >= start``,
    the optimizer's count when converted), the scheduler has stepped
    ``epoch + (count - start) // steps_per_epoch`` times."""

    def __init__(self, inner: Schedule, start: int, epoch: int, steps_per_epoch: int):
        self.inner, self.start, self.epoch, self.every = inner, start, epoch, steps_per_epoch
        self.lr, self.torch_name, self.absolute = inner.lr, inner.torch_name, inner.absolute
        if inner.momentum is not None:
            self.momentum = Positioned(inner.momentum, start, epoch, steps_per_epoch)
        self._repr_args = {"schedule": inner, "start": start, "last_epoch": epoch,
                           "steps_per_epoch": steps_per_epoch}

    def _at(self, count):
        return self.epoch + (as_count(count) - self.start) // self.every

    def __call__(self, count):
        return self.inner(self._at(count))

    def _closed(self, t):
        return self.inner(self._at(t))

    def _next(self, lr, t):
        return self.inner._next(lr, self._at(t))


def torch_last_epoch(s) -> int:
    """torch's ``last_epoch`` (ChainedScheduler keeps none: its members all have the same)."""
    if hasattr(s, "last_epoch"):
        return int(s.last_epoch)
    return torch_last_epoch(s._schedulers[-1])


def _steps_taken(spec, entries: list) -> int:
    """The count ``load_torch_state_dict`` gives a group with these torch state entries."""
    filled = [e for e in entries if e]
    if not filled:
        return 0
    if spec.has_step and spec.custom is None:
        return int(float(np.asarray(T.to_numpy(filled[0]["step"])).reshape(())))
    return 1


def _entries(optimizer, state_dict: dict) -> list[list[dict]]:
    out = []
    for saved in state_dict["param_groups"]:
        rows = []
        for i in saved["params"]:
            e = state_dict["state"].get(i)
            rows.append({k: v for k, v in dict(e).items() if v is not None} if e else {})
        out.append(rows)
    return out


# ---------------------------------------------------------------------------------------------


def from_torch(
    optimizer,
    scheduler=None,
    *,
    steps_per_epoch: Optional[int] = None,
    load_state: bool = True,
) -> optax.GradientTransformationExtraArgs:
    """The jaxupdate transformation equivalent to a live torch optimizer (and scheduler).

    Args:
      optimizer: a ``torch.optim`` optimizer of a class in
        :data:`jaxupdate.interop.TORCH_OPTIMIZERS` (all 15), with any param groups.
      scheduler: optionally a ``torch.optim.lr_scheduler`` scheduler of ``optimizer`` (any
        class, including SequentialLR, ChainedScheduler, ReduceLROnPlateau, CyclicLR /
        OneCycleLR with momentum cycling), stepped once after every ``optimizer.step()``.
      steps_per_epoch: the scheduler is stepped once per epoch, after this many optimizer
        steps (torch's ``scheduler.step()`` after the batch loop): every schedule is wrapped
        in :func:`jaxupdate.lr_scheduler.per_epoch`. With ReduceLROnPlateau (stepped with
        the epoch's validation metric, which exists only after the epoch's last update):
        updates leave the plateau alone and
        ``state = jaxupdate.lr_scheduler.step_plateau(tx, state, val_loss)`` is torch's
        ``scheduler.step(val_loss)``.
      load_state: ``tx.init(params)`` returns the torch optimizer's state as it is now
        (``optimizer.state_dict()`` loaded with
        :func:`jaxupdate.interop.load_torch_state_dict`); ``False``: a fresh state.

    Returns:
      An ``optax.GradientTransformationExtraArgs`` over a pytree whose leaves, in
      ``jax.tree.leaves`` order, are the optimizer's parameters in param-group order. It is a
      :func:`jaxupdate.param_groups.param_groups` transformation (state
      ``ParamGroupsState``, one entry per torch group), so
      :func:`jaxupdate.interop.load_torch_state_dict` (not with ReduceLROnPlateau, whose lr
      lives in an injected state) / ``torch_state_dict`` work with it.
      With ReduceLROnPlateau, call ``tx.update(grads, state, params, value=metric)``.

    Raises:
      NotImplementedError: an optimizer or scheduler class jaxupdate does not have.
      ValueError: the parameters given to ``init`` are not the optimizer's parameters in
        param-group order (a leaf's shape differs from the torch parameter's at its place),
        or do not match the torch state.

    Example::

        >>> import torch, jax.numpy as jnp
        >>> from jaxupdate.interop import from_torch
        >>> w = torch.nn.Parameter(torch.ones(2, dtype=torch.float64))
        >>> opt = torch.optim.Adam([w], lr=0.1)
        >>> sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
        >>> w.grad = torch.ones(2, dtype=torch.float64); opt.step(); sched.step()
        >>> tx = from_torch(opt, sched)
        >>> params = [jnp.asarray(w.detach().numpy())]
        >>> state = tx.init(params)                   # Adam's state after torch's step
        >>> updates, state = tx.update([jnp.ones(2, jnp.float64)], state, params)
        >>> w.grad = torch.ones(2, dtype=torch.float64); opt.step()
        >>> bool(jnp.allclose(params[0] + updates[0], jnp.asarray(w.detach().numpy())))
        True
    """
    fn = optimizer_fn_for(type(optimizer))
    spec = declaration(fn)
    if steps_per_epoch is not None and (
        not isinstance(steps_per_epoch, int) or steps_per_epoch <= 0
    ):
        raise ValueError(f"Expected positive integer steps_per_epoch, but got {steps_per_epoch}")
    every = steps_per_epoch or 1
    # a snapshot: state_dict() holds torch's live state tensors, which every later
    # optimizer.step() updates in place; init must load the state as it is now
    sd = copy.deepcopy(optimizer.state_dict())
    # keys torch's schedulers add to the groups (not optimizer hyperparameters)
    sd = {**sd, "param_groups": [
        {k: v for k, v in g.items() if k not in _SCHEDULER_KEYS} for g in sd["param_groups"]
    ]}
    entries = _entries(optimizer, sd)
    groups = optimizer.param_groups
    sizes = [len(g["params"]) for g in groups]
    check_order = _order_check(groups)
    kwargs = [_group_kwargs(fn, g) for g in groups]
    # torch reads these in its constructor only (Adagrad fills every group's sum with the
    # constructor's initial_accumulator_value, whatever the group says): param_groups builds
    # the groups' fresh states from its defaults for them
    ctor = {
        k: _value(optimizer.defaults[k])
        for k in spec.constructor_only
        if k in getattr(optimizer, "defaults", {})
    }
    plateau = T.is_plateau_scheduler(scheduler)
    if scheduler is not None and getattr(scheduler, "optimizer", optimizer) is not optimizer:
        raise ValueError("the scheduler belongs to another optimizer")

    if scheduler is not None and not plateau:
        epoch = torch_last_epoch(scheduler)
        for g, (group, kw) in enumerate(zip(groups, kwargs)):
            start = _steps_taken(spec, entries[g])
            sched = _schedule(scheduler, g, group)
            if steps_per_epoch is not None:
                sched = per_epoch(sched, steps_per_epoch)
                sched = Positioned(sched, start, epoch * every, 1)
            else:
                sched = Positioned(sched, start, epoch, 1)
            _check_lr(sched, start, group, g)
            kw["lr"] = sched
            if sched.momentum is not None:
                if "betas" in kw:
                    kw["betas"] = (sched.momentum, *tuple(kw["betas"])[1:])
                elif "momentum" in kw:
                    kw["momentum"] = sched.momentum

    if plateau:
        plain = _build(fn, kwargs, sizes, ctor)
        inj_kwargs = []
        for g, kw in enumerate(kwargs):
            kw = dict(kw)
            lr = groups[g]["lr"]
            lr = float(T.to_numpy(lr)) if T.is_tensor(lr) else lr
            kw["lr"] = ReduceLROnPlateau.from_torch(scheduler, g, groups[g], base=lr)
            if steps_per_epoch is not None:  # updates leave it alone, step_plateau steps it
                kw["lr"] = per_epoch(kw["lr"], steps_per_epoch)
            inj_kwargs.append(kw)
        tx = _build(inject_hyperparams(fn), inj_kwargs, sizes, ctor)
        torch_pos = dict(
            best=scheduler.best,
            num_bad_epochs=scheduler.num_bad_epochs,
            cooldown_counter=scheduler.cooldown_counter,
            last_epoch=scheduler.last_epoch,
        )

        def init_fn(params):
            check_order(params)
            state = tx.init(params)
            inner = plain.init(params)
            if load_state and sd["state"]:
                inner = load_torch_state_dict(plain, sd, params, strict=False)
            new = []
            for st, inn in zip(state.groups, inner.groups):
                ps = st.hyperparams_states["lr"]
                ps = ps._replace(
                    best=as_float(torch_pos["best"]),
                    num_bad_epochs=jnp.asarray(torch_pos["num_bad_epochs"], jnp.int32),
                    cooldown_counter=jnp.asarray(torch_pos["cooldown_counter"], jnp.int32),
                    last_epoch=jnp.asarray(torch_pos["last_epoch"], ps.last_epoch.dtype),
                )
                hs = {**st.hyperparams_states, "lr": ps}
                new.append(st._replace(hyperparams_states=hs, inner_state=inn))
            return ParamGroupsState(tuple(new))

        return optax.GradientTransformationExtraArgs(init_fn, tx.update)

    tx = _build(fn, kwargs, sizes, ctor)
    if not load_state or not sd["state"]:
        # torch keeps no state before the first step (Adagrad's is eager)
        def fresh_init(params):
            check_order(params)
            return tx.init(params)

        return optax.GradientTransformationExtraArgs(fresh_init, tx.update)

    def init_fn(params):
        check_order(params)
        # the values are the state_dict's own (scheduled ones replaced by their schedules)
        return load_torch_state_dict(tx, sd, params, strict=False)

    out = optax.GradientTransformationExtraArgs(init_fn, tx.update)  # keeps tx's description
    return out


def _order_check(groups: list):
    """A check of ``init``'s leaves against the torch parameters' shapes, in group order.

    Leaves in the model's order instead of the optimizer's (timm's and HF's recipes put
    biases and norms in a group of their own, first) would otherwise train with the wrong
    groups' hyperparameters, silently (fresh state) or with a shape error deep in the state
    loading. Equal shapes in swapped places cannot be told apart: use
    ``weights_from_torch(model, optimizer=opt)``, which orders by the optimizer.

    Each leaf is compared by its number of elements, not its shape: a flax nnx model keeps
    Linear and Conv kernels transposed (``(in, out)`` for torch's ``(out, in)``). With a single
    param group every leaf gets the same hyperparameters, so only the count is checked: an nnx
    model's leaves come in path order, not torch's, and that is fine there (a loaded state is
    checked leaf by leaf by the state loader).
    """
    want = [
        (g, j, tuple(p.shape), bool(p.is_complex()))
        for g, group in enumerate(groups)
        for j, p in enumerate(group["params"])
    ]
    sizes = [len(group["params"]) for group in groups]

    def check(params):
        paths, leaves, _ = leaf_paths(params)
        if len(leaves) != len(want):
            raise ValueError(
                f"the parameters have {len(leaves)} leaves, the torch optimizer {len(want)} "
                f"parameters ({sizes} per group): give a pytree whose leaves are the "
                "optimizer's parameters in param-group order"
            )
        if len(sizes) == 1:
            return
        for i, (path, x, (g, j, shape, cplx)) in enumerate(zip(paths, leaves, want)):
            have = tuple(jnp.shape(x))
            n = math.prod(shape) * (2 if cplx else 1)
            # complex as a real view; nnx kernels transposed
            if have == shape or math.prod(have) * (2 if jnp.iscomplexobj(x) else 1) == n:
                continue
            raise ValueError(
                f"leaf {i} ({path!r}) has shape {have}, but the torch optimizer's parameter "
                f"{i} (param group {g}, parameter {j}) has shape {shape}: the leaves must be "
                "the optimizer's parameters in param-group order, which is not the model's "
                "when groups are built by a recipe (timm, Hugging Face put biases and norms "
                "in their own group); build them with "
                "jaxupdate.interop.weights.weights_from_torch(model, optimizer=opt)"
            )

    return check


def _check_lr(sched: Schedule, start: int, group: dict, g: int):
    """Warns when the group's lr is not the scheduler's (set by hand, or stepped unusually)."""
    try:
        want = float(sched(start))
    except Exception:  # noqa: BLE001 - e.g. OneCycleLR past its end: torch raises at its step
        return
    have = group["lr"]
    have = float(T.to_numpy(have)) if T.is_tensor(have) else float(have)
    if not (math.isclose(want, have, rel_tol=1e-6, abs_tol=1e-15)):
        warnings.warn(
            f"param group {g} holds lr={have}, but its scheduler's value at last_epoch is "
            f"{want}; jaxupdate follows the scheduler (was the lr set by hand, or the "
            "scheduler stepped a different number of times than the optimizer? see "
            "steps_per_epoch)",
            stacklevel=3,
        )


def _build(fn, kwargs: list[dict], sizes: list[int], ctor: dict):
    """param_groups of ``fn``: one group per torch group; ``ctor``: constructor-only values."""
    if len(kwargs) == 1:
        if not ctor:
            return param_groups(fn, **kwargs[0])
        # a group of its own (every leaf) so that its constructor-only values are the
        # defaults' (torch.optim.Adagrad([{"params": ..., "initial_accumulator_value": x}]))
        return param_groups(fn, [{"params": None, **kwargs[0]}], **ctor)
    total = sum(sizes)
    owner = [g for g, n in enumerate(sizes) for _ in range(n)]

    def labels(tree):
        leaves, treedef = jax.tree.flatten(tree)
        if len(leaves) != total:
            raise ValueError(
                f"the parameters have {len(leaves)} leaves, the torch optimizer {total} "
                f"parameters ({sizes} per group): give a pytree whose leaves are the "
                "optimizer's parameters in param-group order"
            )
        return treedef.unflatten(owner)

    groups = [{"label": g, **kw} for g, kw in enumerate(kwargs)]
    return param_groups(fn, groups, labels=labels, **ctor)


__all__ = ["from_torch"]

"""Hyperparameters held in the optimizer state: torch's ``param_group`` entries, changeable by hand.

torch users change a hyperparameter mid-training with ``group["lr"] = x`` and schedulers do the
same at every ``scheduler.step()``. :func:`inject_hyperparams` wraps any jaxupdate optimizer so
that its float hyperparameters live in ``opt_state.hyperparams`` (jit-traced arrays, so a new
value never recompiles), advances jaxupdate schedules there in torch's chainable form (one step
per update, carrying on from a value set by hand, as torch's schedulers do), and
:func:`set_hyperparams` / :func:`get_hyperparams` read and write them.
"""

from __future__ import annotations

import functools
import inspect
from typing import Any, Callable, Iterable, NamedTuple, Union

import jax
import jax.numpy as jnp
import optax

from jaxupdate._described import Description, attach, description
from jaxupdate._hparams import is_number, is_static_zero, normalize, scalar_dtype
from jaxupdate.lr_scheduler._base import Schedule, as_count
from jaxupdate.lr_scheduler.plateau import ReduceLROnPlateau
from jaxupdate.param_groups import GroupsDescription, ParamGroupsState


class InjectState(NamedTuple):
    """State of an optimizer built with :func:`inject_hyperparams` (optax's field names).

    ``hyperparams`` holds what torch's ``param_group`` holds between steps: the values the
    next update will use (after ``count`` scheduler steps).
    """

    count: jax.Array
    hyperparams: dict
    hyperparams_states: dict
    inner_state: Any


_STATIC_ANNOTATIONS = (bool, int, str, "bool", "int", "str")


def _kind(v):
    """How a hyperparameter value evolves: None when it is not a float hyperparameter."""
    if isinstance(v, bool) or v is None or isinstance(v, str):
        return None
    if isinstance(v, ReduceLROnPlateau):
        return "plateau"
    if isinstance(v, Schedule):
        return "schedule"
    if callable(v) and hasattr(v, "init") and hasattr(v, "update"):
        return "stateful"  # an optax StatefulSchedule
    if callable(v) and not hasattr(v, "shape"):
        return "function"  # count -> value
    if is_number(v) or hasattr(v, "shape"):
        return "constant"
    return None


def _is_dynamic(param: inspect.Parameter, value) -> bool:
    if param.annotation in _STATIC_ANNOTATIONS or isinstance(param.default, bool):
        return False
    if isinstance(value, (tuple, list)):
        return len(value) > 0 and all(_kind(v) is not None for v in value)
    if is_static_zero(value):
        # torch skips the branch (``if weight_decay != 0``, ``if momentum != 0``): so does the
        # optimizer for a literal 0, and an injected 0 would not (SGD's dampening would apply)
        return False
    return _kind(value) is not None


def _scalar(v, name):
    return jnp.reshape(jnp.asarray(normalize(v, name), scalar_dtype()), ())


def _leaf_init(spec, *, name):
    kind = _kind(spec)
    if kind == "constant":
        return _scalar(spec, name), None
    if kind == "schedule":
        return _scalar(spec(0), name), None
    if kind == "function":
        return _scalar(spec(as_count(0)), name), None
    state = spec.init()  # plateau or optax StatefulSchedule
    return _scalar(spec(state), name), state


def _leaf_next(spec, value, state, *, name, count, extra_args):
    """The value the next update uses: torch's group entry after ``scheduler.step()``."""
    kind = _kind(spec)
    if kind == "constant":
        return value, None
    if kind == "schedule":
        return _scalar(spec.step(value, count), name), None
    if kind == "function":
        return _scalar(spec(count), name), None
    if kind == "plateau":
        if not spec.on_update:  # stepped once per epoch by step_plateau
            return value, state
        if extra_args.get("value") is None:
            raise ValueError(
                f"{name} is reduce_lr_on_plateau: pass the metric, "
                "tx.update(grads, opt_state, params, value=metric)"
            )
        state = spec.step(state._replace(lr=value), extra_args["value"])
        return state.lr, state
    state = spec.update(state, **extra_args)
    return _scalar(spec(state, **extra_args), name), state


def _map_spec(fn, spec, *rest):
    """Applies ``fn`` leafwise to a hyperparameter (a tuple such as ``betas``, or one value)."""
    if isinstance(spec, (tuple, list)):
        return tuple(fn(s, *(r[i] for r in rest)) for i, s in enumerate(spec))
    return fn(spec, *rest)


def inject_hyperparams(
    opt_fn: Callable[..., optax.GradientTransformation], static_args: Union[str, Iterable[str]] = ()
) -> Callable[..., optax.GradientTransformationExtraArgs]:
    r"""Wraps a jaxupdate optimizer so that its float hyperparameters live in ``opt_state``.

    ``inject_hyperparams(ju.adam)(lr=1e-3, betas=(0.9, 0.999))`` behaves as
    ``ju.adam(lr=1e-3, betas=(0.9, 0.999))`` (same numbers), with ``lr``, ``betas``, ``eps``,
    ``weight_decay`` ... kept as arrays in ``opt_state.hyperparams``. Like optax's
    ``inject_hyperparams`` (whose state field names it uses), with what jaxupdate's
    optimizers need:

    - bool, str and int-annotated arguments (``amsgrad``, ``nesterov``, ``maximize``,
      ``ns_steps``) stay static by themselves; ``static_args`` names more;
    - a literal ``0`` stays static too (``momentum=0``, ``weight_decay=0``): torch skips those
      branches (``if momentum != 0``) and so does the optimizer; pass ``jnp.asarray(0.0)`` to
      hold it in the state and switch it on later (SGD: only with ``dampening=0``, since an
      array momentum of 0 still goes through the momentum buffer);
    - tuple hyperparameters (``betas``, ``etas``, ``step_sizes``) are injected element by
      element;
    - a jaxupdate schedule advances in torch's chainable form: after each update the stored
      value ``v`` becomes ``schedule.step(v, count)``, torch's ``scheduler.step()`` on the
      group (O(1) per update, even for MultiplicativeLR and compositions), so a value set by
      hand is carried on from, as in torch; a plain function of ``count`` is evaluated at
      each count; ``reduce_lr_on_plateau`` steps with ``update(..., value=metric)``.

    ``opt_state.hyperparams`` holds what torch's ``param_group`` holds between steps: the
    values the next update will use. Change them with :func:`set_hyperparams`, the
    counterpart of torch's ``group["lr"] = x``, inside or outside ``jit``: the values are
    traced arrays of fixed dtype and shape, so nothing recompiles.

    ``optax.inject_hyperparams`` works with every jaxupdate optimizer too (its bool arguments
    are static there as well), but keeps tuples such as ``betas`` static, casts the values to
    the parameters' dtype (torch computes scalars in double precision) and evaluates
    schedules at the count rather than stepping them.

    The transformation describes itself as ``opt_fn`` with the arguments given (as
    ``ju.adam(...)`` does), so :func:`jaxupdate.interop.to_torch` and ``torch_state_dict``
    take it directly, exporting the injected values the next update uses as torch's
    param-group entries.

    Args:
      opt_fn: an optimizer factory, e.g. ``ju.sgd``.
      static_args: names of further arguments to keep static.

    Example::

        >>> import jax, jax.numpy as jnp, jaxupdate as ju
        >>> from jaxupdate.lr_scheduler import inject_hyperparams, set_hyperparams
        >>> tx = inject_hyperparams(ju.sgd)(lr=0.1, momentum=0.9)
        >>> params = {"w": jnp.ones(2)}
        >>> state = tx.init(params)
        >>> state = set_hyperparams(state, lr=0.01)       # torch: group["lr"] = 0.01
        >>> round(float(state.hyperparams["lr"]), 6)
        0.01
    """
    static_args = {static_args} if isinstance(static_args, str) else set(static_args)
    sig = inspect.signature(opt_fn)
    unknown = static_args - set(sig.parameters)
    if unknown:
        raise ValueError(f"static_args {sorted(unknown)} are not arguments of {opt_fn.__name__}")

    @functools.wraps(opt_fn)
    def factory(*args, **kwargs) -> optax.GradientTransformationExtraArgs:
        bound = sig.bind(*args, **kwargs)
        bound.apply_defaults()
        opt_fn(**bound.arguments)  # torch's construction-time checks, on the given values
        static, specs = {}, {}
        for name, value in bound.arguments.items():
            if name not in static_args and _is_dynamic(sig.parameters[name], value):
                specs[name] = tuple(value) if isinstance(value, list) else value
            else:
                static[name] = value

        def init_fn(params):
            hp, hs = {}, {}
            for name, spec in specs.items():
                pairs = _map_spec(functools.partial(_leaf_init, name=name), spec)
                if isinstance(spec, tuple):
                    hp[name] = tuple(p[0] for p in pairs)
                    hs[name] = tuple(p[1] for p in pairs)
                else:
                    hp[name], hs[name] = pairs
            inner = opt_fn(**static, **hp)
            return InjectState(jnp.zeros([], jnp.int32), hp, hs, inner.init(params))

        def update_fn(updates, state, params=None, **extra_args):
            inner = optax.with_extra_args_support(opt_fn(**static, **state.hyperparams))
            updates, inner_state = inner.update(updates, state.inner_state, params, **extra_args)
            count = optax.safe_increment(state.count)
            hp, hs = {}, {}
            for name, spec in specs.items():
                pairs = _map_spec(
                    functools.partial(_leaf_next, name=name, count=count, extra_args=extra_args),
                    spec,
                    state.hyperparams[name],
                    state.hyperparams_states[name],
                )
                if isinstance(spec, tuple):
                    hp[name] = tuple(p[0] for p in pairs)
                    hs[name] = tuple(p[1] for p in pairs)
                else:
                    hp[name], hs[name] = pairs
            return updates, InjectState(count, hp, hs, inner_state)

        tx = optax.GradientTransformationExtraArgs(init_fn, update_fn)
        # what described / param_groups record for a plain optimizer function: the function
        # (unwrapped, the key of the interop tables) and every argument as given (schedules
        # included; the current values live in the state, see plain_view)
        return attach(tx, Description(inspect.unwrap(opt_fn), dict(bound.arguments)))

    return factory


def _is_inject_state(s) -> bool:
    return isinstance(s, InjectState)


def _map_inject_states(state, fn):
    if _is_inject_state(state):
        return fn(state)
    if isinstance(state, tuple) and hasattr(type(state), "_fields"):
        return type(state)(*(_map_inject_states(s, fn) for s in state))
    if isinstance(state, (tuple, list)):
        return type(state)(_map_inject_states(s, fn) for s in state)
    if isinstance(state, dict):
        return {k: _map_inject_states(v, fn) for k, v in state.items()}
    return state


def plain_view(tx, opt_state):
    """``(tx, opt_state)`` as a plain described optimizer would have them.

    An :func:`inject_hyperparams` optimizer describes itself with the arguments it was built
    with (an lr schedule, a plateau), and keeps the values the next update uses (torch's
    param-group entries) in an :class:`InjectState` around the optimizer's own state. The
    torch exports read a description whose hyperparameters are the values and a state that
    is the optimizer's: the view swaps the two, for a described optimizer and for every
    group of a ``param_groups`` one. ``(tx, opt_state)`` come back unchanged when no injected
    state is involved (or the state does not fit ``tx``: the caller's checks report that).
    The view's ``tx`` is only a description: its ``init`` / ``update`` do nothing.
    """
    desc = description(tx)
    if isinstance(desc, GroupsDescription):
        if not isinstance(opt_state, ParamGroupsState) or len(opt_state.groups) != len(
            desc.groups
        ):
            return tx, opt_state
        if not any(_is_inject_state(s) for s in opt_state.groups):
            return tx, opt_state
        kwargs = [_values(g.kwargs, s) for g, s in zip(desc.groups, opt_state.groups)]
        view = desc._replace(
            groups=tuple(g._replace(kwargs=kw) for g, kw in zip(desc.groups, kwargs))
        )
        state = ParamGroupsState(
            tuple(s.inner_state if _is_inject_state(s) else s for s in opt_state.groups)
        )
    elif isinstance(desc, Description) and _is_inject_state(opt_state):
        view, state = desc._replace(kwargs=_values(desc.kwargs, opt_state)), opt_state.inner_state
    else:
        return tx, opt_state
    fake = optax.GradientTransformation(lambda p: None, lambda u, s, p=None: (u, s))
    return attach(fake, view), state


def _values(kwargs: dict, state) -> dict:
    """The arguments with the injected ones replaced by their current values."""
    if not _is_inject_state(state):
        return dict(kwargs)
    return {**kwargs, **state.hyperparams}


def _like(value, old, name):
    if isinstance(old, tuple):
        if not isinstance(value, (tuple, list)) or len(value) != len(old):
            raise ValueError(f"{name} holds {len(old)} values, got {value!r}")
        return tuple(_like(v, o, f"{name}[{i}]") for i, (v, o) in enumerate(zip(value, old)))
    if type(value).__module__.startswith("torch"):
        # a copy: the numpy view shares the tensor's memory, which torch updates in place
        value = value.detach().cpu().numpy().copy()
    # same dtype and shape as before, so jitted functions taking the state do not retrace
    return jnp.reshape(jnp.asarray(value, old.dtype), old.shape)


def set_hyperparams(opt_state, **values):
    """A new ``opt_state`` with hyperparameters replaced: torch's ``group[name] = value``.

    Works on the state of an optimizer built with :func:`inject_hyperparams` (or
    ``optax.inject_hyperparams``), also nested in ``optax.chain`` / ``multi_transform``
    states (every injected optimizer holding the name is set, like torch's loop over
    ``param_groups``). Values keep the stored dtype and shape, so a jitted step that takes the
    state does not recompile; inside ``jit`` the value may be traced (``jnp.where(step ==
    1000, 1e-4, lr)``). Tuple hyperparameters take a tuple (``betas=(0.95, 0.999)``).

    A jaxupdate schedule carries on from the value set (chainable schedulers multiply it,
    LambdaLR / CyclicLR / OneCycleLR recompute theirs at the next step), as in torch.

    Example::

        >>> import jax.numpy as jnp, jaxupdate as ju
        >>> from jaxupdate.lr_scheduler import inject_hyperparams, set_hyperparams
        >>> tx = inject_hyperparams(ju.adam)(lr=1e-3)
        >>> state = tx.init({"w": jnp.ones(3)})
        >>> state = set_hyperparams(state, lr=1e-4, betas=(0.95, 0.999))
    """
    found = []

    def replace(s):
        hp = dict(s.hyperparams)
        hits = [k for k in values if k in hp]
        if not hits:
            return s
        found.extend(hits)
        for k in hits:
            hp[k] = _like(values[k], hp[k], k)
        return s._replace(hyperparams=hp)

    new_state = _map_inject_states(opt_state, replace)
    missing = sorted(set(values) - set(found))
    if missing:
        have = sorted({k for s in _inject_states(opt_state) for k in s.hyperparams})
        if not have:
            raise ValueError(
                "no injected hyperparameters in this state: build the optimizer with "
                "jaxupdate.lr_scheduler.inject_hyperparams(ju.<optimizer>)(...)"
            )
        raise KeyError(
            f"no hyperparameter {missing} in the optimizer state (injected: {have}); "
            "arguments given as a literal 0, bools and ints are static: pass "
            "jnp.asarray(value) to inject_hyperparams to hold one in the state"
        )
    return new_state


def _inject_states(opt_state):
    out = []

    def collect(s):
        out.append(s)
        return s

    _map_inject_states(opt_state, collect)
    return out


def get_hyperparams(opt_state) -> dict:
    """The injected hyperparameters (the first injected optimizer's), torch's ``param_groups[0]``.

    Example::

        >>> import jax.numpy as jnp, jaxupdate as ju
        >>> from jaxupdate.lr_scheduler import get_hyperparams, inject_hyperparams
        >>> tx = inject_hyperparams(ju.sgd)(lr=0.1)
        >>> round(float(get_hyperparams(tx.init({"w": jnp.ones(2)}))["lr"]), 6)
        0.1
    """
    states = _inject_states(opt_state)
    if not states:
        raise ValueError(
            "no injected hyperparameters in this state: build the optimizer with "
            "jaxupdate.lr_scheduler.inject_hyperparams(ju.<optimizer>)(...)"
        )
    return dict(states[0].hyperparams)


def step_plateau(tx, opt_state, metric):
    """torch's ``scheduler.step(metric)`` of a ReduceLROnPlateau held in ``opt_state``.

    For an optimizer built with :func:`inject_hyperparams` (alone or in
    :func:`jaxupdate.param_groups.param_groups`, e.g. by
    ``jaxupdate.interop.from_torch(opt, plateau, steps_per_epoch=n)``) whose lr is a
    ``per_epoch(reduce_lr_on_plateau(...), n)``: every group's plateau takes ``metric``
    and the lr the next update uses becomes the plateau's, as after torch's
    ``scheduler.step(val_loss)`` at the end of an epoch. Pure and jittable (``tx`` static).

    Example::

        >>> import jax.numpy as jnp, jaxupdate as ju
        >>> from jaxupdate.lr_scheduler import (get_hyperparams, inject_hyperparams, per_epoch,
        ...                                     reduce_lr_on_plateau, step_plateau)
        >>> tx = inject_hyperparams(ju.sgd)(
        ...     lr=per_epoch(reduce_lr_on_plateau(0.1, patience=0), steps_per_epoch=100))
        >>> state = tx.init({"w": jnp.ones(2)})
        >>> for val_loss in (1.0, 1.0):                        # no improvement: lr * 0.1
        ...     state = step_plateau(tx, state, val_loss)
        >>> round(float(get_hyperparams(state)["lr"]), 6)
        0.01
    """
    desc = description(tx)
    if isinstance(desc, GroupsDescription) and isinstance(opt_state, ParamGroupsState):
        pairs = [(g.kwargs, s) for g, s in zip(desc.groups, opt_state.groups)]
    elif isinstance(desc, Description):
        pairs = [(desc.kwargs, opt_state)]
    else:
        pairs = []
    found = []
    out = []
    for kwargs, st in pairs:
        if _is_inject_state(st):
            hp, hs = dict(st.hyperparams), dict(st.hyperparams_states)
            for name, spec in kwargs.items():
                if isinstance(spec, ReduceLROnPlateau) and name in hs:
                    ps = spec.step(hs[name]._replace(lr=hp[name]), metric)
                    hp[name], hs[name] = ps.lr, ps
                    found.append(name)
            st = st._replace(hyperparams=hp, hyperparams_states=hs)
        out.append(st)
    if not found:
        raise ValueError(
            "step_plateau: no reduce_lr_on_plateau in this transformation's groups; build it "
            "with inject_hyperparams(ju.<optimizer>)(lr=reduce_lr_on_plateau(...)) (alone or "
            "in param_groups), or with from_torch(opt, plateau, steps_per_epoch=n)"
        )
    if isinstance(desc, GroupsDescription):
        return ParamGroupsState(tuple(out))
    return out[0]

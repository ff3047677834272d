"""torch optimizer ``state_dict`` <-> jaxupdate optimizer state, to move a run mid-flight.

:func:`load_torch_state_dict` turns ``torch_optimizer.state_dict()`` into the state of the
equivalent jaxupdate transformation, and :func:`torch_state_dict` turns a jaxupdate state back
into a dict that ``torch_optimizer.load_state_dict`` accepts. Continuing after the conversion,
in either direction, follows the trajectory torch would have followed.

How a torch state_dict maps onto a jaxupdate state:

* torch numbers the parameters group after group (``param_groups[g]["params"]`` are indices
  into ``state``). jaxupdate's parameters of a group are its leaves in ``jax.tree.leaves``
  order: every leaf of ``params`` for a plain optimizer, the group's leaves for a
  :func:`jaxupdate.param_groups.param_groups` transformation. JAX sorts dict keys, so build
  ``params`` in torch's order when it matters (an ``OrderedDict``, e.g. from
  :func:`jaxupdate.interop.weights.weights_from_torch`), or pass ``param_map``: torch's
  order as leaf paths, with layout functions for flax nnx models (transposed kernels; see
  :func:`jaxupdate.interop.weights.nnx_param_map`, :func:`opt_state_into_nnx`).
* jaxupdate's state NamedTuples name their fields after torch's state keys (``exp_avg``,
  ``momentum_buffer``, ``square_avg``, ...), and the optimizer's one step count (updates
  applied, :func:`jaxupdate.transforms.step_count`) is torch's ``step``, saved as torch
  saves it: a 0-d tensor of torch's scalar dtype (float32). State
  that torch keeps per parameter but jaxupdate once per group (``step``, NAdam's
  ``mu_product``, ASGD's ``eta`` and ``mu``) must agree across the group's parameters.
* Complex parameters: jaxupdate keeps their buffers as real pairs (trailing axis 2, torch's
  ``view_as_real``), torch as complex tensors; they are converted both ways.
* Before the first step torch keeps no state (except Adagrad's), so neither does the
  exported dict; SGD's momentum buffer (``None`` before the first step) appears after it.
  SGD and Muon keep no ``step``: loading them sets the count to 1 after the first step
  (``step=`` gives the real one, which only scheduled hyperparameters need).
* L-BFGS keeps one flat state (history lists, ``d``, ``t``, ...) on the first parameter;
  it maps onto :class:`jaxupdate.optim.lbfgs.LBFGSState` (its ring buffers in torch's order).
* torch's ``load_state_dict`` casts every state tensor but ``step`` to the parameter dtype,
  NAdam's ``mu_product`` and ASGD's ``eta``/``mu`` included (float32 -> float64 for float64
  parameters): a torch run resumed from any checkpoint, its own or an exported one, then
  drifts from the uninterrupted run by ~1e-12 relative (measured 3.4e-12 after 4 NAdam
  steps). Loaded into jaxupdate, they stay float32, as in the uninterrupted torch run.

Which transformations: those that describe themselves -- built by
:func:`jaxupdate.param_groups.param_groups` (any groups, per-group hyperparameters), by
``jaxupdate._described.described(fn)``, or by ``from_torch``. Their optimizer class and
hyperparameters are checked against the state_dict's ``param_groups`` and written into the
exported one. A plain undescribed transformation can still be loaded into (one group, state
keys checked, hyperparameters not) but not exported.

:data:`TORCH_OPTIMIZERS` lists the supported optimizers: each optimizer module declares its
torch class and state keys with ``jaxupdate._described.torch_optimizer``. The conversion is a
generic walk over the state's NamedTuples; a state of another shape (LBFGS, SparseAdam) is
converted by functions in its optimizer's module, named there (:class:`CustomState`).
"""

from __future__ import annotations

import math
import sys
from typing import Callable, NamedTuple, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxupdate._described import (
    TORCH_OPTIMIZERS,
    CustomState,
    Description,
    TorchOptimizer,
    declaration,
    declarations,
    description,
    fn_qualname,
)
from jaxupdate._hparams import is_number, is_schedule, resolve
from jaxupdate.fused._flat import flatten_like, unflatten_state
from jaxupdate.interop import _torch as T
from jaxupdate.interop.weights import NnxLink
from jaxupdate.lr_scheduler.inject import plain_view
from jaxupdate.param_groups import GroupsDescription, assign, leaf_paths
from jaxupdate.transforms.common import CountState, step_count, with_step_count


def _find(node, pred):
    if pred(node):
        return node
    if isinstance(node, (tuple, list)):
        for x in node:
            found = _find(x, pred)
            if found is not None:
                return found
    return None


def _own_state(gstate, custom: CustomState):
    """The optimizer's own state (a ``custom.state_type``) inside a group's state."""
    found = _find(gstate, lambda x: isinstance(x, custom.state_type))
    if found is None:
        raise ValueError(f"the state holds no {custom.state_type.__name__}")
    return found


def _replace_state(gstate, custom: CustomState, new):
    """``gstate`` with its ``custom.state_type`` state replaced by ``new``."""
    return _replace_found(gstate, lambda x: isinstance(x, custom.state_type), new)


def _replace_found(node, pred, new):
    if pred(node):
        return new
    if is_namedtuple(node):
        return node._replace(
            **{f: _replace_found(getattr(node, f), pred, new) for f in node._fields}
        )
    if isinstance(node, (tuple, list)):
        return type(node)(_replace_found(x, pred, new) for x in node)
    return node


def _all_keys() -> tuple:
    """``(state keys, scalar keys)`` any declared optimizer keeps, for transformations that do
    not describe themselves."""
    decls = declarations()
    keys = dict.fromkeys(k for d in decls if d.custom is None for k in d.state_keys)
    return tuple(keys), tuple(dict.fromkeys(k for d in decls for k in d.scalar_keys))


# param-group keys that choose torch kernels or belong to schedulers / named parameters
_TORCH_ONLY_KEYS = ("foreach", "fused", "capturable", "differentiable")
# Keys torch's schedulers add to a param group (LRScheduler: initial_lr; CyclicLR / OneCycleLR:
# max_lr, min_lr, base_momentum, max_momentum): scheduler state, not optimizer hyperparameters.
_IGNORED_GROUP_KEYS = (
    "params",
    "param_names",
    "initial_lr",
    "max_lr",
    "min_lr",
    "base_momentum",
    "max_momentum",
)


class _Group(NamedTuple):
    kwargs: Optional[dict]  # the optimizer function's arguments, None when unknown
    members: list  # leaf indices (into the whole params) of the group, in container order
    order: list  # order[j]: the container position of torch's j-th parameter of the group
    convert: list  # convert[j]: None or (to_jax, to_torch) layout functions, torch order


def _group(kwargs, members) -> _Group:
    n = len(members)
    return _Group(kwargs, members, list(range(n)), [None] * n)


class StateLayout(NamedTuple):
    """Where a transformation's torch groups and parameters are (from :func:`state_layout`)."""

    spec: Optional[TorchOptimizer]
    name: str
    grouped: bool  # a param_groups() state (ParamGroupsState) or a plain optimizer state
    whole: bool  # param_groups() without groups: its one group sees the whole tree
    groups: list
    paths: list
    leaves: list


def optimizer_fn_for(torch_class) -> Callable:
    """The jaxupdate optimizer function for a ``torch.optim`` class (or its name).

    For building the equivalent transformation of a live torch optimizer (``from_torch``):
    ``param_groups(optimizer_fn_for(type(opt)), groups, **hyperparameters)``.

    Example::

        >>> from jaxupdate.interop import optimizer_fn_for
        >>> optimizer_fn_for("AdamW").__name__
        'adamw'
    """
    name = torch_class if isinstance(torch_class, str) else torch_class.__name__
    declarations()  # every optimizer module imported, so declared
    decl = declaration(name)
    if decl is None:
        raise NotImplementedError(f"no jaxupdate optimizer for torch.optim.{name}")
    return decl.fn


def _spec_for(fn: Callable) -> TorchOptimizer:
    spec = declaration(fn)
    if spec is None:
        raise NotImplementedError(
            f"no torch state_dict mapping for {fn.__name__} ({fn_qualname(fn)}); the supported "
            f"optimizers are {sorted(TORCH_OPTIMIZERS)} (declare it with "
            "jaxupdate._described.torch_optimizer in its module; see TORCH_OPTIMIZERS)"
        )
    return spec


def state_layout(tx, params, *, need_description: bool) -> StateLayout:
    """The torch view of ``tx`` over ``params``: optimizer class, groups and their leaves.

    ``need_description``: raise a ``TypeError`` for a transformation that does not say which
    optimizer it is (otherwise it is one group of every leaf, with no torch class).

    Example::

        >>> import jax.numpy as jnp
        >>> from jaxupdate.optim.adam import adam
        >>> layout = state_layout(adam(lr=0.1), [jnp.ones(2)], need_description=True)
        >>> layout.spec.torch_class, layout.groups[0].members
        ('Adam', [0])
    """
    desc = description(tx)
    if isinstance(desc, GroupsDescription):
        paths, leaves, _, members = assign(desc, params)
        groups = [_group(g.kwargs, m) for g, m in zip(desc.groups, members)]
        spec = _spec_for(desc.fn)
        return StateLayout(spec, desc.name, True, desc.whole, groups, paths, leaves)
    paths, leaves, _ = leaf_paths(params)
    everything = list(range(len(leaves)))
    if isinstance(desc, Description):
        spec = _spec_for(desc.fn)
        groups = [_group(desc.kwargs, everything)]
        return StateLayout(spec, desc.name, False, False, groups, paths, leaves)
    if need_description:
        raise TypeError(
            "this transformation does not say which optimizer it is or its hyperparameters, "
            "which torch's param_groups need: build it with jaxupdate.param_groups.param_groups"
            "(ju.adam, lr=...) (one group holding every leaf, or torch-style groups), or "
            "with jaxupdate._described.described(ju.adam)(lr=...)"
        )
    groups = [_group(None, everything)]
    return StateLayout(None, "the transformation", False, False, groups, paths, leaves)


def _parse_link(entry):
    """A ``param_map`` entry as ``(path, to_jax, to_torch)``."""
    if isinstance(entry, str):
        return entry, None, None
    if isinstance(entry, NnxLink):
        return entry.nnx_path, entry.to_nnx, entry.to_torch
    if isinstance(entry, (tuple, list)) and len(entry) == 3 and isinstance(entry[0], str):
        return tuple(entry)
    raise TypeError(
        "param_map entries are leaf paths, (path, to_jax, to_torch) triples or "
        f"jaxupdate.interop.weights.NnxLink objects, got {entry!r}"
    )


def apply_param_map(layout: StateLayout, param_map) -> StateLayout:
    """Puts the groups' parameters in the torch order that ``param_map`` gives."""
    links = [_parse_link(e) for e in param_map]
    index = {p: i for i, p in enumerate(layout.paths)}
    total = sum(len(g.members) for g in layout.groups)
    if len(links) != total:
        raise ValueError(
            f"param_map has {len(links)} entries, but the optimizer has {total} parameters"
        )
    groups, start = [], 0
    for g, group in enumerate(layout.groups):
        position = {leaf: pos for pos, leaf in enumerate(group.members)}
        order, convert = [], []
        for path, to_jax, to_torch in links[start : start + len(group.members)]:
            if path not in index:
                raise KeyError(f"param_map names {path!r}, which is not a leaf of params")
            if index[path] not in position:
                raise ValueError(
                    f"param_map puts {path!r} among torch's parameters of group {g}, but it "
                    "is not in that group here"
                )
            order.append(position[index[path]])
            convert.append(None if to_jax is None and to_torch is None else (to_jax, to_torch))
        if len(set(order)) != len(order):
            raise ValueError(f"param_map names a leaf of group {g} twice")
        groups.append(group._replace(order=order, convert=convert))
        start += len(group.members)
    return layout._replace(groups=groups)


def _group_state(layout: StateLayout, opt_state, g: int):
    if layout.grouped:
        return opt_state.groups[g]
    return opt_state


def _group_container(layout: StateLayout, params, g: int):
    """The params container the group's optimizer sees (its treedef maps state to leaves)."""
    if layout.grouped and not layout.whole:
        return [layout.leaves[i] for i in layout.groups[g].members]
    return params


def unwrap_nnx(tree):
    """``tree`` with flax nnx ``Variable`` nodes replaced by their values.

    ``nnx.state(model, nnx.Param)`` holds ``Param`` nodes and ``nnx.Optimizer`` keeps its
    state in ``OptVariable`` / ``OptArray`` nodes; the conversion works on the arrays.
    """
    nnx = sys.modules.get("flax.nnx")
    if nnx is None:
        return tree

    def is_var(x):
        return isinstance(x, nnx.Variable)

    def value(x):
        return x.get_value() if hasattr(x, "get_value") else x.value

    return jax.tree.map(lambda x: value(x) if is_var(x) else x, tree, is_leaf=is_var)


def _rewrap(like, tree):
    """``tree`` (plain arrays) with the nnx ``Variable`` nodes of ``like`` put back."""
    nnx = sys.modules.get("flax.nnx")
    if nnx is None:
        return tree

    def is_var(x):
        return isinstance(x, nnx.Variable)

    return jax.tree.map(lambda v, x: v.replace(x) if is_var(v) else x, like, tree, is_leaf=is_var)


def opt_state_from_nnx(optimizer):
    """The optax state inside an ``nnx.Optimizer``, as plain arrays (for torch_state_dict)."""
    return unwrap_nnx(optimizer.opt_state)


def opt_state_into_nnx(optimizer, opt_state) -> None:
    """Puts ``opt_state`` (e.g. from :func:`load_torch_state_dict`) into an ``nnx.Optimizer``.

    Example::

        >>> import torch, jax.numpy as jnp
        >>> from flax import nnx
        >>> from jaxupdate.optim.sgd import sgd
        >>> from jaxupdate.param_groups import param_groups
        >>> from jaxupdate.interop.weights import nnx_param_map
        >>> from jaxupdate.interop import load_torch_state_dict, opt_state_into_nnx
        >>> t = torch.nn.Linear(2, 1)
        >>> t_opt = torch.optim.SGD(t.parameters(), lr=0.1, momentum=0.9)
        >>> t(torch.ones(1, 2)).sum().backward(); t_opt.step()
        >>> model = nnx.Linear(2, 1, rngs=nnx.Rngs(0))
        >>> tx = param_groups(sgd, lr=0.1, momentum=0.9)
        >>> optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)
        >>> pmap = nnx_param_map(model, [n for n, _ in t.named_parameters()])
        >>> state = load_torch_state_dict(tx, t_opt.state_dict(), nnx.state(model, nnx.Param),
        ...                               param_map=pmap)
        >>> opt_state_into_nnx(optimizer, state)
        >>> optimizer.opt_state.groups[0][0].momentum_buffer["kernel"][...].tolist()
        [[1.0], [1.0]]
    """
    nnx = sys.modules["flax.nnx"]

    def is_var(x):
        return isinstance(x, nnx.Variable)

    def put(var, value):
        if is_var(var):
            var.set_value(value) if hasattr(var, "set_value") else setattr(var, "value", value)
            return var
        return value

    optimizer.opt_state = jax.tree.map(
        put, optimizer.opt_state, unwrap_nnx(opt_state), is_leaf=is_var
    )


# ---------------------------------------------------------------------------------------------
# Walking an optimizer state: NamedTuples whose fields are torch keys, counts, or more states.


class _Unknown(Exception):
    pass


_RECURSE = object()


def is_namedtuple(x) -> bool:
    """Whether ``x`` is a NamedTuple instance (the node type of optimizer states)."""
    return isinstance(x, tuple) and hasattr(x, "_fields")


def _is_array(x) -> bool:
    return hasattr(x, "shape") and hasattr(x, "dtype")


def _walk(node, on_field: Callable, where: str = "state"):
    """Rebuilds ``node``; ``on_field(name, value, where)`` gives each NamedTuple field's value.

    ``on_field`` returns ``_RECURSE`` to descend into the value. Arrays met while descending
    (a field the mapping does not know) raise ``_Unknown``.
    """
    if node is None:
        return None
    if is_namedtuple(node):
        new = {}
        for f in node._fields:
            v = getattr(node, f)
            here = f"{where}.{type(node).__name__}.{f}"
            r = on_field(f, v, here)
            new[f] = _walk(v, on_field, here) if r is _RECURSE else r
        return node._replace(**new) if new else node
    if isinstance(node, (tuple, list)):
        return type(node)(_walk(x, on_field, f"{where}[{i}]") for i, x in enumerate(node))
    if isinstance(node, dict):
        return type(node)((k, _walk(v, on_field, f"{where}[{k!r}]")) for k, v in node.items())
    if _is_array(node):
        raise _Unknown(where)
    return node


def _keys(spec: Optional[TorchOptimizer]):
    if spec is None:
        return _all_keys()
    return spec.state_keys, spec.scalar_keys


def _unknown_field_error(layout: StateLayout, where: str):
    return ValueError(
        f"{layout.name}'s state holds {where}, which has no torch counterpart known to "
        "jaxupdate.interop (its fields must be named after torch's state keys; see "
        "TORCH_OPTIMIZERS)"
    )


def _read_group(layout: StateLayout, gstate, container) -> tuple[list[dict], dict]:
    """``(per-position {key: array}, scalars {key: array})`` of one group's state."""
    keys, scalar_keys = _keys(layout.spec)
    treedef = jax.tree.structure(container)
    n = treedef.num_leaves
    per_param, scalars = [dict() for _ in range(n)], {}

    def on_field(f, v, where):
        if f in keys and f != "step":
            if v is None:
                return v
            if f in scalar_keys:
                scalars[f] = v
            else:
                for j, x in enumerate(treedef.flatten_up_to(v)):
                    if x is not None:
                        per_param[j][f] = x
        elif v is not None and not _is_array(v):
            return _RECURSE
        elif v is not None:
            raise _Unknown(where)
        return v

    # the step count is read by step_count, not here
    no_count = jax.tree.map(
        lambda x: None if isinstance(x, CountState) else x,
        gstate,
        is_leaf=lambda x: isinstance(x, CountState),
    )
    try:
        _walk(no_count, on_field)
    except _Unknown as e:
        raise _unknown_field_error(layout, str(e)) from None
    return per_param, scalars


# ---------------------------------------------------------------------------------------------
# Hyperparameters: torch's param group for a jaxupdate group.


def _plain(v, count: int):
    """A hyperparameter as torch holds it in a param group: schedules at the current count."""
    if isinstance(v, (bool, str)) or v is None:
        return v
    if isinstance(v, (tuple, list)):
        return type(v)(_plain(x, count) for x in v)
    if is_number(v):
        return v
    if is_schedule(v):
        v = resolve(v, jnp.asarray(count, jnp.int32))
    if _is_array(v) or T.is_tensor(v):
        return float(np.asarray(T.to_numpy(v)).reshape(()))
    return v


def _torch_group(spec: TorchOptimizer, kwargs: dict, count: int) -> dict:
    """torch's own param group (all its keys) for these hyperparameters, built by torch."""
    torch = T.torch()
    cls = getattr(torch.optim, spec.torch_class)
    values = {k: _plain(v, count) for k, v in kwargs.items()}
    dummy = torch.nn.Parameter(torch.zeros(spec.dummy_shape))
    group = dict(cls([dummy], **values).param_groups[0])
    del group["params"]
    return group


def _same(a, b) -> bool:
    a, b = _plain(a, 0), _plain(b, 0)
    if isinstance(a, (tuple, list)) or isinstance(b, (tuple, list)):
        if not (isinstance(a, (tuple, list)) and isinstance(b, (tuple, list))):
            return False
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, bool) or isinstance(b, bool) or a is None or b is None:
        return a == b
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        # a float32 tensor hyperparameter on one side and its value on the other are equal
        return a == b or np.float32(a) == np.float32(b) or (math.isnan(a) and math.isnan(b))
    return a == b


def _check_group(layout: StateLayout, g: int, kwargs: dict, saved: dict, strict: bool):
    # scheduled values are skipped below, so the count they are read at does not matter
    expected = _torch_group(layout.spec, kwargs, 0)
    cls = f"torch.optim.{layout.spec.torch_class}"
    saved_keys = set(saved) - set(_IGNORED_GROUP_KEYS)
    missing = sorted(set(expected) - saved_keys - set(_TORCH_ONLY_KEYS))
    unexpected = sorted(saved_keys - set(expected))
    if missing or unexpected:
        raise ValueError(
            f"param group {g} of the state_dict is not one of {cls} (was it saved from another "
            f"optimizer class?): missing keys {missing}, unexpected keys {unexpected}"
        )
    if not strict:
        return
    differ = []
    for k, v in expected.items():
        if k in _TORCH_ONLY_KEYS or k not in saved:
            continue
        if k in kwargs and (is_schedule(kwargs[k]) or isinstance(kwargs[k], jax.core.Tracer)):
            continue  # a scheduled value is the scheduler's business
        if not _same(v, saved[k]):
            differ.append(f"{k}: {saved[k]!r} in the state_dict, {v!r} here")
    if differ:
        raise ValueError(
            f"param group {g}: the state_dict's hyperparameters differ from the "
            f"transformation's ({'; '.join(differ)}); build the transformation with the "
            f"state_dict's values, or pass strict=False to load the state anyway"
        )


# ---------------------------------------------------------------------------------------------
# torch -> jaxupdate


def _torch_entry(entry) -> dict:
    """A torch per-parameter state dict without ``None`` values (SGD's fresh buffer)."""
    if entry is None:
        return {}
    return {k: v for k, v in dict(entry).items() if v is not None}


def _as_template(x, template, where: str, to_jax=None):
    """torch tensor (or array) ``x`` as an array shaped and typed like ``template``.

    ``to_jax`` changes the layout first (e.g. a transposed kernel); a complex value becomes
    jaxupdate's real view when the template is real.
    """
    a = T.to_numpy(x)
    if to_jax is not None:
        a = np.asarray(to_jax(jnp.asarray(a)))
    if np.iscomplexobj(a) and not jnp.iscomplexobj(template):
        a = np.stack([a.real, a.imag], axis=-1)
    if a.shape != tuple(template.shape):
        raise ValueError(f"{where} has shape {tuple(a.shape)}, expected {tuple(template.shape)}")
    if np.iscomplexobj(a) and not jnp.iscomplexobj(template):
        raise ValueError(f"{where} is complex, expected a real {template.dtype} array")
    return jnp.asarray(a, dtype=template.dtype)


def _scalar_value(values: list, where: str) -> float:
    vals = [float(np.asarray(T.to_numpy(v)).reshape(())) for v in values]
    if len(set(vals)) > 1:
        raise ValueError(
            f"{where} differs between the parameters of the group ({sorted(set(vals))}); "
            "jaxupdate keeps one value per group, as every parameter of a torch group moves "
            "together unless some had no gradient at some step"
        )
    return vals[0]


def load_torch_state_dict(
    tx,
    state_dict: dict,
    params,
    *,
    strict: bool = True,
    step: Optional[int] = None,
    param_map: Optional[Sequence] = None,
):
    """The jaxupdate state of ``tx`` equivalent to ``torch_optimizer.state_dict()``.

    Args:
      tx: the jaxupdate transformation that continues the run: from
        :func:`jaxupdate.param_groups.param_groups` (as many groups as the torch optimizer,
        in its order, the same number of parameters each), a described optimizer, or
        ``from_torch``; or any plain jaxupdate optimizer (then one group, and the
        hyperparameters are not checked).
      state_dict: ``torch_optimizer.state_dict()`` (tensors on any device), or the same
        loaded with ``torch.load(path, weights_only=True)``.
      params: the current parameters (a pytree); group ``g``'s leaves, in
        ``jax.tree.leaves`` order, are torch's parameters ``param_groups[g]["params"]``.
      strict: also require the state_dict's hyperparameters to equal ``tx``'s (scheduled
        values excepted). The optimizer class, group sizes, state keys and shapes are always
        checked.
      step: the number of steps already taken, for optimizers whose torch state keeps none
        (SGD, Muon); it only matters when hyperparameters are schedules. By default 0 before
        the first step and 1 after it (which settles SGD's first-step buffer rule).
      param_map: when ``params`` are not in torch's order or layout (a flax nnx model: sorted
        names, transposed kernels), one entry per torch parameter in torch's order (all
        groups): the leaf's ``"/"``-joined path, a ``(path, to_jax, to_torch)`` triple of
        layout functions, or a :class:`jaxupdate.interop.weights.NnxLink` (see
        :func:`jaxupdate.interop.weights.nnx_param_map`). Layout functions are applied to
        every per-parameter buffer: exact for the elementwise optimizers, not for Adafactor
        and Muon, whose arithmetic depends on the layout.

    Returns:
      ``opt_state`` for ``tx.update(grads, opt_state, params)``, shaped as ``tx.init(params)``
      (:func:`opt_state_into_nnx` puts it into an ``nnx.Optimizer``).

    Raises:
      ValueError: different numbers of groups or of parameters in a group (torch's
        messages), a state_dict from another optimizer class or with other options (e.g.
        ``amsgrad``), other hyperparameters (``strict``), wrong shapes, or parameters of one
        group at different steps.

    Example::

        >>> import torch, jax.numpy as jnp
        >>> from jaxupdate.optim.adam import adam
        >>> from jaxupdate.param_groups import param_groups
        >>> from jaxupdate.interop import load_torch_state_dict
        >>> from jaxupdate.transforms import step_count
        >>> w = torch.nn.Parameter(torch.ones(3))
        >>> opt = torch.optim.Adam([w], lr=0.1)
        >>> w.grad = torch.ones(3); opt.step()
        >>> tx = param_groups(adam, lr=0.1)                     # one group, every leaf
        >>> params = [jnp.asarray(w.detach().numpy())]
        >>> state = load_torch_state_dict(tx, opt.state_dict(), params)
        >>> adam_state = state.groups[0][0]                     # group 0, first block
        >>> int(step_count(state.groups[0])), adam_state.exp_avg[0].tolist()
        (1, [0.10000000149011612, 0.10000000149011612, 0.10000000149011612])
    """
    wrapped = tx.init(params)
    # a fused optimizer's flat state (jaxupdate.fused._flat): loaded per leaf, flattened back
    template = unflatten_state(unwrap_nnx(wrapped))
    params = unwrap_nnx(params)
    layout = state_layout(tx, params, need_description=False)
    if param_map is not None:
        layout = apply_param_map(layout, param_map)
    saved_groups = list(state_dict["param_groups"])
    saved_state = state_dict["state"]
    if len(saved_groups) != len(layout.groups):
        raise ValueError(
            "loaded state dict has a different number of parameter groups "
            f"({len(saved_groups)} in the state_dict, {len(layout.groups)} here)"
        )
    new_groups = []
    for g, (group, saved) in enumerate(zip(layout.groups, saved_groups)):
        ids = list(saved["params"])
        if len(ids) != len(group.members):
            raise ValueError(
                "loaded state dict contains a parameter group that doesn't match the size of "
                f"optimizer's group (group {g}: {len(ids)} parameters in the state_dict, "
                f"{len(group.members)} leaves here)"
            )
        entries = [_torch_entry(saved_state.get(i)) for i in ids]
        new_groups.append(
            _load_group(layout, g, group, saved, entries, template, params, strict, step)
        )
    new = template._replace(groups=tuple(new_groups)) if layout.grouped else new_groups[0]
    return _rewrap(wrapped, flatten_like(new, unwrap_nnx(wrapped)))


def _load_group(layout, g, group, saved, torch_entries, template, params, strict, step):
    # from torch's order to the container's
    n = len(group.order)
    entries, tids, convert = [None] * n, [None] * n, [None] * n
    for j, pos in enumerate(group.order):
        entries[pos] = torch_entries[j]
        tids[pos], convert[pos] = saved["params"][j], group.convert[j]
    gstate = _group_state(layout, template, g)
    container = _group_container(layout, params, g)
    spec = layout.spec
    if spec is not None and spec.custom is not None:
        _custom_checks(layout, group)
        if group.kwargs is not None:
            _check_group(layout, g, group.kwargs, saved, strict)
        leaves = [layout.leaves[i] for i in group.members]
        own = _own_state(gstate, spec.custom)
        return _replace_state(gstate, spec.custom, spec.custom.load(own, entries, leaves, step))
    treedef = jax.tree.structure(container)
    t_per_param, t_scalars = _read_group(layout, gstate, container)
    keys, scalar_keys = _keys(spec)
    has_step = spec.has_step if spec is not None else any("step" in e for e in entries)

    def where(j, key=None):
        i = group.members[j]
        name = f"state of parameter {tids[j]} ({layout.paths[i]!r})"
        return name if key is None else f"{name}[{key!r}]"

    if layout.spec is not None and group.kwargs is not None:
        _check_group(layout, g, group.kwargs, saved, strict)

    # the number of steps taken
    filled = [bool(e) for e in entries]
    if has_step and any(filled):
        if not all("step" in e for e in entries if e):
            raise ValueError(
                f"{where(filled.index(True))} has no 'step' (a state_dict from another "
                "optimizer class?)"
            )
        count = int(_scalar_value([e["step"] for e in entries if e], f"param group {g}'s step"))
        if step is not None and step != count:
            raise ValueError(f"step={step} given, but the state_dict's step is {count}")
    elif step is not None:
        count = int(step)
    else:
        count = 1 if any(filled) else 0

    if not any(filled):
        if count == 0:
            return gstate  # torch's fresh state: nothing stepped yet
        raise ValueError(
            f"param group {g}: the state_dict has no state, so its buffers are unknown; "
            f"step={step} cannot be honoured"
        )
    if not all(filled) and not (spec is not None and spec.eager):
        j = filled.index(False)
        raise ValueError(
            f"{where(j)} is empty while other parameters of group {g} have state (torch "
            "skipped them at some step, e.g. no gradient); jaxupdate moves every parameter of "
            "a group together"
        )

    # per-parameter keys: exactly the ones the transformation keeps
    for j, e in enumerate(entries):
        want = set(t_per_param[j]) | set(t_scalars) | ({"step"} if has_step else set())
        have = set(e)
        if have != want:
            raise ValueError(
                f"{where(j)} has keys {sorted(have)}, but {layout.name} keeps {sorted(want)}: "
                "a state_dict from another optimizer class, or other options (amsgrad, "
                "centered, momentum, ...)?"
            )

    def on_field(f, v, _where):
        if f in keys and f != "step" and v is not None:
            if f in scalar_keys:
                value = _scalar_value([e[f] for e in entries], f"param group {g}'s {f!r}")
                return jnp.asarray(value, v.dtype)
            olds = treedef.flatten_up_to(v)
            news = [
                None
                if old is None
                else _as_template(entries[j][f], old, where(j, f), convert[j] and convert[j][0])
                for j, old in enumerate(olds)
            ]
            return treedef.unflatten(news)
        if v is not None and not _is_array(v):
            return _RECURSE
        return v

    return with_step_count(_walk(gstate, on_field), count)


# ---------------------------------------------------------------------------------------------
# jaxupdate -> torch


def torch_state_dict(tx, opt_state, params, *, param_map: Optional[Sequence] = None) -> dict:
    """``opt_state`` as a torch optimizer state_dict, for ``torch_optimizer.load_state_dict``.

    Args:
      tx: a transformation that describes itself (from
        :func:`jaxupdate.param_groups.param_groups`, ``described(...)``, ``from_torch`` or
        ``inject_hyperparams(...)(...)``, whose current values are exported), so that its
        optimizer class and hyperparameters are known.
      opt_state: its state (``nnx.Variable`` nodes, as in ``nnx.Optimizer.opt_state``, are
        read through).
      params: the current parameters (only their structure, shapes and dtypes are read).
      param_map: torch's parameter order and layouts, as for :func:`load_torch_state_dict`.

    Returns:
      ``{"state": {index: {key: tensor}}, "param_groups": [{...hyperparameters,
      "params": [indices]}]}``, as ``torch_optimizer.state_dict()`` writes it: indices
      number the parameters group after group (leaves in ``jax.tree.leaves`` order inside a
      group), ``step`` is a 0-d tensor of torch's scalar dtype, buffers have the parameters'
      dtypes (complex for complex parameters), param groups hold every key torch's class
      puts there (built by torch itself from the hyperparameters; a schedule appears with
      its value for the next step). Load it into a torch optimizer over the same parameters
      in the same groups.

    Example::

        >>> import torch, jax.numpy as jnp
        >>> from jaxupdate.optim.sgd import sgd
        >>> from jaxupdate.param_groups import param_groups
        >>> from jaxupdate.interop import torch_state_dict
        >>> tx = param_groups(sgd, lr=0.1, momentum=0.9)
        >>> params = [jnp.ones(2)]
        >>> state = tx.init(params)
        >>> _, state = tx.update([jnp.ones(2)], state, params)
        >>> sd = torch_state_dict(tx, state, params)
        >>> sd["state"][0]["momentum_buffer"]
        tensor([1., 1.])
        >>> w = torch.nn.Parameter(torch.ones(2))
        >>> opt = torch.optim.SGD([w], lr=0.01)
        >>> opt.load_state_dict(sd); opt.param_groups[0]["lr"], opt.param_groups[0]["momentum"]
        (0.1, 0.9)
    """
    torch = T.torch()
    params, opt_state = unwrap_nnx(params), unflatten_state(unwrap_nnx(opt_state))
    # inject_hyperparams: the injected values (torch's group entries) and the inner state
    tx, opt_state = plain_view(tx, opt_state)
    layout = state_layout(tx, params, need_description=True)
    if param_map is not None:
        layout = apply_param_map(layout, param_map)
    spec = layout.spec
    keys, scalar_keys = _keys(spec)
    state, groups, next_id = {}, [], 0
    for g, group in enumerate(layout.groups):
        gstate = _group_state(layout, opt_state, g)
        container = _group_container(layout, params, g)
        ids = list(range(next_id, next_id + len(group.members)))
        next_id += len(group.members)
        if spec.custom is not None:
            _custom_checks(layout, group)
            own = _own_state(gstate, spec.custom)
            count = int(step_count(own))
            groups.append({**_torch_group(spec, group.kwargs, count), "params": ids})
            leaves = [layout.leaves[i] for i in group.members]
            for pos, entry in spec.custom.export(own, leaves, count).items():
                state[ids[group.order.index(pos)]] = entry
            continue
        per_param, scalars = _read_group(layout, gstate, container)
        count = int(step_count(gstate))
        groups.append({**_torch_group(spec, group.kwargs, count), "params": ids})
        if count == 0 and not spec.eager:
            continue  # torch creates its state at the first step
        for j, pid in enumerate(ids):
            pos = group.order[j]
            param = layout.leaves[group.members[pos]]
            to_torch = group.convert[j] and group.convert[j][1]
            entry = {}
            for k in keys:
                if k == "step" and spec.has_step:
                    entry[k] = torch.tensor(float(count), dtype=T.scalar_dtype())
                elif k in scalar_keys and k in scalars:
                    value = float(np.asarray(scalars[k]).reshape(()))
                    entry[k] = torch.tensor(value, dtype=T.scalar_dtype())
                elif k in per_param[pos]:
                    entry[k] = _buffer_tensor(per_param[pos][k], param, to_torch)
            state[pid] = entry
    return {"state": state, "param_groups": groups}


def _custom_checks(layout: StateLayout, group: _Group):
    if len(layout.groups) != 1:
        raise ValueError(
            f"torch's {layout.spec.torch_class} doesn't support per-parameter options "
            "(parameter groups)"
        )
    if group.order != sorted(group.order) or any(c is not None for c in group.convert):
        raise NotImplementedError(
            f"{layout.spec.torch_class}'s state is one flat vector: param_map may not reorder "
            "or convert its parameters"
        )


def _buffer_tensor(x, param, to_torch=None):
    """A state buffer as torch keeps it: complex for complex parameters (from the real view),
    in torch's layout."""
    a = np.asarray(x)
    if jnp.iscomplexobj(param) and not np.iscomplexobj(a):
        if a.shape == tuple(param.shape) + (2,):
            a = a[..., 0] + 1j * a[..., 1]
            a = a.astype(np.result_type(param.dtype))
    if to_torch is not None:
        a = np.asarray(to_torch(jnp.asarray(a)))
    return T.to_tensor(a)


def load_into_torch(torch_optimizer, tx, opt_state, params, **kwargs) -> None:
    """``torch_optimizer.load_state_dict(torch_state_dict(tx, opt_state, params, **kwargs))``."""
    torch_optimizer.load_state_dict(torch_state_dict(tx, opt_state, params, **kwargs))


__all__: Sequence[str] = [
    "TORCH_OPTIMIZERS",
    "TorchOptimizer",
    "load_into_torch",
    "load_torch_state_dict",
    "optimizer_fn_for",
    "opt_state_from_nnx",
    "opt_state_into_nnx",
    "torch_state_dict",
]

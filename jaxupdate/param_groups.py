"""torch's parameter groups for any jaxupdate optimizer: per-group hyperparameters over a pytree.

torch writes::

    torch.optim.SGD([{"params": model.base.parameters()},
                     {"params": model.classifier.parameters(), "lr": 1e-3}],
                    lr=1e-2, momentum=0.9)

jaxupdate writes the same with key paths instead of tensors::

    tx = ju.param_groups(ju.sgd, [{"params": r"^base/"},
                                  {"params": r"^classifier/", "lr": 1e-3}],
                         lr=1e-2, momentum=0.9)

Each group is a dict with one selector and any hyperparameters of the optimizer function,
which override the keyword ``defaults`` (torch's rule). A selector is one of:

* ``"params": str`` -- a regular expression searched (``re.search``) in the leaf's key path,
  its keys joined by ``"/"`` (``{"enc": {"w": ...}}`` -> ``"enc/w"``; list indices are
  numbers, ``"layers/0/kernel"``; the trailing ``.value`` of flax ``nnx`` variables is
  dropped, so ``nnx.state(model, nnx.Param)`` gives ``"linear/kernel"``). Anchor it with
  ``^`` / ``$`` to match whole paths.
* ``"params": callable`` -- a predicate ``f(path) -> bool`` or ``f(path, leaf) -> bool``
  (``path`` as above; ``leaf`` is the parameter at ``init`` and the gradient at ``update``,
  so use only its shape and dtype, e.g. ``lambda path, x: x.ndim >= 2``).
* ``"params": mask`` -- a pytree of booleans shaped like the parameters (or a prefix of
  them, a boolean then covering a whole subtree).
* ``"label": value`` -- with ``param_groups(..., labels=tree)``: the leaves whose label is
  ``value``; ``labels`` is a pytree of labels shaped like the parameters (or a prefix), or a
  function ``params -> labels`` as in ``optax.partition``.

Two predicates for torch recipes: :func:`by_name` calls a function of torch's dotted
parameter name (``"encoder.LayerNorm.weight"`` for the path ``encoder/LayerNorm/weight``),
so Hugging Face's ``any(nd in name for nd in ["bias", "LayerNorm.weight"])`` works as
written; :func:`of_type` selects the parameters of modules of given types (torchvision's
``split_normalization_params``: norms without weight decay) in a torch or flax ``nnx``
model, or the ``nnx`` variables of given types.

Leaves that no group selects are not optimized: their update is zero and they keep no state
(torch leaves alone the tensors it was not given). A group that selects nothing is most
often a selector that missed (a name written for another naming scheme): ``init`` warns.
A leaf selected by two groups raises torch's ``ValueError: some parameters appear in more
than one parameter group``.

Each group runs its own instance of the optimizer on the list of its leaves (in
``jax.tree.leaves`` order: torch's parameter order inside the group), so its state is the
optimizer's own state over that list; the whole state is :class:`ParamGroupsState`, one entry
per group. Hyperparameters may be numbers, 1-element arrays or schedules, per group.
"""

from __future__ import annotations

import inspect
import re
import sys
import warnings
from typing import Any, Callable, NamedTuple, Optional, Sequence

import jax
import jax.numpy as jnp
import optax

from jaxupdate._described import attach, bind_kwargs, declaration, description

DUPLICATE_MESSAGE = "some parameters appear in more than one parameter group"
SELECTOR_KEYS = ("params", "label")


class ParamGroupsState(NamedTuple):
    """One optimizer state per group, each over the list of that group's leaves."""

    groups: tuple


class Group(NamedTuple):
    """One parameter group as built: its selector, its overrides and the optimizer's full kwargs."""

    selector: Any
    by_label: bool
    overrides: dict
    kwargs: dict


class GroupsDescription(NamedTuple):
    """What :func:`param_groups` built: optimizer function, defaults, groups, label tree."""

    fn: Callable
    defaults: dict
    groups: tuple
    labels: Any

    @property
    def name(self) -> str:
        return self.fn.__name__

    @property
    def whole(self) -> bool:
        """No groups given: the one group's optimizer runs on the whole tree, unchanged."""
        return len(self.groups) == 1 and self.groups[0].selector is None and not (
            self.groups[0].by_label
        )


def path_str(path) -> str:
    """A jax key path as ``"/"``-joined keys, without nnx's trailing ``.value``."""
    keys = list(path)
    if keys and isinstance(keys[-1], jax.tree_util.GetAttrKey) and keys[-1].name == "value":
        keys = keys[:-1]
    parts = []
    for k in keys:
        if isinstance(k, jax.tree_util.DictKey):
            parts.append(str(k.key))
        elif isinstance(k, jax.tree_util.SequenceKey):
            parts.append(str(k.idx))
        elif isinstance(k, jax.tree_util.GetAttrKey):
            parts.append(k.name)
        elif isinstance(k, jax.tree_util.FlattenedIndexKey):
            parts.append(str(k.key))
        else:
            parts.append(str(k))
    return "/".join(parts)


def leaf_paths(tree) -> tuple[list[str], list, Any]:
    """``(paths, leaves, treedef)`` of ``tree`` in ``jax.tree.leaves`` order."""
    with_path, treedef = jax.tree_util.tree_flatten_with_path(tree)
    return [path_str(p) for p, _ in with_path], [x for _, x in with_path], treedef


def _broadcast(prefix, tree, what: str) -> list:
    """Values of the prefix tree ``prefix`` repeated over the leaves of ``tree`` they cover."""
    pdef = jax.tree.structure(prefix, is_leaf=lambda x: x is None)
    try:
        values = pdef.flatten_up_to(prefix)
        subtrees = pdef.flatten_up_to(tree)
    except (ValueError, TypeError) as e:
        raise ValueError(
            f"{what} does not match the structure of the parameters (it must be shaped like "
            f"them or a prefix of them): {e}"
        ) from None
    out = []
    for v, sub in zip(values, subtrees):
        out.extend([v] * len(jax.tree.leaves(sub)))
    return out


def _predicate_arity(fn) -> int:
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return 1
    positional = [
        p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
    ]
    if any(p.kind == p.VAR_POSITIONAL for p in params) or len(positional) >= 2:
        return 2
    return 1


def _selected(group: Group, index: int, paths, leaves, tree, labels_cache) -> list[bool]:
    sel = group.selector
    what = f"param group {index}"
    if group.by_label:
        labels = labels_cache()
        return [lab == sel for lab in labels]
    if sel is None:  # param_groups(fn) without groups: everything
        return [True] * len(leaves)
    if isinstance(sel, str):
        pattern = re.compile(sel)
        return [pattern.search(p) is not None for p in paths]
    if isinstance(sel, re.Pattern):
        return [sel.search(p) is not None for p in paths]
    if callable(sel) and not hasattr(sel, "shape"):
        if _predicate_arity(sel) == 2:
            return [bool(sel(p, x)) for p, x in zip(paths, leaves)]
        return [bool(sel(p)) for p in paths]
    mask = _broadcast(sel, tree, f"the mask of {what}")
    for m in mask:
        if not isinstance(m, (bool, jnp.bool_)) and getattr(m, "dtype", None) != jnp.bool_:
            raise TypeError(
                f"the mask of {what} must hold booleans, got {type(m).__name__}; "
                "use a regex, a predicate, or 'label' with labels= for other selections"
            )
    return [bool(m) for m in mask]


def torch_name(path: str) -> str:
    """A leaf path (``"encoder/LayerNorm/weight"``) as torch's dotted parameter name."""
    return path.replace("/", ".")


def by_name(fn: Callable[[str], bool]) -> Callable[[str], bool]:
    """A selector calling ``fn`` with torch's dotted name of each leaf.

    torch recipes select by ``model.named_parameters()`` names, which are dotted
    (``"encoder.LayerNorm.weight"``); jaxupdate paths join keys with ``"/"``. Hugging Face's
    weight-decay groups then read as they do in torch::

        no_decay = ["bias", "LayerNorm.weight"]
        tx = ju.param_groups(ju.adamw, [
            {"params": by_name(lambda n: not any(nd in n for nd in no_decay)),
             "weight_decay": 0.01},
            {"params": by_name(lambda n: any(nd in n for nd in no_decay)),
             "weight_decay": 0.0}], lr=5e-5)

    Example::

        >>> sel = by_name(lambda n: "LayerNorm.weight" in n)
        >>> sel("encoder/LayerNorm/weight"), sel("encoder/dense/weight")
        (True, False)
    """

    def select(path: str) -> bool:
        return bool(fn(torch_name(path)))

    select.__qualname__ = f"by_name({getattr(fn, '__qualname__', fn)!s})"
    return select


def _typed_names(source, types: tuple) -> set:
    """Dotted names of the parameters ``of_type`` selects in ``source``."""
    torch = sys.modules.get("torch")  # a torch model means torch is imported already
    if torch is not None and isinstance(source, torch.nn.Module):
        return {
            f"{prefix}.{name}" if prefix else name
            for prefix, module in source.named_modules()
            if isinstance(module, types)
            for name, _ in module.named_parameters(recurse=False)
        }
    try:
        from flax import nnx
    except ImportError:  # pragma: no cover - flax is optional
        nnx = None
    if nnx is None:
        raise TypeError("of_type needs a torch nn.Module, or a flax nnx Module or State")
    var_types = tuple(t for t in types if isinstance(t, type) and issubclass(t, nnx.Variable))
    mod_types = tuple(t for t in types if t not in var_types)
    out = set()
    if isinstance(source, nnx.Module):
        nodes = dict(nnx.iter_graph(source))
        for path, node in nodes.items():
            if not isinstance(node, nnx.Variable):
                continue
            parent = nodes.get(path[:-1])
            if (var_types and isinstance(node, var_types)) or (
                mod_types and isinstance(parent, mod_types)
            ):
                out.add(".".join(str(k) for k in path))
        return out
    if mod_types:
        raise TypeError(
            "of_type with module types needs the model (a torch nn.Module or a flax nnx "
            f"Module), got {type(source).__name__}"
        )
    flat, _ = jax.tree_util.tree_flatten_with_path(
        source, is_leaf=lambda x: isinstance(x, nnx.Variable)
    )
    return {torch_name(path_str(p)) for p, v in flat if isinstance(v, var_types)}


def of_type(source, *types) -> Callable[[str], bool]:
    """A selector of the parameters of modules of ``types`` (or of variables of ``types``).

    ``source`` is the model the parameters come from:

    * a torch ``nn.Module`` (parameters from
      :func:`jaxupdate.interop.weights.weights_from_torch`, flat or nested): the parameters
      a module of one of ``types`` holds directly, as torchvision's
      ``split_normalization_params(model, norm_classes)`` puts norms apart;
    * a flax ``nnx.Module`` (parameters ``nnx.state(model, nnx.Param)``): the variables held
      directly by modules of ``types`` (``nnx.LayerNorm``, ``nnx.BatchNorm``), and the
      variables that are instances of ``types`` given as ``nnx.Variable`` subclasses (a
      ``class NoDecay(nnx.Param)`` marking the parameters to leave alone);
    * an ``nnx.State``: variable types only.

    Example::

        >>> import torch
        >>> net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.LayerNorm(4))
        >>> sel = of_type(net, torch.nn.LayerNorm)
        >>> [sel(p) for p in ("0/weight", "1/weight", "1.bias")]
        [False, True, True]
    """
    if not types:
        raise TypeError("of_type needs at least one module or variable type")
    names = _typed_names(source, tuple(types))

    def select(path: str) -> bool:
        return torch_name(path) in names

    select.__qualname__ = f"of_type({', '.join(t.__name__ for t in types)})"
    return select


def _warn_empty(desc: GroupsDescription, paths: list, members: list) -> None:
    """Warns about groups that select nothing (the leaves meant for them are not trained)."""
    if desc.whole:
        return
    taken = {i for m in members for i in m}
    for g, (group, idx) in enumerate(zip(desc.groups, members)):
        if idx or group.selector is None:
            continue
        sel = group.selector
        shown = getattr(sel, "__qualname__", None) if callable(sel) else None
        shown = shown or repr(sel)[:80]
        free = [p for i, p in enumerate(paths) if i not in taken]
        where = (
            f"{len(free)} leaves are in no group and will not be trained (e.g. {free[:3]})"
            if free
            else "the leaves meant for it, if any, train with another group's hyperparameters"
        )
        warnings.warn(
            f"param group {g} ({'label' if group.by_label else 'params'} {shown}) selects no "
            f"parameter; {where}. Paths join keys with '/' ('encoder/LayerNorm/weight'): "
            "for torch's dotted names use jaxupdate.param_groups.by_name",
            stacklevel=3,
        )


def assign(desc: GroupsDescription, tree) -> tuple[list[str], list, Any, list[list[int]]]:
    """``(paths, leaves, treedef, members)``: ``members[g]`` lists the leaf indices of group g.

    Raises torch's ``ValueError`` when a leaf is selected by two groups.
    """
    paths, leaves, treedef = leaf_paths(tree)
    cached = []

    def labels_cache():
        if not cached:
            if desc.labels is None:
                raise ValueError("a group selects by 'label' but param_groups got no labels=")
            lab = desc.labels(tree) if callable(desc.labels) else desc.labels
            cached.append(_broadcast(lab, tree, "labels"))
        return cached[0]

    owner = [-1] * len(leaves)
    members: list[list[int]] = []
    for g, group in enumerate(desc.groups):
        chosen = _selected(group, g, paths, leaves, tree, labels_cache)
        mine = []
        for i, yes in enumerate(chosen):
            if not yes:
                continue
            if owner[i] != -1:
                raise ValueError(
                    f"{DUPLICATE_MESSAGE}: {paths[i]!r} is selected by groups {owner[i]} and {g}"
                )
            owner[i] = g
            mine.append(i)
        members.append(mine)
    return paths, leaves, treedef, members


def _parse_group(fn, defaults: dict, group, index: int) -> tuple[Group, Any]:
    if not isinstance(group, dict):
        raise TypeError(f"param group {index} must be a dict, got {type(group).__name__}")
    present = [k for k in SELECTOR_KEYS if k in group]
    if len(present) != 1:
        raise ValueError(
            f"param group {index} must have exactly one of 'params' (a regex, a predicate or a "
            f"boolean mask tree) or 'label' (with labels=), got keys {sorted(group)}"
        )
    overrides = {k: v for k, v in group.items() if k not in SELECTOR_KEYS}
    merged = {**defaults, **overrides}
    try:
        kwargs = bind_kwargs(fn, kwargs=merged)
    except TypeError as e:
        raise TypeError(f"param group {index}: {e}") from None
    tx = optax.with_extra_args_support(fn(**merged))  # also validates the group's own values
    ignored = [k for k in constructor_only(fn) if k in overrides]
    if ignored:
        # torch reads these in the optimizer's constructor only (Adagrad's
        # initial_accumulator_value fills every group's state): a group's own value stays in
        # the group (kwargs, exported to torch) but the state is built from the defaults'
        built = {k: v for k, v in merged.items() if k not in ignored}
        built.update({k: defaults[k] for k in ignored if k in defaults})
        tx = optax.with_extra_args_support(fn(**built))
    return Group(group[present[0]], present[0] == "label", overrides, kwargs), tx


def constructor_only(fn) -> tuple:
    """Arguments ``fn``'s torch class reads in its constructor only, never per group (its
    ``torch_optimizer`` declaration's ``constructor_only``)."""
    decl = declaration(fn)
    return decl.constructor_only if decl is not None else ()


def param_groups(
    optimizer_fn: Callable[..., optax.GradientTransformation],
    groups: Optional[Sequence[dict] | dict] = None,
    *,
    labels=None,
    **defaults,
) -> optax.GradientTransformationExtraArgs:
    r"""``optimizer_fn`` with torch-style parameter groups.

    Args:
      optimizer_fn: a jaxupdate optimizer function (``ju.sgd``, ``ju.adam``, ...), or any
        function of hyperparameters returning an optax transformation.
      groups: a list of dicts, torch's ``[{"params": ..., "lr": ...}, ...]`` with a selector
        (see the module docstring: regex, predicate, boolean mask tree, or ``"label"``) and
        hyperparameter overrides; a single dict is one group; ``None`` is one group holding
        every leaf, where the optimizer runs on the parameter tree itself (its state is
        ``ParamGroupsState((optimizer_fn(**defaults).init(params),))``, and functions it is
        given, such as L-BFGS's ``value_and_grad_fn``, see that tree).
      labels: a pytree of labels shaped like the parameters (or a prefix), or a function
        ``params -> labels``, for groups that select with ``"label"``.
      **defaults: hyperparameters shared by every group unless a group overrides them
        (torch's keyword arguments after ``params``).

    Returns:
      An ``optax.GradientTransformationExtraArgs`` whose state is a :class:`ParamGroupsState`.
      Every group's hyperparameters are validated now, with torch's messages. Leaves in no
      group get a zero update. Extra ``update`` arguments are passed to every group.

    Raises:
      ValueError: ``"some parameters appear in more than one parameter group"`` (at ``init``
        or ``update``, when the selected leaves are known), or a group without one selector.
      TypeError: a hyperparameter ``optimizer_fn`` does not take.

    Example::

        >>> import jax.numpy as jnp, jaxupdate as ju
        >>> from jaxupdate.optim.sgd import sgd
        >>> from jaxupdate.param_groups import param_groups
        >>> params = {"body": {"w": jnp.ones(2)}, "head": {"w": jnp.ones(2), "b": jnp.ones(2)}}
        >>> tx = param_groups(sgd, [{"params": "^body/"},
        ...                         {"params": "^head/w$", "lr": 0.5, "weight_decay": 0.1}],
        ...                   lr=0.1, momentum=0.9)
        >>> state = tx.init(params)
        >>> grads = {"body": {"w": jnp.ones(2)}, "head": {"w": jnp.ones(2), "b": jnp.ones(2)}}
        >>> updates, state = tx.update(grads, state, params)
        >>> new = ju.apply_updates(params, updates)
        >>> new["body"]["w"], new["head"]["w"], new["head"]["b"]   # head/b is in no group
        (Array([0.9, 0.9], dtype=float32), Array([0.45, 0.45], dtype=float32), Array([1., 1.], dtype=float32))
    """  # noqa: E501
    if groups is None:
        groups = [{"params": None}]
    elif isinstance(groups, dict):
        groups = [groups]
    else:
        groups = list(groups)
    built = [_parse_group(optimizer_fn, defaults, g, i) for i, g in enumerate(groups)]
    txs = [tx for _, tx in built]
    desc = GroupsDescription(
        inspect.unwrap(optimizer_fn), dict(defaults), tuple(g for g, _ in built), labels
    )

    def init_fn(params):
        if desc.whole:
            return ParamGroupsState((txs[0].init(params),))
        paths, leaves, _, members = assign(desc, params)
        _warn_empty(desc, paths, members)
        return ParamGroupsState(
            tuple(tx.init([leaves[i] for i in idx]) for tx, idx in zip(txs, members))
        )

    def update_fn(updates, state, params=None, **extra_args):
        if len(state.groups) != len(txs):
            raise ValueError(
                f"the state holds {len(state.groups)} parameter groups, the transformation "
                f"{len(txs)}"
            )
        if desc.whole:  # the optimizer itself, on the same tree (closures see that tree too)
            updates, inner = txs[0].update(updates, state.groups[0], params, **extra_args)
            return updates, ParamGroupsState((inner,))
        _, leaves, treedef, members = assign(desc, updates)
        p_leaves = None if params is None else treedef.flatten_up_to(params)
        out = [None] * len(leaves)
        new_states = []
        for tx, idx, st in zip(txs, members, state.groups):
            g_params = None if p_leaves is None else [p_leaves[i] for i in idx]
            u, st = tx.update([leaves[i] for i in idx], st, g_params, **extra_args)
            for i, ui in zip(idx, u):
                out[i] = ui
            new_states.append(st)
        out = [jnp.zeros_like(x) if u is None else u for x, u in zip(leaves, out)]
        return treedef.unflatten(out), ParamGroupsState(tuple(new_states))

    return attach(optax.GradientTransformationExtraArgs(init_fn, update_fn), desc)


def describe_groups(tx, params) -> list[dict]:
    """torch's ``optimizer.param_groups`` for a :func:`param_groups` transformation.

    One dict per group: ``"params"`` is the list of the group's leaf paths (in torch's order
    within the group), the other keys are every argument of the optimizer function.

    Example::

        >>> import jax.numpy as jnp
        >>> from jaxupdate.optim.adam import adam
        >>> tx = param_groups(adam, [{"params": "w"}, {"params": "b", "lr": 0.1}])
        >>> [(g["params"], g["lr"]) for g in describe_groups(tx, {"w": jnp.ones(1), "b": 0.0})]
        [(['w'], 0.001), (['b'], 0.1)]
    """
    desc = description(tx)
    if not isinstance(desc, GroupsDescription):
        raise TypeError("describe_groups needs a transformation built by param_groups()")
    paths, _, _, members = assign(desc, params)
    return [
        {"params": [paths[i] for i in idx], **g.kwargs} for g, idx in zip(desc.groups, members)
    ]


__all__ = [
    "DUPLICATE_MESSAGE",
    "GroupsDescription",
    "ParamGroupsState",
    "assign",
    "by_name",
    "describe_groups",
    "leaf_paths",
    "of_type",
    "param_groups",
    "path_str",
    "torch_name",
]

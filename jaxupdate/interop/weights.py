"""Model weights between torch and JAX: torch's names and order, ``.pt``/safetensors, flax nnx.

The representation. A torch module's ``named_parameters()`` (or ``state_dict()``) is an
ordered list of dotted names; JAX sorts the keys of plain dicts when it flattens them, so
``{"fc.weight": ..., "fc.bias": ...}`` would come back as ``[fc.bias, fc.weight]``. These
functions use :class:`collections.OrderedDict` instead, which JAX flattens in insertion
order: ``jax.tree.leaves(weights_from_torch(module))`` are the module's parameters in
torch's order (the order a torch optimizer numbers them), and key paths are torch's names.
With ``nested=True`` the dotted names become nested ``OrderedDict``\\ s (``w["fc"]["weight"]``,
paths ``"fc/weight"``), still in torch's order.

Files are read without unpickling arbitrary objects: ``.pt`` / ``.pth`` only through
``torch.load(path, weights_only=True)``, safetensors through the ``safetensors`` package.

flax nnx models store some weights in other layouts; :func:`torch_to_nnx` and
:func:`nnx_to_torch` convert by module type:

==================  ===========================  =====================================
nnx module          torch name                   layout
==================  ===========================  =====================================
``nnx.Linear``      ``weight`` / ``bias``        ``kernel = weight.T`` (in, out)
``nnx.Conv``        ``weight`` / ``bias``        ``kernel``: (O, I, *k) -> (*k, I, O)
``nnx.Embed``       ``weight``                   ``embedding``, same layout
``nnx.BatchNorm``   ``weight``, ``bias``,        ``scale``, ``bias``, ``mean``, ``var``
                    ``running_mean``,            (torch's ``num_batches_tracked`` has
                    ``running_var``              no nnx counterpart and is skipped)
``nnx.LayerNorm``,  ``weight`` / ``bias``        ``scale`` / ``bias``
``nnx.GroupNorm``,
``nnx.RMSNorm``
other modules       the attribute's name         unchanged
==================  ===========================  =====================================

Module names: the nnx attribute path joined by ``"."``, with ``nnx.Sequential``'s
``layers`` level dropped (torch's ``nn.Sequential`` names its children ``"0"``, ``"1"``,
...); ``rename`` maps anything else. Mind what weights cannot fix: torch flattens conv
features in (C, H, W) order and flax models usually in (H, W, C), so a ``Linear`` after a
flatten needs the flax model to transpose to (C, H, W) before reshaping (or a permuted
kernel).
"""

from __future__ import annotations

import os
from collections import OrderedDict
from typing import Callable, Iterable, Mapping, Optional, Union

import jax
import jax.numpy as jnp
import numpy as np

from jaxupdate.interop import _torch as T

Weights = "OrderedDict[str, jax.Array]"


# ---------------------------------------------------------------------------------------------
# torch modules / state dicts <-> ordered pytrees


def _nest(flat: "OrderedDict[str, object]") -> OrderedDict:
    out: OrderedDict = OrderedDict()
    for name, value in flat.items():
        node = out
        *parents, leaf = name.split(".")
        for p in parents:
            node = node.setdefault(p, OrderedDict())
            if not isinstance(node, OrderedDict):
                raise ValueError(f"{name!r} is both a tensor and a module prefix")
        node[leaf] = value
    return out


def _flatten(tree) -> "OrderedDict[str, object]":
    """Dotted names -> leaves, in ``jax.tree.leaves`` order (nested dicts joined with ".")."""
    from jaxupdate.param_groups import path_str, torch_name

    with_path, _ = jax.tree_util.tree_flatten_with_path(tree)
    return OrderedDict((torch_name(path_str(p)), x) for p, x in with_path)


def _optimizer_order(module, optimizer) -> list:
    """``(name, parameter)`` of ``module`` in ``optimizer``'s param-group order."""
    name_of = {id(p): n for n, p in module.named_parameters()}
    out = []
    for g, group in enumerate(optimizer.param_groups):
        for j, p in enumerate(group["params"]):
            if id(p) not in name_of:
                raise ValueError(
                    f"parameter {j} of param group {g} of the optimizer (shape "
                    f"{tuple(p.shape)}) is not a parameter of the module"
                )
            out.append((name_of[id(p)], p))
    return out


def weights_from_torch(
    source,
    *,
    buffers: bool = False,
    nested: bool = False,
    dtype=None,
    optimizer=None,
) -> OrderedDict:
    """A torch module's parameters (or a state dict's tensors) as an ordered pytree.

    Args:
      source: an ``nn.Module``, or a mapping ``name -> tensor`` (``module.state_dict()``,
        or what :func:`load_pt` / :func:`load_safetensors` return).
      buffers: for a module, also its buffers (BatchNorm's running statistics, ...), in
        ``state_dict()`` order; by default only ``named_parameters()``.
      nested: nested ``OrderedDict``\\ s per module instead of flat dotted names.
      dtype: cast every floating array to this dtype (default: keep torch's dtypes).
      optimizer: a torch optimizer of the module's parameters: the parameters come in the
        optimizer's order (param group after param group, as ``optimizer.state_dict()``
        numbers them), the order :func:`jaxupdate.interop.from_torch` and
        :func:`jaxupdate.interop.load_torch_state_dict` expect. Recipes that build groups
        (timm's ``param_groups_weight_decay`` puts biases and norms first) differ from the
        module's order. Only the optimizer's parameters are returned; flat names only.

    Returns:
      ``OrderedDict`` name -> ``jax.Array`` in torch's order (see the module docstring).
      Every array is a copy: torch's later in-place updates do not reach it.

    Example::

        >>> import torch
        >>> from jaxupdate.interop.weights import weights_from_torch
        >>> net = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.ReLU(), torch.nn.Linear(2, 1))
        >>> w = weights_from_torch(net)
        >>> list(w), w["0.weight"].shape
        (['0.weight', '0.bias', '2.weight', '2.bias'], (2, 3))
        >>> import jax; [x.shape for x in jax.tree.leaves(w)]     # torch's order, not sorted
        [(2, 3), (2,), (1, 2), (1,)]
        >>> opt = torch.optim.AdamW([{"params": [net[0].bias, net[2].bias], "weight_decay": 0},
        ...                          {"params": [net[0].weight, net[2].weight]}])
        >>> list(weights_from_torch(net, optimizer=opt))          # the optimizer's order
        ['0.bias', '2.bias', '0.weight', '2.weight']
    """
    torch = T.torch()
    if optimizer is not None:
        if not isinstance(source, torch.nn.Module) or buffers or nested:
            raise ValueError(
                "optimizer= orders a module's parameters as the optimizer does: give an "
                "nn.Module, without buffers= or nested= (the optimizer holds no buffers, and "
                "nesting would regroup the names by module)"
            )
        items = _optimizer_order(source, optimizer)
    elif isinstance(source, torch.nn.Module):
        items = source.state_dict().items() if buffers else source.named_parameters()
    elif isinstance(source, Mapping):
        items = source.items()
    else:
        raise TypeError(
            f"expected a torch.nn.Module or a mapping name -> tensor, got {type(source).__name__}"
        )
    flat: OrderedDict = OrderedDict()
    for name, t in items:
        if not (T.is_tensor(t) or hasattr(t, "shape")):
            raise TypeError(f"{name!r} is a {type(t).__name__}, not a tensor")
        a = jnp.asarray(T.to_numpy(t))
        if dtype is not None and jnp.issubdtype(a.dtype, jnp.floating):
            a = a.astype(dtype)
        flat[name] = a
    return _nest(flat) if nested else flat


def weights_to_torch(tree) -> "OrderedDict[str, object]":
    """An ordered (flat or nested) pytree of arrays as a torch state dict of dotted names.

    The inverse of :func:`weights_from_torch`; feed it to ``module.load_state_dict``.

    Example::

        >>> import torch
        >>> from jaxupdate.interop.weights import weights_from_torch, weights_to_torch
        >>> net = torch.nn.Linear(3, 2)
        >>> sd = weights_to_torch(weights_from_torch(net, nested=True))
        >>> list(sd), net.load_state_dict(sd)
        (['weight', 'bias'], <All keys matched successfully>)
    """
    return OrderedDict((name, T.to_tensor(x)) for name, x in _flatten(tree).items())


def load_weights_into_torch(module, tree, *, strict: bool = True):
    """``module.load_state_dict(weights_to_torch(tree), strict=strict)`` (copies, casts)."""
    return module.load_state_dict(weights_to_torch(tree), strict=strict)


# ---------------------------------------------------------------------------------------------
# files


def load_pt(path: Union[str, os.PathLike], *, key: Optional[str] = None, **kwargs) -> OrderedDict:
    """Weights saved with ``torch.save(module.state_dict(), path)``, safely.

    Reads with ``torch.load(path, map_location="cpu", weights_only=True)``: only tensors and
    plain containers, never arbitrary pickled objects. ``key`` picks an entry of a checkpoint
    dict (e.g. ``"model"`` in ``{"model": ..., "optimizer": ...}``); ``kwargs`` go to
    :func:`weights_from_torch` (``nested``, ``dtype``).

    Example::

        >>> import torch, tempfile, os
        >>> from jaxupdate.interop.weights import load_pt
        >>> path = os.path.join(tempfile.mkdtemp(), "w.pt")
        >>> torch.save({"model": torch.nn.Linear(2, 1).state_dict()}, path)
        >>> list(load_pt(path, key="model"))
        ['weight', 'bias']
    """
    torch = T.torch()
    obj = torch.load(path, map_location="cpu", weights_only=True)
    if key is not None:
        obj = obj[key]
    if not isinstance(obj, Mapping) or not all(T.is_tensor(v) for v in obj.values()):
        keys = list(obj)[:8] if isinstance(obj, Mapping) else None
        raise TypeError(
            f"{os.fspath(path)!r} does not hold a mapping name -> tensor"
            + (f" (its keys start {keys}; pass key= to pick one)" if keys else "")
        )
    return weights_from_torch(obj, **kwargs)


def _safetensors():
    try:
        import safetensors.numpy as st
    except ImportError as e:
        raise ImportError(
            "reading or writing safetensors files needs the 'safetensors' package "
            "(pip install safetensors)"
        ) from e
    return st


def load_safetensors(
    path: Union[str, os.PathLike], *, order: Optional[Iterable[str]] = None, nested: bool = False
) -> OrderedDict:
    """A ``.safetensors`` file as an ordered pytree (no pickle involved).

    safetensors files do not keep torch's parameter order (tensors are stored sorted), so
    the result is in the file's order unless ``order`` (e.g. ``[n for n, _ in
    module.named_parameters()]``) gives the names in the order wanted; names missing from
    ``order`` follow in the file's order. Needs the ``safetensors`` package.

    Example::

        >>> from jaxupdate.interop.weights import load_safetensors, save_safetensors
        >>> import jax.numpy as jnp, tempfile, os
        >>> path = os.path.join(tempfile.mkdtemp(), "w.safetensors")
        >>> tree = {"fc": {"weight": jnp.ones((2, 3)), "bias": jnp.zeros(2)}}
        >>> save_safetensors(tree, path)  # doctest: +SKIP
        >>> list(load_safetensors(path, order=["fc.weight", "fc.bias"]))  # doctest: +SKIP
        ['fc.weight', 'fc.bias']
    """  # noqa: D301
    st = _safetensors()
    loaded = st.load_file(os.fspath(path))
    names = list(loaded)
    if order is not None:
        wanted = [n for n in order if n in loaded]
        missing = [n for n in order if n not in loaded]
        if missing:
            raise KeyError(f"not in {os.fspath(path)!r}: {missing}")
        names = wanted + [n for n in names if n not in set(wanted)]
    flat = OrderedDict((n, jnp.asarray(loaded[n])) for n in names)
    return _nest(flat) if nested else flat


def save_safetensors(tree, path: Union[str, os.PathLike], metadata: Optional[dict] = None):
    """Writes an (ordered, flat or nested) pytree of arrays to a ``.safetensors`` file.

    Names are dotted (torch's state-dict names), so torch's ``safetensors.torch.load_file``
    followed by ``module.load_state_dict`` reads it back. Needs the ``safetensors`` package.
    """
    st = _safetensors()
    arrays = {n: np.ascontiguousarray(np.asarray(x)) for n, x in _flatten(tree).items()}
    st.save_file(arrays, os.fspath(path), metadata=metadata)


# ---------------------------------------------------------------------------------------------
# flax nnx


def _perm_conv_to_nnx(ndim: int):
    # torch (O, I, k1..kn) -> nnx (k1..kn, I, O)
    return tuple(range(2, ndim)) + (1, 0)


def _perm_conv_to_torch(ndim: int):
    # nnx (k1..kn, I, O) -> torch (O, I, k1..kn)
    return (ndim - 1, ndim - 2) + tuple(range(ndim - 2))


def _ident(x):
    return x


def _layouts(module):
    """``[(torch attribute, nnx attribute, to_nnx, to_torch)]`` for one nnx module."""
    from flax import nnx

    if isinstance(module, nnx.Linear):
        return [
            ("weight", "kernel", jnp.transpose, jnp.transpose),
            ("bias", "bias", _ident, _ident),
        ]
    if isinstance(module, nnx.Conv):
        return [
            ("weight", "kernel",
             lambda w: jnp.transpose(w, _perm_conv_to_nnx(w.ndim)),
             lambda k: jnp.transpose(k, _perm_conv_to_torch(k.ndim))),
            ("bias", "bias", _ident, _ident),
        ]
    if isinstance(module, nnx.ConvTranspose):
        raise NotImplementedError(
            "nnx.ConvTranspose: torch's ConvTranspose weight layout (I, O, *k) and its spatial "
            "flip are not mapped; convert it with rename= and your own function"
        )
    if isinstance(module, nnx.Embed):
        return [("weight", "embedding", _ident, _ident)]
    if isinstance(module, nnx.BatchNorm):
        return [
            ("weight", "scale", _ident, _ident),
            ("bias", "bias", _ident, _ident),
            ("running_mean", "mean", _ident, _ident),
            ("running_var", "var", _ident, _ident),
        ]
    if isinstance(module, (nnx.LayerNorm, nnx.GroupNorm, nnx.RMSNorm)):
        return [("weight", "scale", _ident, _ident), ("bias", "bias", _ident, _ident)]
    return None


_TORCH_ONLY_BUFFERS = ("num_batches_tracked",)


def _module_name(model, path) -> str:
    """Dotted torch-style name of the nnx module at ``path`` (Sequential's ``layers`` dropped)."""
    from flax import nnx

    parts, node = [], model
    for i, key in enumerate(path):
        child = node[key] if isinstance(key, int) else getattr(node, key, None)
        if child is None and hasattr(node, "__getitem__"):
            child = node[key]
        if not (isinstance(node, nnx.Sequential) and key == "layers"):
            parts.append(str(key))
        node = child
        del i
    return ".".join(parts)


class NnxLink:
    """One torch tensor <-> one nnx variable: names, the variable and the layout functions."""

    __slots__ = ("torch_name", "nnx_path", "variable", "to_nnx", "to_torch")

    def __init__(self, torch_name, nnx_path, variable, to_nnx, to_torch):
        self.torch_name = torch_name
        self.nnx_path = nnx_path
        self.variable = variable
        self.to_nnx = to_nnx
        self.to_torch = to_torch

    def __repr__(self):
        return f"NnxLink({self.torch_name!r} <-> {self.nnx_path!r})"


def nnx_links(model, *, rename: Union[None, Mapping, Callable] = None) -> list:
    """How each nnx variable of ``model`` corresponds to a torch state-dict entry.

    Returns a list of :class:`NnxLink` (``torch_name``, ``nnx_path`` as ``"/"``-joined path,
    the ``variable``, ``to_nnx`` / ``to_torch`` layout functions), module by module in nnx's
    (sorted attribute) order.
    ``rename`` maps the default torch name (see the module docstring) to the real one: a
    dict (missing names unchanged) or a function; returning ``None`` skips the variable.
    """
    from flax import nnx

    links = []
    seen = set()
    for path, module in nnx.iter_graph(model):
        if not isinstance(module, nnx.Module) or isinstance(module, nnx.List):
            continue
        prefix = _module_name(model, path)
        table = _layouts(module)
        if table is None:
            table = []
            for attr, value in vars(module).items():
                if isinstance(value, nnx.Variable) and not isinstance(value, nnx.RngState):
                    table.append((attr, attr, _ident, _ident))
        for t_attr, n_attr, to_nnx, to_torch in table:
            var = getattr(module, n_attr, None)
            if not isinstance(var, nnx.Variable) or id(var) in seen:
                continue
            seen.add(id(var))
            name = f"{prefix}.{t_attr}" if prefix else t_attr
            if rename is not None:
                name = rename(name) if callable(rename) else rename.get(name, name)
                if name is None:
                    continue
            nnx_path = "/".join([str(p) for p in path] + [n_attr])
            links.append(NnxLink(name, nnx_path, var, to_nnx, to_torch))
    return links


def nnx_param_map(model, torch_names: Iterable[str], *, rename=None) -> list:
    """The :class:`NnxLink` of each torch name, in the order given: a ``param_map``.

    For :func:`jaxupdate.interop.load_torch_state_dict` / ``torch_state_dict`` when the
    jaxupdate side trains an nnx model: ``torch_names`` are the torch optimizer's parameters
    in its order (``[n for n, _ in torch_model.named_parameters()]`` for
    ``Opt(torch_model.parameters())``), and each link carries the nnx path and the layout
    functions (Linear's transpose, Conv's axes) applied to the optimizer's buffers too.

    Example::

        >>> import torch
        >>> from flax import nnx
        >>> from jaxupdate.interop.weights import nnx_param_map
        >>> m = nnx.Linear(3, 2, rngs=nnx.Rngs(0))
        >>> nnx_param_map(m, [n for n, _ in torch.nn.Linear(3, 2).named_parameters()])
        [NnxLink('weight' <-> 'kernel'), NnxLink('bias' <-> 'bias')]
    """
    links = {link.torch_name: link for link in nnx_links(model, rename=rename)}
    names = list(torch_names)
    missing = [n for n in names if n not in links]
    if missing:
        raise KeyError(f"the nnx model has no variable for {missing} (pass rename=)")
    return [links[n] for n in names]


def _get(var):
    return var.get_value() if hasattr(var, "get_value") else var.value


def _set(var, value):
    if hasattr(var, "set_value"):
        var.set_value(value)
    else:  # pragma: no cover - older flax
        var.value = value


def torch_to_nnx(model, weights, *, rename=None, strict: bool = True) -> list:
    """Copies torch weights into flax nnx ``model`` in place, converting layouts.

    Args:
      model: an ``nnx.Module`` whose structure mirrors the torch module.
      weights: an ``nn.Module``, a torch state dict, or a (flat or nested) pytree from
        :func:`weights_from_torch`, :func:`load_pt` or :func:`load_safetensors`.
      rename: see :func:`nnx_links`.
      strict: every nnx variable gets a torch tensor and every torch tensor is used
        (torch's ``num_batches_tracked`` excepted), as ``load_state_dict(strict=True)``.

    Values are cast to the dtype of the nnx variable. Returns the links used.

    Raises:
      KeyError: names missing on either side (``strict``); ValueError: a shape that does not
      fit after the layout change.

    Example::

        >>> import torch, jax.numpy as jnp
        >>> from flax import nnx
        >>> from jaxupdate.interop.weights import torch_to_nnx
        >>> t = torch.nn.Linear(3, 2)
        >>> m = nnx.Linear(3, 2, rngs=nnx.Rngs(0))
        >>> _ = torch_to_nnx(m, t)
        >>> bool(jnp.allclose(m(jnp.ones((1, 3))), t(torch.ones(1, 3)).detach().numpy()))
        True
    """
    torch = T.torch()
    if isinstance(weights, torch.nn.Module):
        flat = weights_from_torch(weights, buffers=True)
    elif isinstance(weights, Mapping) and all(T.is_tensor(v) for v in weights.values()):
        flat = weights_from_torch(weights)
    else:
        flat = _flatten(weights)
    links = nnx_links(model, rename=rename)
    used = set()
    missing = []
    for link in links:
        if link.torch_name not in flat:
            missing.append(link.torch_name)
            continue
        used.add(link.torch_name)
        old = _get(link.variable)
        new = link.to_nnx(jnp.asarray(T.to_numpy(flat[link.torch_name])))
        if tuple(new.shape) != tuple(old.shape):
            raise ValueError(
                f"{link.torch_name!r} -> {link.nnx_path!r}: shape {tuple(new.shape)} after the "
                f"layout change, the model has {tuple(old.shape)}"
            )
        _set(link.variable, new.astype(old.dtype))
    unused = [n for n in flat if n not in used and n.rsplit(".", 1)[-1] not in _TORCH_ONLY_BUFFERS]
    if strict and (missing or unused):
        raise KeyError(
            f"torch weights and nnx model do not match: missing in the weights {missing}, "
            f"not used by the model {unused} (pass rename= or strict=False)"
        )
    return links


def nnx_to_torch(model, *, rename=None, order: Optional[Iterable[str]] = None) -> OrderedDict:
    """The weights of nnx ``model`` as a torch state dict (torch names and layouts).

    Returns ``OrderedDict`` torch name -> ``torch.Tensor``, in ``order`` when given (e.g.
    ``torch_module.state_dict().keys()``; names the model lacks, such as
    ``num_batches_tracked``, are left out), else module by module in nnx's (sorted attribute)
    order, each module's tensors in torch's order (``weight`` before ``bias``). Load it with
    ``torch_module.load_state_dict(sd, strict=False)`` when the torch module has buffers
    that nnx does not keep.

    Example::

        >>> import torch
        >>> from flax import nnx
        >>> from jaxupdate.interop.weights import nnx_to_torch
        >>> m = nnx.Linear(3, 2, rngs=nnx.Rngs(0))
        >>> sd = nnx_to_torch(m)
        >>> {k: tuple(v.shape) for k, v in sd.items()}
        {'weight': (2, 3), 'bias': (2,)}
        >>> torch.nn.Linear(3, 2).load_state_dict(sd)
        <All keys matched successfully>
    """
    out = OrderedDict(
        (link.torch_name, T.to_tensor(link.to_torch(jnp.asarray(_get(link.variable)))))
        for link in nnx_links(model, rename=rename)
    )
    if order is None:
        return out
    order = [n for n in order if n in out]
    return OrderedDict([(n, out[n]) for n in order] + [(n, v) for n, v in out.items()
                                                        if n not in set(order)])


__all__ = [
    "NnxLink",
    "load_pt",
    "load_safetensors",
    "load_weights_into_torch",
    "nnx_links",
    "nnx_param_map",
    "nnx_to_torch",
    "save_safetensors",
    "torch_to_nnx",
    "weights_from_torch",
    "weights_to_torch",
]

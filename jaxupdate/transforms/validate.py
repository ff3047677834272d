"""Input checks: gradients, parameters and optimizer state must agree, checked at trace time.

torch attaches a gradient to its parameter (``p.grad = g``) and refuses a gradient of another
size or dtype on the spot (``RuntimeError: attempting to assign a gradient of size '[4]' to a
tensor of size '[3]'``). A transformation receives three separate trees instead, ``grads``,
``opt_state`` and ``params``, and without a check a mismatch surfaces as a broadcasting error
deep inside an update, or worse, as a silent broadcast. :func:`validate_inputs` wraps an
optimizer and checks, before its update runs:

* ``params`` (at ``init`` and ``update``): floating point or complex leaves only, torch's
  ``Only Tensors of floating point and complex dtype can require gradients``;
* ``grads`` against ``params``: same tree structure, then leaf by leaf the same shape and dtype;
* ``opt_state`` against the state ``init`` builds for such parameters (``jax.eval_shape``, no
  computation): same structure (a state from another optimizer, or from the same optimizer
  with other options, fails here, naming both), then the same shapes and dtypes.

Each error names the first mismatching key path, e.g.
``grads['layer']['w'] has shape (3, 4) but params has (4, 3)``. All checks read static shapes
and dtypes only, so under ``jit`` they run once, while tracing, and cost nothing afterwards; the
state the wrapper returns is the inner optimizer's own (no extra layer).

Example::

    >>> import jax.numpy as jnp, optax
    >>> from jaxupdate.transforms.validate import validate_inputs
    >>> tx = validate_inputs(optax.adam(1e-3))
    >>> params = {"w": jnp.zeros((4, 3))}
    >>> state = tx.init(params)
    >>> try:
    ...     tx.update({"w": jnp.zeros((3, 4))}, state, params)
    ... except OptimizerInputError as e:
    ...     print(e)
    grads['w'] has shape (3, 4) but params has (4, 3)
"""

from __future__ import annotations

from typing import Any, Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxupdate._described import description, state_names

__all__ = ["OptimizerInputError", "check_params", "check_same_layout", "validate_inputs"]


class OptimizerInputError(ValueError, RuntimeError):
    """Gradients, parameters or state that do not fit together.

    A ``ValueError`` (Python's convention for a bad value) and a ``RuntimeError`` (the type
    torch raises for a gradient of the wrong size or dtype, and for integer parameters), so
    either ``except`` clause catches it.
    """


def _abstract(x):
    """(shape, dtype) of a leaf, statically (arrays, tracers, numpy arrays, Python scalars)."""
    shape, dtype = getattr(x, "shape", None), getattr(x, "dtype", None)
    if shape is None or dtype is None:
        x = jnp.asarray(x)
        shape, dtype = x.shape, x.dtype
    return tuple(shape), np.dtype(dtype)


def _dtype_name(dtype) -> str:
    return "float0" if dtype == jax.dtypes.float0 else np.dtype(dtype).name


def _flatten(tree):
    path_leaves, treedef = jax.tree_util.tree_flatten_with_path(tree)
    return [jax.tree_util.keystr(p) for p, _ in path_leaves], [x for _, x in path_leaves], treedef


def _first_difference(a_paths, b_paths):
    """``("a", path)``: the first path only ``a`` has; ``("b", path)``: only ``b``; ``None``:
    same paths (the containers differ); ``("order", None)``: same paths in another order."""
    a_set, b_set = set(a_paths), set(b_paths)
    for i in range(max(len(a_paths), len(b_paths))):
        pa = a_paths[i] if i < len(a_paths) else None
        pb = b_paths[i] if i < len(b_paths) else None
        if pa == pb:
            continue
        if pa is not None and pa not in b_set:
            return "a", pa
        if pb is not None and pb not in a_set:
            return "b", pb
        return "order", None
    return None


def _structure_message(a_name, a_paths, a_def, b_name, b_paths, b_def) -> str:
    """Names the first key path where two tree structures part."""
    diff = _first_difference(a_paths, b_paths)
    if diff is None:
        return (
            f"{a_name} and {b_name} hold the same entries in different containers: "
            f"{a_def} vs {b_def}"
        )
    kind, path = diff
    if kind == "a":
        return f"{a_name}{path} has no counterpart in {b_name}"
    if kind == "b":
        return f"{b_name}{path} is missing from {a_name}"
    return f"{a_name} and {b_name} list the same entries in a different order"


def check_same_layout(a, b, a_name: str = "grads", b_name: str = "params") -> None:
    """Raises :class:`OptimizerInputError` unless trees ``a`` and ``b`` have the same structure
    and, leaf by leaf, the same shape and dtype; the message names the first mismatching path.

    Example::

        >>> import jax.numpy as jnp
        >>> try:
        ...     check_same_layout({"w": jnp.zeros(3)}, {"w": jnp.zeros(3, jnp.float16)})
        ... except OptimizerInputError as e:
        ...     print(e)
        grads['w'] has dtype float32 but params has float16
    """
    a_paths, a_leaves, a_def = _flatten(a)
    b_paths, b_leaves, b_def = _flatten(b)
    if a_def != b_def:
        raise OptimizerInputError(
            _structure_message(a_name, a_paths, a_def, b_name, b_paths, b_def)
        )
    _compare_leaves(a_name, a_paths, a_leaves, b_name, b_leaves)


def _compare_leaves(a_name, paths, a_leaves, b_name, b_leaves, hint: str = "") -> None:
    for path, x, y in zip(paths, a_leaves, b_leaves):
        (xs, xd), (ys, yd) = _abstract(x), _abstract(y)
        if xs != ys:
            raise OptimizerInputError(
                f"{a_name}{path} has shape {xs} but {b_name} has {ys}{hint}"
            )
        if xd != yd:
            raise OptimizerInputError(
                f"{a_name}{path} has dtype {_dtype_name(xd)} but {b_name} has "
                f"{_dtype_name(yd)}{hint}"
            )


def check_params(params, name: str = "params") -> None:
    """Raises torch's error (as an :class:`OptimizerInputError`, a ``RuntimeError``) for a
    leaf that is not floating point or complex, naming its key path."""
    paths, leaves, _ = _flatten(params)
    for path, x in zip(paths, leaves):
        _, dtype = _abstract(x)
        if dtype == jax.dtypes.float0 or not jnp.issubdtype(dtype, jnp.inexact):
            what = "gradients" if name == "grads" else "parameters"
            raise OptimizerInputError(
                "Only Tensors of floating point and complex dtype can require gradients: "
                f"{name}{path} has dtype {_dtype_name(dtype)} (an optimizer updates floating "
                f"point or complex {what} only; keep integer leaves out of it, e.g. with "
                "optax.masked)"
            )


def _block_names(state) -> list[str]:
    """Type names of the blocks making up a state (a chain's state is a tuple of them)."""
    if isinstance(state, tuple) and not hasattr(state, "_fields"):
        return [type(s).__name__ for s in state]
    return [type(state).__name__]


_GENERIC_BLOCKS = {"CountState", "EmptyState", "MaskedNode", "NoneType", "tuple"}

def _looks_like(names: list[str]) -> Optional[str]:
    """A human name for the optimizer behind a state: ``TorchAdamState`` -> ``Adam/AdamW``."""
    # the optimizer a state block identifies, from the optimizers' declarations (the first
    # block that identifies one names it)
    known = state_names()
    for n in names:
        if n in known:
            return known[n]
        if n not in _GENERIC_BLOCKS:
            n = n[len("Torch"):] if n.startswith("Torch") else n
            return n[: -len("State")] if n.endswith("State") and n != "State" else n
    # a chain whose blocks keep no state of their own, only the chain's step count
    if names and names[-1] == "CountState" and all(n in _GENERIC_BLOCKS for n in names):
        return "SGD without momentum"
    return None


def optimizer_name(tx) -> Optional[str]:
    """The optimizer's name when its constructor left a description on it (``described``)."""
    return getattr(description(tx), "name", None)


def validate_inputs(inner: optax.GradientTransformation) -> optax.GradientTransformationExtraArgs:
    """Wraps ``inner`` so that ``init`` and ``update`` reject inputs that do not fit together.

    ``init(params)``: every leaf floating point or complex. ``update(grads, opt_state,
    params)``: ``params`` as in ``init``; ``grads`` of ``params``' structure, shapes and dtypes
    (with ``params=None``, floating point ``grads``); ``opt_state`` of the structure, shapes and
    dtypes that ``inner.init`` gives for such parameters. Errors are
    :class:`OptimizerInputError` naming the first mismatching key path. The checks happen in
    Python on static shapes and dtypes (under ``jit``: once, at trace time); the state is
    ``inner``'s own, unchanged.

    Args:
      inner: any optax transformation (every jaxupdate optimizer is built with one).

    Returns:
      A ``GradientTransformationExtraArgs`` with ``inner``'s state.

    Example::

        >>> import jax.numpy as jnp
        >>> from jaxupdate.optim.adam import adam
        >>> from jaxupdate.optim.sgd import sgd
        >>> tx = validate_inputs(sgd(lr=0.1, momentum=0.9))
        >>> params = {"w": jnp.zeros(3)}
        >>> state = adam().init(params)                     # another optimizer's state
        >>> try:
        ...     tx.update(params, state, params)
        ... except OptimizerInputError as e:
        ...     print(str(e).split(": ")[1].split(";")[0])
        it is made of (TorchAdamState, CountState), the state of Adam/AdamW
    """
    wrapped = inner
    inner = optax.with_extra_args_support(inner)
    expected_cache: dict[Any, Any] = {}

    def expected_state(reference):
        abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(*_abstract(x)), reference)
        leaves, treedef = jax.tree.flatten(abstract)
        key = (treedef, tuple((x.shape, x.dtype) for x in leaves), jax.config.jax_enable_x64)
        if key not in expected_cache:
            expected_cache[key] = jax.eval_shape(inner.init, abstract)
        return expected_cache[key]

    def init_fn(params):
        check_params(params, "params")
        return inner.init(params)

    def update_fn(updates, state, params=None, **extra_args):
        if params is not None:
            check_params(params, "params")
            check_same_layout(updates, params, "grads", "params")
            reference, ref_name = params, "params"
        else:
            check_params(updates, "grads")
            reference, ref_name = updates, "grads"
        name = optimizer_name(tx) or optimizer_name(wrapped)
        check_state_fits(state, expected_state(reference), ref_name, name)
        return inner.update(updates, state, params, **extra_args)

    tx = optax.GradientTransformationExtraArgs(init_fn, update_fn)
    return tx


def check_state_fits(state, expected, ref_name: str, name: Optional[str]) -> None:
    """Raises :class:`OptimizerInputError` naming the first path where ``state`` differs from
    ``expected`` (what ``tx.init`` builds for ``ref_name``) in structure, shape or dtype;
    ``name``: the optimizer's name for the message, or None."""
    s_paths, s_leaves, s_def = _flatten(state)
    e_paths, e_leaves, e_def = _flatten(expected)
    if s_def != e_def:
        got, want = _block_names(state), _block_names(expected)
        mine = name or _looks_like(want)
        this = f" ({mine})" if mine else ""
        if got != want:
            other = _looks_like(got)
            whose = f", the state of {other}" if other and other != mine else ""
            raise OptimizerInputError(
                f"opt_state does not belong to this optimizer{this}: it is made of "
                f"({', '.join(got)}){whose}; this optimizer's state is made of "
                f"({', '.join(want)}). Was it created by another optimizer's init?"
            )
        diff = _first_difference(s_paths, e_paths)
        if diff is None or diff[0] == "order":
            where = f"its containers differ from the expected {e_def}"
        elif diff[0] == "a":
            where = f"opt_state{diff[1]} is not part of this optimizer's state"
        else:
            where = f"this optimizer's state has opt_state{diff[1]}, the given one does not"
        raise OptimizerInputError(
            f"opt_state does not fit this optimizer{this}: {where}. It was created by the same "
            f"kind of optimizer with other options (e.g. amsgrad, momentum, centered) or for "
            f"{ref_name} of another structure"
        )
    _compare_leaves(
        "opt_state", s_paths, s_leaves, f"the state init builds for these {ref_name}", e_leaves,
        hint=f" (opt_state was created for other {ref_name}, or is corrupt)",
    )

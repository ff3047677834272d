"""Optimizer state on a device ``Mesh``: the parameters' shardings, or ZeRO-1 along the data axis.

JAX's own sharding is the engine: a jaxupdate optimizer is a pure function of arrays, so
``jax.jit`` runs it on sharded parameters as it runs any other code. What this module adds is
the placement of the *state*, which ``tx.init`` cannot choose by itself:

- eagerly, ``tx.init(params)`` on sharded parameters gives the moment buffers the parameters'
  shardings (``zeros_like`` keeps them), but scalar counters land on one device; under
  ``jax.jit`` without ``out_shardings`` (on a mesh of ``Auto`` axes, ``Mesh(devices, names)``)
  every output is placed on one device, since zeros depend on no input;
- :func:`state_sharding` gives each state leaf that mirrors a parameter the parameter's sharding
  (matched by tree path and shape; complex parameters, whose state is the real view with a
  trailing axis of 2, included), every other leaf (counters, factored moments,
  hyperparameters, plateau state) is replicated on the mesh;
- :func:`zero1_state_sharding` (or ``state_sharding(..., zero1_axis="data")``) additionally
  partitions each state leaf along the data-parallel axis, as ZeRO stage 1 does: each device
  keeps ``1 / mesh.shape["data"]`` of the state, XLA slices the (replicated) gradient locally
  and all-gathers the updates, so results are unchanged;
- :func:`init` runs ``tx.init`` under ``jit`` with those shardings as ``out_shardings``: the
  state is created in place, never materialised on one device.

A sharding choice never changes the numbers: the update of an elementwise optimizer (SGD,
Adam, ...) on sharded arrays is the same arithmetic on each shard, and its compiled step
contains no collective when the state takes the parameters' shardings.

Example::

    >>> import jax, jax.numpy as jnp, numpy as np
    >>> from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
    >>> import jaxupdate as ju
    >>> from jaxupdate import sharding as jus
    >>> mesh = Mesh(np.array(jax.devices()[:1]).reshape(1, 1), ("data", "model"))
    >>> params = jax.device_put({"w": jnp.ones((4, 2))}, NamedSharding(mesh, P(None, "model")))
    >>> tx = ju.adam(lr=1e-3)
    >>> shardings = jus.state_sharding(tx, params)                  # state like params
    >>> opt_state = jus.init(tx, params, shardings)                 # created in place
    >>> opt_state[0].exp_avg["w"].sharding.spec
    P(None, 'model')
    >>> z = jus.state_sharding(tx, params, zero1_axis="data")       # ZeRO-1
    >>> z[0].exp_avg["w"].spec
    P('data', 'model')

and a training step keeps those placements::

    step = jax.jit(train_step, in_shardings=(param_sh, shardings, batch_sh),
                   out_shardings=(param_sh, shardings))
"""

from __future__ import annotations

import math
from typing import Any, Optional

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

__all__ = ["init", "param_sharding", "state_sharding", "zero1_state_sharding"]


def _is_sharding_leaf(x) -> bool:
    return isinstance(x, jax.sharding.Sharding)


def param_sharding(params) -> Any:
    """The ``NamedSharding`` of each parameter (arrays or ``ShapeDtypeStruct``s with one)."""

    def get(p):
        sh = getattr(p, "sharding", None)
        if not isinstance(sh, NamedSharding):
            raise ValueError(
                "every parameter must carry a NamedSharding (jax.device_put(x, "
                f"NamedSharding(mesh, spec)) or ShapeDtypeStruct(..., sharding=...)); got {sh!r}"
            )
        return sh

    return jax.tree.map(get, params)


def _mesh_of(shardings) -> Mesh:
    meshes = {id(s.mesh): s.mesh for s in jax.tree.leaves(shardings, is_leaf=_is_sharding_leaf)}
    if not meshes:
        raise ValueError("no parameter: cannot tell the mesh")
    if len(meshes) > 1:
        first = next(iter(meshes.values()))
        if any(m != first for m in meshes.values()):
            raise ValueError("the parameters live on different meshes")
    return next(iter(meshes.values()))


def _padded_spec(spec: PartitionSpec, ndim: int) -> tuple:
    entries = tuple(spec)
    return entries + (None,) * (ndim - len(entries))


def _abstract(x):
    return jax.ShapeDtypeStruct(tuple(x.shape), x.dtype)


def state_sharding(tx, params, *, zero1_axis: Optional[str] = None, param_shardings=None):
    """Shardings for ``tx.init(params)``: each state leaf like its parameter, the rest replicated.

    A state leaf takes the sharding of the parameter whose tree path ends its own path (the
    longest such), when their shapes agree (or the leaf is a complex parameter's real view,
    with a trailing axis of 2, which gets that axis unsharded). This covers optax and
    jaxupdate states (``exp_avg["w"]`` mirrors ``params["w"]``; a chain's or
    ``inject_hyperparams``'s nesting adds prefixes only). Every other leaf (step counters,
    Adafactor's factored row/column moments, hyperparameters, ReduceLROnPlateau's state) is
    replicated on the mesh. The choice affects placement and communication only, never the
    numbers.

    Args:
      tx: an optax ``GradientTransformation`` (any jaxupdate optimizer or chain).
      params: the parameters, arrays or ``ShapeDtypeStruct``s carrying ``NamedSharding``s (or
        give ``param_shardings``).
      zero1_axis: a mesh axis name (e.g. ``"data"``) to partition the state along further,
        ZeRO-1 style, see :func:`zero1_state_sharding`.
      param_shardings: the parameters' ``NamedSharding``s, when ``params`` carry none.

    Returns:
      A pytree of ``NamedSharding`` with the structure of ``tx.init(params)``: pass it as
      ``out_shardings`` of ``jax.jit(tx.init)`` (:func:`init` does) and as the state's
      ``in_shardings`` / ``out_shardings`` of the training step.

    Example::

        >>> import jax, jax.numpy as jnp, numpy as np
        >>> from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
        >>> import jaxupdate as ju
        >>> from jaxupdate.sharding import state_sharding
        >>> mesh = Mesh(np.array(jax.devices()[:1]), ("model",))
        >>> params = {"w": jax.device_put(jnp.ones(4), NamedSharding(mesh, P("model")))}
        >>> sh = state_sharding(ju.sgd(0.1, momentum=0.9), params)
        >>> sh[0].momentum_buffer["w"].spec
        P('model',)
    """
    if param_shardings is None:
        param_shardings = param_sharding(params)
    mesh = _mesh_of(param_shardings)
    abstract_params = jax.tree.map(_abstract, params)
    abstract_state = jax.eval_shape(tx.init, abstract_params)

    by_path = {}
    p_flat, _ = jax.tree_util.tree_flatten_with_path(abstract_params)
    s_flat = jax.tree.leaves(param_shardings, is_leaf=_is_sharding_leaf)
    for (path, p), sh in zip(p_flat, s_flat, strict=True):
        by_path[tuple(path)] = (p, sh)
    replicated = NamedSharding(mesh, PartitionSpec())

    def choose(path, leaf):
        path = tuple(path)
        for n in range(len(path), -1, -1):
            hit = by_path.get(path[len(path) - n :])
            if hit is None:
                continue
            p, sh = hit
            shape = tuple(leaf.shape)
            if shape == tuple(p.shape):
                return NamedSharding(mesh, sh.spec)
            if np.issubdtype(p.dtype, np.complexfloating) and shape == tuple(p.shape) + (2,):
                return NamedSharding(mesh, PartitionSpec(*_padded_spec(sh.spec, p.ndim), None))
        return replicated

    shardings = jax.tree_util.tree_map_with_path(choose, abstract_state)
    if zero1_axis is None:
        return shardings
    sharded_abstract = jax.tree.map(
        lambda a, sh: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=sh),
        abstract_state,
        shardings,
    )
    return zero1_state_sharding(sharded_abstract, mesh, axis=zero1_axis)


def _axis_size(mesh: Mesh, entry) -> int:
    if entry is None:
        return 1
    names = entry if isinstance(entry, tuple) else (entry,)
    return math.prod(mesh.shape[n] for n in names)


def zero1_state_sharding(opt_state, mesh: Optional[Mesh] = None, axis: str = "data"):
    """Shardings that partition each state leaf along mesh axis ``axis`` (ZeRO stage 1).

    For every leaf, starting from its current ``NamedSharding`` (or replicated when it has
    none, e.g. a plain ``jax.eval_shape`` result), ``axis`` is added to one dimension: the
    largest dimension not yet sharded whose size ``axis`` divides, else the largest sharded
    one whose size the combined axes divide (``("model", "data")``). Leaves that already use
    ``axis``, scalars and leaves with no such dimension keep their sharding (replicated along
    ``axis``; correct, only not partitioned).

    Under ``jax.jit`` with these state shardings and replicated-along-``axis`` parameters,
    each device updates its slice of the state; XLA slices the gradient locally and
    all-gathers the updates (the one collective ZeRO-1 needs). Numbers are those of the
    unsharded run. Use with meshes of ``Auto`` axes (``Mesh(devices, names)``, or
    ``jax.make_mesh(..., axis_types=(AxisType.Auto, ...))``); with ``Explicit`` axes a
    reshard of the updates is the user's to write.

    Args:
      opt_state: a state (arrays or ``ShapeDtypeStruct``s), its leaves' ``.sharding`` the
        starting point when they are ``NamedSharding``s.
      mesh: the mesh; taken from the leaves' shardings when omitted.
      axis: the data-parallel mesh axis name.

    Returns:
      A pytree of ``NamedSharding`` with the structure of ``opt_state``.

    Example::

        >>> import jax, jax.numpy as jnp, numpy as np
        >>> from jax.sharding import Mesh
        >>> import jaxupdate as ju
        >>> from jaxupdate.sharding import zero1_state_sharding
        >>> mesh = Mesh(np.array(jax.devices()[:1]), ("data",))
        >>> state = jax.eval_shape(ju.adam().init, {"w": jnp.ones((8, 3))})
        >>> zero1_state_sharding(state, mesh)[0].exp_avg["w"].spec
        P('data', None)
    """
    leaves = jax.tree.leaves(opt_state)
    if mesh is None:
        named = [getattr(x, "sharding", None) for x in leaves]
        named = [sh for sh in named if isinstance(sh, NamedSharding)]
        if not named:
            raise ValueError("give the mesh: no leaf of opt_state carries a NamedSharding")
        mesh = _mesh_of(named)
    if axis not in mesh.shape:
        raise ValueError(f"mesh has no axis {axis!r}; its axes are {tuple(mesh.shape)}")
    size = mesh.shape[axis]

    def place(leaf):
        shape = tuple(leaf.shape)
        sh = getattr(leaf, "sharding", None)
        spec = sh.spec if isinstance(sh, NamedSharding) else PartitionSpec()
        entries = list(_padded_spec(spec, len(shape)))
        used = {n for e in entries if e is not None for n in (e if isinstance(e, tuple) else (e,))}
        if axis in used or not shape:
            return NamedSharding(mesh, PartitionSpec(*entries))
        free = [d for d in range(len(shape)) if entries[d] is None and shape[d] % size == 0]
        shared = [
            d
            for d in range(len(shape))
            if entries[d] is not None and shape[d] % (_axis_size(mesh, entries[d]) * size) == 0
        ]
        if free:
            d = max(free, key=lambda i: (shape[i], -i))
            entries[d] = axis
        elif shared:
            d = max(shared, key=lambda i: (shape[i], -i))
            e = entries[d]
            entries[d] = (e if isinstance(e, tuple) else (e,)) + (axis,)
        return NamedSharding(mesh, PartitionSpec(*entries))

    return jax.tree.map(place, opt_state)


def init(tx, params, shardings=None):
    """``tx.init(params)`` created directly with ``shardings`` (default :func:`state_sharding`).

    Runs ``tx.init`` under ``jax.jit`` with ``out_shardings=shardings``, so each device
    allocates only its own shards; nothing passes through a single device.

    Example::

        >>> import jax, jax.numpy as jnp, numpy as np
        >>> from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
        >>> import jaxupdate as ju
        >>> from jaxupdate import sharding as jus
        >>> mesh = Mesh(np.array(jax.devices()[:1]), ("data",))
        >>> params = jax.device_put({"w": jnp.ones(4)}, NamedSharding(mesh, P()))
        >>> state = jus.init(ju.adam(), params, jus.state_sharding(ju.adam(), params))
        >>> isinstance(ju.transforms.step_count(state).sharding, NamedSharding)
        True
    """
    if shardings is None:
        shardings = state_sharding(tx, params)
    return jax.jit(tx.init, out_shardings=shardings)(params)

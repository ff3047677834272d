"""The flat state of a fused optimizer: one 1-D buffer per dtype per state field.

Why: outside ``jit`` every array ``ju.step`` passes to XLA costs microseconds of jax's own
work whatever the kernel does (measured on the 2-core test machine: about 2.2 us to donate an
array, 0.5 us to read one, 1.7 us to free a donated one), so per-leaf state made Adam pay for
three donated arrays per parameter tensor: 1.5x torch's fused Adam at 1,000 leaves and 2.2x
at 10,000 (10M parameters). Held flat, Adam's ``exp_avg`` and ``exp_avg_sq`` are one array
each per dtype, and a step donates one array per parameter tensor (the parameter itself) plus
a few buffers: 1.0x and 0.9x (README, "Fused column").

A :class:`FlatLeaves` stands where the per-leaf tree of a state field stood (Adam's
``ScaleByTorchAdamState.exp_avg``, say): its pytree children are the buffers, so ``jit``,
donation, ``jax.device_put``, orbax checkpoints and ``jax.tree.map`` see a few large arrays;
its static layout (the parameters' tree structure, shapes and dtypes) turns it back into the
per-leaf tree exactly (:meth:`FlatLeaves.to_tree`, :func:`unflatten_state`): slicing and
concatenating move values, they never round. ``torch_state_dict``, ``to_torch``,
``load_torch_state_dict`` and the XLA path convert at their boundary, so what they read and
write is the ``fused=False`` state.

Layout: the leaves of each dtype, in the parameters' flatten order, raveled (C order) and
concatenated; dtypes in order of their names (the kernel plan's order). Empty leaves take no
room.
"""

from __future__ import annotations

import math
import sys
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np


class FlatLayout(NamedTuple):
    """Static description of a :class:`FlatLeaves`: ``treedef`` of the parameters, per leaf its
    ``shapes`` / ``dtypes`` (numpy dtypes), ``group`` (index in ``group_dtypes``) and
    ``offset`` (first element in that group's buffer); ``sizes`` per group."""

    treedef: object
    shapes: tuple
    dtypes: tuple
    group: tuple
    offset: tuple
    group_dtypes: tuple
    sizes: tuple


def layout_of(leaves_like, treedef) -> FlatLayout:
    """The :class:`FlatLayout` of leaves (anything with ``shape`` and ``dtype``)."""
    shapes = tuple(tuple(np.shape(x)) for x in leaves_like)
    dtypes = tuple(np.dtype(x.dtype) for x in leaves_like)
    group_dtypes = tuple(sorted(set(dtypes), key=str))
    index = {dt: i for i, dt in enumerate(group_dtypes)}
    sizes = [0] * len(group_dtypes)
    group, offset = [], []
    for s, dt in zip(shapes, dtypes):
        g = index[dt]
        group.append(g)
        offset.append(sizes[g])
        sizes[g] += math.prod(s)
    return FlatLayout(treedef, shapes, dtypes, tuple(group), tuple(offset), group_dtypes,
                      tuple(sizes))


def tree_layout(tree) -> FlatLayout:
    leaves, treedef = jax.tree.flatten(tree)
    return layout_of(leaves, treedef)


def pure(tree):
    """``tree`` with flax nnx ``Variable`` nodes replaced by their values: ``nnx.Optimizer``
    calls ``tx.init`` on ``nnx.State`` holding ``Param`` nodes but steps with plain arrays
    (``nnx.as_pure``), so a layout records the plain structure."""
    if "flax.nnx" not in sys.modules:
        return tree
    from jaxupdate.interop.state_dict import unwrap_nnx

    return unwrap_nnx(tree)


@jax.tree_util.register_pytree_node_class
class FlatLeaves:
    """A params-shaped state field held as one 1-D buffer per dtype (see the module notes).

    ``buffers``: one array per ``layout.group_dtypes``; ``layout``: a :class:`FlatLayout`.
    ``to_tree()`` gives the per-leaf tree, ``FlatLeaves.from_tree(tree)`` builds one.
    """

    __slots__ = ("buffers", "layout")

    def __init__(self, buffers, layout: FlatLayout):
        # no checks: jax rebuilds nodes with placeholders (tracers, ShapeDtypeStructs, None)
        self.buffers = tuple(buffers)
        self.layout = layout

    def tree_flatten(self):
        return self.buffers, self.layout

    @classmethod
    def tree_unflatten(cls, layout, buffers):
        return cls(buffers, layout)

    def __repr__(self):
        parts = ", ".join(f"{dt}[{n}]" for dt, n in zip(self.layout.group_dtypes,
                                                         self.layout.sizes))
        return f"FlatLeaves({len(self.layout.shapes)} leaves in {parts})"

    @classmethod
    def from_tree(cls, tree, layout: FlatLayout = None) -> "FlatLeaves":
        """``tree`` (params-shaped) raveled into one buffer per dtype; ``layout``: the one to
        follow (default: ``tree``'s own), checked against ``tree``."""
        leaves, treedef = jax.tree.flatten(tree)
        own = layout_of(leaves, treedef)
        if layout is None:
            layout = own
        elif (own.treedef, own.shapes, own.dtypes) != (layout.treedef, layout.shapes,
                                                       layout.dtypes):
            raise ValueError(
                "state field does not have the layout of the fused optimizer's flat state: "
                f"{own.treedef} with shapes {own.shapes} and dtypes {own.dtypes}, expected "
                f"{layout.treedef} with shapes {layout.shapes} and dtypes {layout.dtypes}")
        # concrete leaves are joined on the host: an XLA concatenation of thousands of operands
        # takes seconds to compile (10,000 leaves: 15 s), numpy's takes milliseconds
        xp = jnp if any(isinstance(x, jax.core.Tracer) for x in leaves) else np
        bufs = []
        for gi, dt in enumerate(layout.group_dtypes):
            parts = [xp.ravel(x) for x, g in zip(leaves, layout.group) if g == gi]
            parts = [p for p in parts if p.size]
            if not parts:
                bufs.append(jnp.zeros((0,), dt))
            else:
                joined = parts[0] if len(parts) == 1 else xp.concatenate(parts)
                # an XLA-owned copy: the step donates the buffer, and XLA copies instead of
                # donating an array that wraps numpy's memory (or is the caller's array)
                bufs.append(jnp.copy(jnp.asarray(joined, dt)))
        return cls(bufs, layout)

    def to_tree(self):
        """The per-leaf tree (each leaf a slice of its buffer, reshaped)."""
        lay = self.layout
        if any(isinstance(b, jax.ShapeDtypeStruct) for b in self.buffers):
            # a template (jax.eval_shape(tx.init, ...)): the per-leaf template
            return lay.treedef.unflatten(
                [jax.ShapeDtypeStruct(s, d) for s, d in zip(lay.shapes, lay.dtypes)])
        leaves = []
        for s, g, o in zip(lay.shapes, lay.group, lay.offset):
            n = math.prod(s)
            leaves.append(jax.lax.slice(self.buffers[g], (o,), (o + n,)).reshape(s))
        return lay.treedef.unflatten(leaves)


def is_flat(x) -> bool:
    return isinstance(x, FlatLeaves)


def has_flat(state) -> bool:
    """Whether ``state`` holds any :class:`FlatLeaves`."""
    return any(map(is_flat, jax.tree.leaves(state, is_leaf=is_flat)))


def unflatten_state(state):
    """``state`` with every :class:`FlatLeaves` replaced by its per-leaf tree: the state a
    ``fused=False`` optimizer holds (same NamedTuples, same values). States without flat
    fields are returned as they are."""
    if not has_flat(state):
        return state
    return jax.tree.map(lambda x: x.to_tree() if is_flat(x) else x, state, is_leaf=is_flat)


def flatten_like(state, template):
    """``state`` (per-leaf fields, as :func:`unflatten_state` gives) in the layout of
    ``template`` (a state of the same optimizer, e.g. from ``tx.init``): the fields that are
    :class:`FlatLeaves` there are flattened with the same layout; a template without flat
    fields returns ``state`` as it is."""
    if not has_flat(template):
        return state
    return jax.tree.map(lambda t, s: FlatLeaves.from_tree(s, t.layout) if is_flat(t) else s,
                        template, state, is_leaf=is_flat)

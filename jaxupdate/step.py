"""``ju.step``: one optimizer step that writes the new parameters itself.

``params, opt_state = ju.step(tx, params, grads, opt_state)`` is ``tx.update`` followed by
``ju.apply_updates`` for every transformation, except a ``fused=True`` one on CPU, where a
single in-place pass per element updates parameters and state together (torch's fused
kernels; see :mod:`jaxupdate.fused`). The numbers are the same either way.
"""

from __future__ import annotations

import functools
import gc
import operator

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxupdate.fused import _specs
from jaxupdate.transforms.common import CountState

# "auto": the numba kernels when jax's default backend is the CPU, the XLA path elsewhere;
# "xla": always the XLA path (what a GPU runs; the tests force it on CPU to check that route)
BACKEND = "auto"

_KERNEL_DTYPES = _specs.KERNEL_DTYPES


def _layout(tree):
    leaves, treedef = jax.tree.flatten(tree)
    return treedef, tuple((np.shape(x), np.dtype(x.dtype)) for x in leaves)


def _flat_fields(spec, opt_state):
    """The kernel's state fields of ``opt_state`` when it is a fused chain's state whose fields
    are all flat (:class:`jaxupdate.fused._flat.FlatLeaves`, as ``tx.init`` builds them on
    CPU), else ``None`` (a per-leaf state, e.g. built on a GPU, runs the XLA path)."""
    from jaxupdate.fused._flat import is_flat

    try:
        if len(opt_state) != len(spec.blocks) + 1:
            return None
        fields = _specs.KERNELS[spec.kind].state(spec, opt_state)
    except (AttributeError, IndexError, TypeError, ValueError):
        return None
    return fields if all(map(is_flat, fields)) else None


def _fits(fields, treedef, shapes, dtypes) -> bool:
    """Whether flat state ``fields`` were laid out for these parameters and hold buffers of
    their layout's sizes (what the kernel reads: a wrong size would be read out of bounds)."""
    for f in fields:
        lay = f.layout
        if lay.treedef != treedef or lay.shapes != shapes or lay.dtypes != dtypes:
            return False
        if len(f.buffers) != len(lay.sizes) or any(
                np.shape(b) != (n,) or np.dtype(b.dtype) != dt
                for b, n, dt in zip(f.buffers, lay.sizes, lay.group_dtypes)):
            return False
    return True


def _check(tx, spec, params, grads, opt_state):
    """The layout checks of the XLA path (``validate_inputs``: grads against params, the
    state against what ``tx.init`` builds for them), before any kernel reads a buffer: an
    array of another shape would be read out of bounds. Compared as (treedef, shapes,
    dtypes) first, the flat state through its layout and buffer sizes; on a mismatch the
    validators that name the first mismatching path run."""
    from jaxupdate.transforms.validate import (
        OptimizerInputError,
        check_same_layout,
        check_state_fits,
    )

    p_layout = _layout(params)
    if _layout(grads) != p_layout:
        check_same_layout(grads, params, "grads", "params")
    fields = _flat_fields(spec, opt_state)
    treedef, shapes = p_layout
    ok = fields is not None and _fits(fields, treedef, tuple(s for s, _ in shapes),
                                      tuple(d for _, d in shapes))
    if not ok:
        abstract = treedef.unflatten([jax.ShapeDtypeStruct(s, d) for s, d in shapes])
        check_state_fits(opt_state, jax.eval_shape(tx.init, abstract), "params", None)
        raise OptimizerInputError("opt_state does not hold the state tx.init builds for params")


def _kernel_backend(spec, extra_args) -> bool:
    """Whether a fused kernel may run here, before looking at the leaves."""
    if spec is None or extra_args or BACKEND == "xla":
        return False
    # GPU / TPU: XLA fuses the elementwise step itself (multi-output fusion)
    return jax.default_backend() == "cpu"


def _use_kernel(spec, params, extra_args) -> bool:
    if not _kernel_backend(spec, extra_args):
        return False
    leaves = jax.tree.leaves(params)
    return all(np.dtype(getattr(x, "dtype", np.float64)) in _KERNEL_DTYPES for x in leaves)


def _not_differentiable(*_):
    raise TypeError(
        "ju.step with a fused=True optimizer is not differentiable (neither is torch's "
        "fused=True). Differentiate through the XLA path instead: build the optimizer with "
        "fused=False and use tx.update(grads, opt_state, params) + ju.apply_updates (or "
        "ju.step, which then runs that path)."
    )


def _not_batchable(*_):
    raise TypeError(
        "ju.step with a fused=True optimizer cannot be vmapped: its kernel updates buffers in "
        "place. Use fused=False (tx.update + ju.apply_updates), which vmaps."
    )


def _with_buffers(spec, opt_state, fields, new_buffers, increment):
    from jaxupdate.fused._flat import FlatLeaves

    new = [FlatLeaves(b, f.layout) for f, b in zip(fields, new_buffers)]
    return _specs.KERNELS[spec.kind].rebuild(spec, opt_state, new, increment=increment)


@functools.lru_cache(maxsize=None)
def _kernel_fn(spec):
    """(params, grads, opt_state) -> (params, opt_state) through the FFI kernel, for flat state
    (checked by the caller); refuses jvp / vjp (custom_jvp) and vmap (custom_vmap) with a
    message naming the XLA path."""
    from jaxupdate.fused import _call, _kernels

    k = _specs.KERNELS[spec.kind]
    name = _call.target("step", _kernels.handler)

    def run(params, grads, opt_state):
        p_leaves, treedef = jax.tree.flatten(params)
        g_leaves = treedef.flatten_up_to(grads)
        fields = k.state(spec, opt_state)
        plan = _call.plan(p_leaves, len(fields))
        scalars = [k.scalars(spec, opt_state, dt) for dt in plan.dtypes]
        new_p, new_b = _call.run(functools.partial(_call.call_chunk, name), plan, scalars,
                                 plan.offsets, p_leaves, g_leaves, [f.buffers for f in fields])
        return treedef.unflatten(new_p), _with_buffers(spec, opt_state, fields, new_b, True)

    batched = jax.custom_batching.custom_vmap(run)
    batched.def_vmap(_not_batchable)
    guarded = jax.custom_jvp(batched)
    guarded.defjvp(_not_differentiable)
    return guarded


@functools.partial(jax.jit, static_argnums=(0,), donate_argnums=(3, 5))
def _chunk_step(name, sc, offset, params, grads, buffers):
    from jaxupdate.fused import _call

    return _call.call_chunk(name, sc, offset, params, grads, buffers)


def _counts_only(opt_state):
    """The chain state with only its step count (all the scalars depend on; the blocks'
    states become None): passing the arrays to a jitted function would cost a dispatch per
    array."""
    return type(opt_state)(s if isinstance(s, CountState) else None for s in opt_state)


@functools.lru_cache(maxsize=None)
def _prep_fn(spec, dtypes):
    """One small jitted call per step: the kernel scalars of each dtype and the incremented
    counts (op by op they would be a few dozen dispatches)."""
    k = _specs.KERNELS[spec.kind]

    def prep(counts):
        scalars = tuple(k.scalars(spec, counts, dt) for dt in dtypes)
        return scalars, _specs.advance(spec, counts, {})

    return jax.jit(prep)


def _eager_kernel_step(spec, plan, offsets, treedef, p_leaves, g_leaves, fields, opt_state):
    """Outside jit: the kernel calls run chunk by chunk (``plan``, see
    :func:`jaxupdate.fused._call.plan`), each a small jitted call with its parameters and the
    flat state buffers donated. A whole-step jit would hand XLA every leaf at once, and XLA's
    compile time grows with the buffers of a computation (1,000 leaves of Adam: 2 s; 10,000:
    100 s and 12 GB); the chunk computations are small and shared by every chunk of the same
    shapes (a model repeats a few layer shapes), so the first call stays short."""
    from jaxupdate.fused import _call, _kernels

    name = _call.target("step", _kernels.handler)
    sc, new_counts = _prep_fn(spec, plan.dtypes)(_counts_only(opt_state))
    # The calls create a jax array object per output parameter (10,000 for 10,000 leaves)
    # while the caller still holds the donated ones: Python's cyclic GC counts allocations, so
    # it would scan its young generation dozens of times during the loop and promote all of
    # them towards full collections. Paused until the result exists (as timeit does; nothing
    # here makes a cycle): the caller then drops the donated arrays, which brings the count
    # back down, and a steady training loop collects no more often than without ju.step.
    gc_was_on = gc.isenabled()
    gc.disable()
    try:
        new_p, new_b = _call.run(functools.partial(_chunk_step, name), plan, sc, offsets,
                                 p_leaves, g_leaves, [f.buffers for f in fields])
        counted = type(opt_state)((*opt_state[:-1], new_counts[-1]))  # the advanced step count
        result = (treedef.unflatten(new_p),
                  _with_buffers(spec, counted, fields, new_b, False))
    finally:
        if gc_was_on:
            gc.enable()
    return result


# (spec, params treedef) -> (the params' avals, the plan, its offsets on the device, the
# fields' layout last seen): a steady-state step (same tree, same shapes) reuses its plan after
# comparing avals (jax hands out one aval object per shape and dtype, so the comparison is by
# identity, ~0.1 us a leaf) and the flat state's layout (by identity: tx.init and every step
# pass the same layout object on), instead of the layout checks and the grouping by dtype,
# which cost microseconds a leaf
_PLANS: dict = {}
_PLANS_MAX = 16
_aval = operator.attrgetter("aval")


@functools.lru_cache(maxsize=None)
def _array_type():
    return type(jnp.zeros(()))  # jax's concrete array class (not a Tracer, not numpy)


def _fast_eager_step(tx, spec, params, grads, opt_state):
    """The eager fused step for concrete jax arrays and flat state, with its plan cached per
    tree layout; ``None`` when another route must run (tracers, numpy leaves, a dtype without
    kernel, a per-leaf state; a state that does not fit raises the named error)."""
    from jaxupdate.fused import _call

    fields = _flat_fields(spec, opt_state)
    if fields is None:
        return None
    p_leaves, treedef = jax.tree.flatten(params)
    try:
        g_leaves = treedef.flatten_up_to(grads)
    except (TypeError, ValueError):
        return None
    types = set(map(type, p_leaves))
    types.update(map(type, g_leaves))
    for f in fields:
        types.update(map(type, f.buffers))
    if not types <= {_array_type()}:
        return None
    avals = list(map(_aval, p_leaves))
    key = (spec, treedef)
    entry = _PLANS.get(key)
    if entry is None or entry[0] != avals:
        if not all(a.dtype in _KERNEL_DTYPES for a in avals):
            return None
        _check(tx, spec, params, grads, opt_state)
        if len(_PLANS) >= _PLANS_MAX:
            _PLANS.pop(next(iter(_PLANS)))
        plan = _call.plan(avals, len(fields), _call.EAGER_CHUNK)
        offsets = tuple(jax.device_put(o) for o in plan.offsets)
        entry = _PLANS[key] = [avals, plan, offsets, fields[0].layout if fields else None]
    elif list(map(_aval, g_leaves)) != avals:
        _check(tx, spec, params, grads, opt_state)  # the named error (or weak types only)
    if fields:
        seen = entry[3]
        if any(f.layout is not seen for f in fields) or any(
                b.aval.shape != (n,) for f in fields
                for b, n in zip(f.buffers, f.layout.sizes)):
            _check(tx, spec, params, grads, opt_state)  # raises if they do not fit
            entry[3] = fields[0].layout
    g_leaves = _private_leaves(g_leaves, p_leaves, fields)
    return _eager_kernel_step(spec, entry[1], entry[2], treedef, p_leaves, g_leaves, fields,
                              opt_state)


def _private_leaves(g_leaves, p_leaves, fields):
    """``g_leaves`` with copies of any leaf that is also a parameter or state buffer (see
    :func:`_private_grads`), compared by id without building the donated set in the common
    case."""
    ids = set(map(id, g_leaves))
    if ids.isdisjoint(map(id, p_leaves)) and all(ids.isdisjoint(map(id, f.buffers))
                                                 for f in fields):
        return g_leaves
    donated = set(map(id, p_leaves)).union(*(map(id, f.buffers) for f in fields))
    return [jnp.copy(g) if id(g) in donated else g for g in g_leaves]


def _xla_step(tx, params, grads, opt_state, **extra_args):
    updates, opt_state = tx.update(grads, opt_state, params, **extra_args)
    return optax.apply_updates(params, updates), opt_state


@functools.lru_cache(maxsize=64)
def _eager_xla(tx):
    return jax.jit(functools.partial(_xla_step, tx), donate_argnums=(0, 2))


def _private_grads(grads, params, opt_state):
    """``grads`` with copies of any leaf that is also a parameter or state array: those are
    donated (consumed) by the eager step, and a buffer cannot be read after being donated in
    the same call (``ju.step(tx, p, p, s)``)."""
    donated = {id(x) for x in jax.tree.leaves((params, opt_state))}
    if not any(id(g) in donated for g in jax.tree.leaves(grads)):
        return grads
    return jax.tree.map(lambda g: jnp.copy(g) if id(g) in donated else g, grads)


def _is_traced(tree) -> bool:
    return any(isinstance(x, jax.core.Tracer) for x in jax.tree.leaves(tree))


def step(tx, params, grads, opt_state, **extra_args):
    r"""One optimizer step: ``params, opt_state = ju.step(tx, params, grads, opt_state)``.

    Algorithm: for a ``fused=True`` optimizer on CPU (float32 / float64 parameters), torch's
    ``_fused_<name>`` in spirit: one numba-compiled XLA FFI kernel walks every leaf once,
    reading ``param, grad`` and the state and writing ``param`` and the state in place (the
    per-element arithmetic is the XLA path's, so the numbers are identical). Otherwise, for
    every jaxupdate (or optax) transformation::

        updates, opt_state = tx.update(grads, opt_state, params, **extra_args)
        params = ju.apply_updates(params, updates)

    Under ``jax.jit`` it emits that computation (donate ``params`` and ``opt_state`` in your
    ``jit`` so the kernel updates them without copies); called outside ``jit`` it compiles
    itself once (the fused kernels: per chunk of leaves, so that thousands of leaves compile
    in seconds; the plan of chunks is kept per tree structure, so later steps only check the
    leaves' shapes and dtypes) and donates ``params`` and ``opt_state``: the arrays passed in
    are consumed, as ``torch.optim``'s ``step()`` overwrites its tensors. Not differentiable and not
    vmappable with a fused optimizer (as torch's ``fused=True``): use ``fused=False`` there.

    The kernel reads the flat state a fused optimizer's ``tx.init`` builds on CPU (one buffer
    per dtype per state field, :mod:`jaxupdate.fused`); a per-leaf state (``fused=False``'s,
    one built on a GPU, or ``jaxupdate.fused.unflatten_state(opt_state)``) runs the XLA path
    and stays per leaf.

    Args:
      tx: any ``optax.GradientTransformation`` (e.g. ``ju.adam(lr=1e-3, fused=True)``).
      params, grads, opt_state: as for ``tx.update``.
      **extra_args: passed to ``tx.update`` (e.g. ``value=`` for ReduceLROnPlateau); the
        fused kernel takes none, so with extra arguments the XLA path runs.

    Returns:
      ``(new_params, new_opt_state)``.

    Example::

        >>> import jax.numpy as jnp, jaxupdate as ju
        >>> tx = ju.sgd(lr=0.1, momentum=0.9)
        >>> params = {"w": jnp.array([1.0, 2.0])}
        >>> opt_state = tx.init(params)
        >>> params, opt_state = ju.step(tx, params, {"w": jnp.array([1.0, 1.0])}, opt_state)
        >>> params["w"]
        Array([0.9, 1.9], dtype=float32)
    """
    spec = _specs.spec_of(tx)
    if _kernel_backend(spec, extra_args):
        out = _fast_eager_step(tx, spec, params, grads, opt_state)
        if out is not None:
            return out
    fields = _flat_fields(spec, opt_state) if spec is not None else None
    if fields is not None and _use_kernel(spec, params, extra_args):
        _check(tx, spec, params, grads, opt_state)
        if not (_is_traced(params) or _is_traced(grads) or _is_traced(opt_state)):
            from jaxupdate.fused import _call

            grads = _private_grads(grads, params, opt_state)
            p_leaves, treedef = jax.tree.flatten(params)
            plan = _call.plan(p_leaves, len(fields), _call.EAGER_CHUNK)
            return _eager_kernel_step(spec, plan, plan.offsets, treedef, p_leaves,
                                      treedef.flatten_up_to(grads), fields, opt_state)
        return _kernel_fn(spec)(params, grads, opt_state)
    # a fused transformation's update warns when called outside ju.step: not from here
    with _specs.stepping(spec):
        if _is_traced((params, grads, opt_state, extra_args)):
            return _xla_step(tx, params, grads, opt_state, **extra_args)
        grads = _private_grads(grads, params, opt_state)
        try:
            jitted = _eager_xla(tx)
        except TypeError:  # a transformation that cannot be hashed: op by op
            return _xla_step(tx, params, grads, opt_state, **extra_args)
        return jitted(params, grads, opt_state, **extra_args)


def fused_available(tx) -> bool:
    """Whether ``ju.step(tx, ...)`` would run a fused kernel for float32 parameters here."""
    return _use_kernel(_specs.spec_of(tx), [np.zeros(1, np.float32)], {})

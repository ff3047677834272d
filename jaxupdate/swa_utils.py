"""Stochastic Weight Averaging and EMA as ``torch.optim.swa_utils``, as pure functions.

- :func:`averaged_model`: torch's ``AveragedModel`` as ``init(params)`` / ``update(state,
  params)``; the state holds the averaged ``params`` (and ``buffers``) and ``n_averaged``.
- :func:`get_swa_avg_fn`, :func:`get_ema_avg_fn` (one leaf at a time) and
  :func:`get_swa_multi_avg_fn`, :func:`get_ema_multi_avg_fn` (a list of leaves of one dtype),
  with torch's formulas; the multi-leaf forms return the new list instead of writing in place.
- :func:`reset_n_averaged`: torch's ``averaged.n_averaged.fill_(0)`` (torchvision's EMA
  warm-up: the next update copies the model again).
- :func:`swa_lr`: torch's ``SWALR`` as a schedule ``count -> lr``.
- :func:`update_bn`: torch's ``update_bn`` for ``flax.nnx`` models: recomputes every
  ``nnx.BatchNorm``'s running statistics over a loader, as torch's cumulative average.

Typical loop (torch's ``AveragedModel`` + ``SWALR`` example, the JAX way)::

    swa = ju.swa_utils.averaged_model()
    swa_state = swa.init(params)
    for epoch in range(epochs):
        ...train params...
        if epoch > swa_start:
            swa_state = swa.update(swa_state, params)
    # BatchNorm statistics of the averaged weights (flax.nnx model):
    nnx.update(model, swa_state.params)
    ju.swa_utils.update_bn(loader, model)
"""

from __future__ import annotations

import math
from typing import Any, Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp

from jaxupdate.numerics import lerp, true_divide

__all__ = [
    "AveragedModel",
    "AveragedModelState",
    "averaged_model",
    "get_ema_avg_fn",
    "get_ema_multi_avg_fn",
    "get_swa_avg_fn",
    "get_swa_multi_avg_fn",
    "reset_n_averaged",
    "swa_lr",
    "update_bn",
]


# --------------------------------------------------------------------------------------------
# Averaging functions
# --------------------------------------------------------------------------------------------


def _is_float(x) -> bool:
    return jnp.issubdtype(x.dtype, jnp.inexact)


def _default_float(x):
    """Arithmetic dtype of ``x`` with Python floats: its own if inexact, else torch's float32."""
    return x.dtype if _is_float(x) else jnp.float32


def _check_decay(decay):
    if decay < 0.0 or decay > 1.0:
        raise ValueError(
            f"Invalid decay value {decay} provided. Please provide a value in [0,1] range."
        )


def get_ema_multi_avg_fn(decay=0.999):
    r"""torch's ``get_ema_multi_avg_fn``: EMA of a list of leaves of one dtype.

    .. math::
        W^{EMA}_0 = W^{model}_0, \qquad
        W^{EMA}_{t+1} = decay \cdot W^{EMA}_t + (1 - decay) \cdot W^{model}_{t+1}

    computed as torch does: ``torch._foreach_lerp_(ema, model, 1 - decay)`` for floating and
    complex leaves, ``ema * decay + model * (1 - decay)`` (in float32, then truncated by the
    caller) for integer ones.

    Args:
      decay: decay rate in ``[0, 1]``, default ``0.999`` (torch's ``ValueError`` otherwise).

    Returns:
      ``fn(ema_list, model_list, num_averaged) -> new_ema_list`` (torch's updates in place;
      JAX arrays cannot, so the new list is returned).

    Example::

        >>> import jaxupdate as ju
        >>> ema = ju.swa_utils.averaged_model(multi_avg_fn=ju.swa_utils.get_ema_multi_avg_fn(0.9))
    """
    _check_decay(decay)

    def ema_update(ema_param_list, current_param_list, num_averaged):
        del num_averaged
        if _is_float(ema_param_list[0]):
            return [lerp(e, c, 1 - decay) for e, c in zip(ema_param_list, current_param_list)]
        f32 = jnp.float32
        return [
            e.astype(f32) * f32(decay) + c.astype(f32) * f32(1 - decay)
            for e, c in zip(ema_param_list, current_param_list)
        ]

    return ema_update


def get_swa_multi_avg_fn():
    r"""torch's ``get_swa_multi_avg_fn``: the running equal-weight average of a list of leaves.

    .. math::
        W^{SWA}_{n+1} = W^{SWA}_n + \frac{W^{model} - W^{SWA}_n}{n + 1}

    computed as torch does: ``torch._foreach_lerp_(avg, model, 1 / (n + 1))`` where torch's
    weight is the float32 tensor ``1 / (n + 1)`` (so float64 leaves use the float32-rounded
    weight). This is what torch's ``AveragedModel`` uses by default on CUDA. Integer leaves
    raise torch's ``RuntimeError`` (its integer ``addcdiv``).

    Returns:
      ``fn(averaged_list, model_list, num_averaged) -> new_averaged_list``.

    Example::

        >>> import jaxupdate as ju
        >>> swa = ju.swa_utils.averaged_model(multi_avg_fn=ju.swa_utils.get_swa_multi_avg_fn())
    """

    def swa_update(averaged_param_list, current_param_list, num_averaged):
        if not _is_float(averaged_param_list[0]):
            raise RuntimeError(
                "Integer division with addcdiv is no longer supported, and in a future  "
                "release addcdiv will perform a true division of tensor1 and tensor2. The "
                "historic addcdiv behavior can be implemented as (input + value * "
                "torch.trunc(tensor1 / tensor2)).to(input.dtype) for integer inputs and as "
                "(input + value * tensor1 / tensor2) for float inputs. The future addcdiv "
                "behavior is just the latter implementation: (input + value * tensor1 / "
                "tensor2), for all dtypes."
            )
        # torch: `1 / (num_averaged + 1)` on a long tensor is a float32 tensor
        weight = jnp.float32(1) / (jnp.asarray(num_averaged) + 1).astype(jnp.float32)
        return [lerp(a, c, weight) for a, c in zip(averaged_param_list, current_param_list)]

    return swa_update


def get_ema_avg_fn(decay=0.999):
    r"""torch's ``get_ema_avg_fn``: EMA of one leaf.

    .. math::
        W^{EMA}_{t+1} = decay \cdot W^{EMA}_t + (1 - decay) \cdot W^{model}_{t+1}

    computed as torch's ``decay * ema_param + (1 - decay) * current_param`` (integer leaves in
    float32, torch's default dtype).

    Args:
      decay: decay rate in ``[0, 1]``, default ``0.999``.

    Returns:
      ``fn(ema_param, current_param, num_averaged) -> new_ema_param``.

    Example::

        >>> import jaxupdate as ju
        >>> ema = ju.swa_utils.averaged_model(avg_fn=ju.swa_utils.get_ema_avg_fn(0.99))
    """
    _check_decay(decay)

    def ema_update(ema_param, current_param, num_averaged):
        del num_averaged
        dt = _default_float(ema_param)
        return jnp.asarray(decay, dt) * ema_param.astype(dt) + jnp.asarray(
            1 - decay, dt
        ) * current_param.astype(dt)

    return ema_update


def get_swa_avg_fn():
    r"""torch's ``get_swa_avg_fn``: the running equal-weight average of one leaf.

    .. math::
        W^{SWA}_{n+1} = W^{SWA}_n + \frac{W^{model} - W^{SWA}_n}{n + 1}

    computed as torch's ``averaged + (current - averaged) / (num_averaged + 1)`` (the integer
    ``n + 1`` converted to the leaf's dtype; integer leaves divide in float32). This is what
    torch's ``AveragedModel`` uses by default on CPU, and :func:`averaged_model`'s default.

    Returns:
      ``fn(averaged_param, current_param, num_averaged) -> new_averaged_param``.

    Example::

        >>> import jaxupdate as ju
        >>> swa = ju.swa_utils.averaged_model(avg_fn=ju.swa_utils.get_swa_avg_fn())
    """

    def swa_update(averaged_param, current_param, num_averaged):
        n1 = jnp.asarray(num_averaged) + 1
        if _is_float(averaged_param):
            n1 = n1.astype(averaged_param.dtype)
            return averaged_param + true_divide(current_param - averaged_param, n1)
        f32 = jnp.float32
        diff = (current_param - averaged_param).astype(f32)
        return averaged_param.astype(f32) + true_divide(diff, n1.astype(f32))

    return swa_update


# --------------------------------------------------------------------------------------------
# AveragedModel
# --------------------------------------------------------------------------------------------


class AveragedModelState(NamedTuple):
    """The averaged model: ``params``, ``buffers`` (or None) and ``n_averaged`` (torch's long)."""

    params: Any
    buffers: Any
    n_averaged: jax.Array


class AveragedModel(NamedTuple):
    """The pair of pure functions returned by :func:`averaged_model`."""

    init: Callable[..., AveragedModelState]
    update: Callable[..., AveragedModelState]


def _copy(tree):
    # a new pytree holding the same (immutable) arrays: flax.nnx states hold mutable Variables
    # that alias the model's, a tree.map rebuilds them
    return jax.tree.map(lambda x: x, tree)


def _long(value=0):
    dt = jnp.int64 if jax.config.jax_enable_x64 else jnp.int32
    return jnp.asarray(value, dt)


def averaged_model(
    avg_fn: Optional[Callable] = None,
    multi_avg_fn: Optional[Callable] = None,
    use_buffers: bool = False,
) -> AveragedModel:
    r"""torch's ``AveragedModel`` (SWA / EMA of the weights) as ``init`` and ``update``.

    ``update(state, params)`` is torch's ``update_parameters(model)``::

        if n_averaged == 0:   averaged = copy(params)                 # first call copies
        else:                 averaged = avg(averaged, params, n_averaged)
        if not use_buffers:   averaged_buffers = copy(buffers)        # kept in sync
        n_averaged += 1

    where ``avg`` is ``multi_avg_fn`` applied per group of leaves of one dtype (torch groups by
    device and dtype), else ``avg_fn`` leaf by leaf, else the equal-weight average
    ``get_swa_avg_fn()`` leaf by leaf -- torch's default on CPU (on CUDA torch uses
    ``get_swa_multi_avg_fn()``, which rounds its weight to float32: pass it to get those
    numbers). Results are cast back to each leaf's dtype (torch's ``copy_``; integers truncate).

    Args (torch's names and defaults, minus ``model`` and ``device``):
      avg_fn: ``fn(averaged_leaf, model_leaf, n_averaged) -> new_leaf``, default None.
      multi_avg_fn: ``fn(averaged_list, model_list, n_averaged) -> new_list``, default None.
        torch's version updates its lists in place; here it returns the new list.
      use_buffers: if True, ``buffers`` are averaged together with ``params`` (torch's
        ``chain(parameters(), buffers())``); else they are copied from the model at each
        update. Default False.

    Returns:
      :class:`AveragedModel` ``(init, update)``:

      - ``init(params, buffers=None)``: torch's constructor (a copy of the model);
        ``n_averaged = 0``.
      - ``update(state, params, buffers=None)``: the new :class:`AveragedModelState`;
        jittable (the first-call copy is a ``jnp.where`` on ``n_averaged``).

      With flax.nnx: ``params = nnx.state(model, nnx.Param)``,
      ``buffers = nnx.state(model, nnx.BatchStat)``.

    Example::

        >>> import jax, jax.numpy as jnp, jaxupdate as ju
        >>> swa = ju.swa_utils.averaged_model()
        >>> state = swa.init({"w": jnp.zeros(2)})
        >>> state = swa.update(state, {"w": jnp.array([1.0, 2.0])})   # copies: [1, 2]
        >>> state = jax.jit(swa.update)(state, {"w": jnp.array([3.0, 4.0])})
        >>> # state.params["w"] == [2, 3], state.n_averaged == 2
    """
    if avg_fn is not None and multi_avg_fn is not None:
        raise AssertionError("Only one of avg_fn and multi_avg_fn should be provided")

    def average(avg_tree, model_tree, n):
        avg_leaves, treedef = jax.tree.flatten(avg_tree)
        model_leaves = treedef.flatten_up_to(model_tree)
        model_leaves = [jnp.asarray(m) for m in model_leaves]
        if multi_avg_fn is not None or avg_fn is None:
            if multi_avg_fn is not None:
                # torch calls multi_avg_fn once per (device, dtype) group, in order of appearance
                groups: dict = {}
                for i, a in enumerate(avg_leaves):
                    groups.setdefault(jnp.asarray(a).dtype, []).append(i)
                new = [None] * len(avg_leaves)
                for idx in groups.values():
                    out = multi_avg_fn(
                        [avg_leaves[i] for i in idx], [model_leaves[i] for i in idx], n
                    )
                    for i, o in zip(idx, out):
                        new[i] = o
            else:
                fn = get_swa_avg_fn()
                new = [fn(a, m, n) for a, m in zip(avg_leaves, model_leaves)]
        else:
            new = [avg_fn(a, m, n) for a, m in zip(avg_leaves, model_leaves)]
        # first call: copy (torch's `p_averaged.copy_(p_model)`); results take the averaged
        # leaf's dtype as torch's copy_ does (integers truncate toward zero)
        first = n == 0
        out = []
        for a, m, o in zip(avg_leaves, model_leaves, new):
            dt = jnp.asarray(a).dtype
            out.append(jnp.where(first, m.astype(dt), jnp.asarray(o).astype(dt)))
        return treedef.unflatten(out)

    def init_fn(params, buffers=None):
        return AveragedModelState(_copy(params), _copy(buffers), _long(0))

    def update_fn(state, params, buffers=None):
        n = state.n_averaged
        if use_buffers:
            both = average((state.params, state.buffers), (params, buffers), n)
            new_params, new_buffers = both
        else:
            new_params = average(state.params, params, n)
            new_buffers = _copy(buffers)
        return AveragedModelState(new_params, new_buffers, n + 1)

    return AveragedModel(init_fn, update_fn)


def reset_n_averaged(state: AveragedModelState, n_averaged=0) -> AveragedModelState:
    """``state`` with ``n_averaged`` set: torch's ``averaged.n_averaged.fill_(n_averaged)``.

    torchvision's classification reference resets its EMA during the lr warm-up, so that
    the averaged model keeps copying the weights until warm-up ends::

        if model_ema and i % args.model_ema_steps == 0:
            model_ema.update_parameters(model)
            if epoch < args.lr_warmup_epochs:
                model_ema.n_averaged.fill_(0)

    which here is ``ema_state = reset_n_averaged(ema.update(ema_state, params))``. The dtype
    (torch's long) is kept, so a jitted step taking the state does not retrace;
    ``n_averaged`` may be traced (``jnp.where(epoch < warmup, 0, state.n_averaged)``).

    Example::

        >>> import jax.numpy as jnp, jaxupdate as ju
        >>> ema = ju.swa_utils.averaged_model(
        ...     multi_avg_fn=ju.swa_utils.get_ema_multi_avg_fn(0.9))
        >>> s = ema.update(ema.init({"w": jnp.zeros(2)}), {"w": jnp.ones(2)})
        >>> s = ju.swa_utils.reset_n_averaged(s)
        >>> s = ema.update(s, {"w": jnp.full(2, 5.0)})          # copies again
        >>> float(s.params["w"][0]), int(s.n_averaged)
        (5.0, 1)
    """
    if not isinstance(state, AveragedModelState):
        raise TypeError(
            f"reset_n_averaged takes an AveragedModelState (averaged_model().init(...)), got "
            f"{type(state).__name__}"
        )
    n = state.n_averaged
    return state._replace(n_averaged=jnp.reshape(jnp.asarray(n_averaged, n.dtype), n.shape))


# --------------------------------------------------------------------------------------------
# SWALR
# --------------------------------------------------------------------------------------------


def _cosine_anneal(t):
    return (1 - math.cos(math.pi * t)) / 2


def _linear_anneal(t):
    return t


def swa_lr(lr, swa_lr, anneal_epochs=10, anneal_strategy="cos"):
    r"""torch's ``SWALR`` scheduler as a schedule ``count -> lr``.

    ``count`` is the number of ``scheduler.step()`` calls made since the scheduler was built
    (``count = 0``: the lr right after construction), ``lr`` the optimizer's lr at that
    moment. torch anneals from ``lr`` to ``swa_lr`` over ``anneal_epochs`` steps, then stays::

        alpha(k) = anneal(clamp(k / max(1, anneal_epochs), 0, 1))
        anneal(t) = (1 - cos(pi * t)) / 2   if anneal_strategy == "cos"   else t
        lr(k) = swa_lr * alpha(k) + lr * (1 - alpha(k))

    (with ``anneal_epochs == 0``, ``k`` is taken as at least 1: ``swa_lr`` from the start).
    torch computes this recursively from the group's current lr; for Python-number ``lr`` and
    ``swa_lr`` this schedule replays that recursion in double precision once, so its values are
    torch's bit for bit; arrays use the closed form above (equal up to rounding).

    With an optimizer stepping ``steps_per_epoch`` times between scheduler steps, as in torch's
    epoch loop, use ``lambda count: sched(count // steps_per_epoch)``.

    Args (torch's, with ``lr`` in place of ``optimizer`` and without ``last_epoch``):
      lr: the optimizer's learning rate when SWALR is built.
      swa_lr: the learning rate to anneal to (one value: one schedule per param group).
      anneal_epochs: number of steps of the annealing phase, default ``10`` (an ``int >= 0``).
      anneal_strategy: ``"cos"`` (default) or ``"linear"``.

    Returns:
      ``schedule(count) -> lr``, usable as any jaxupdate ``lr``.

    Example::

        >>> import jaxupdate as ju
        >>> sched = ju.swa_utils.swa_lr(lr=0.1, swa_lr=0.05, anneal_epochs=5)
        >>> tx = ju.sgd(lr=lambda count: sched(count // 100))   # 100 updates per epoch
    """
    if anneal_strategy not in ["cos", "linear"]:
        raise ValueError(
            "anneal_strategy must be one of 'cos' or 'linear', "
            f"instead got {anneal_strategy}"
        )
    if not isinstance(anneal_epochs, int) or anneal_epochs < 0:
        raise ValueError(f"anneal_epochs must be equal or greater than 0, got {anneal_epochs}")
    anneal = _cosine_anneal if anneal_strategy == "cos" else _linear_anneal

    def step_of(k):
        return max(1, k) if anneal_epochs == 0 else k

    def t_of(step):
        return max(0, min(1, step / max(1, anneal_epochs)))

    numbers = all(
        isinstance(v, (int, float)) and not isinstance(v, bool) for v in (lr, swa_lr)
    )
    if numbers:
        # torch's get_lr, replayed: after anneal_epochs + 1 steps the lr is swa_lr for good
        table, cur = [], float(lr)
        for k in range(anneal_epochs + 2):
            step = step_of(k)
            prev_alpha = anneal(max(0, min(1, (step - 1) / max(1, anneal_epochs))))
            initial = swa_lr if prev_alpha == 1 else (cur - prev_alpha * swa_lr) / (1 - prev_alpha)
            alpha = anneal(t_of(step))
            cur = swa_lr * alpha + initial * (1 - alpha)
            table.append(cur)
        values = jnp.asarray(table)

        def schedule(count):
            k = jnp.clip(jnp.asarray(count), 0, len(table) - 1)
            return values[k]

        return schedule

    def schedule(count):
        step = jnp.asarray(count)
        if anneal_epochs == 0:
            step = jnp.maximum(step, 1)
        t = jnp.clip(step / max(1, anneal_epochs), 0, 1)
        alpha = (1 - jnp.cos(jnp.pi * t)) / 2 if anneal_strategy == "cos" else t
        return swa_lr * alpha + lr * (1 - alpha)

    return schedule


# --------------------------------------------------------------------------------------------
# update_bn
# --------------------------------------------------------------------------------------------

_CUMULATIVE_CLASSES: dict = {}


def _cumulative_class(cls):
    """A subclass of ``cls`` (an ``nnx.BatchNorm``) whose running statistics follow torch's
    ``momentum=None`` update: a cumulative average of the batch mean and unbiased variance."""
    if cls in _CUMULATIVE_CLASSES:
        return _CUMULATIVE_CLASSES[cls]
    from flax.nnx.module import first_from

    def __call__(self, x, use_running_average=None, *, mask=None):
        use_ra = first_from(
            use_running_average,
            self.use_running_average,
            error_msg="No `use_running_average` argument was provided to BatchNorm.",
        )
        if use_ra:
            return cls.__call__(self, x, use_running_average, mask=mask)
        if mask is not None:
            raise NotImplementedError("update_bn does not support BatchNorm masks")
        old_mean, old_var = self.mean[...], self.var[...]
        y = cls.__call__(self, x, use_running_average, mask=mask)  # normalised by batch stats
        x = jnp.asarray(x)
        axis = self.axis if isinstance(self.axis, (tuple, list)) else (self.axis,)
        feature_axes = tuple(a % x.ndim for a in axis)
        reduce = tuple(i for i in range(x.ndim) if i not in feature_axes)
        n = 1
        for i in reduce:
            n *= x.shape[i]
        if n <= 1:
            raise ValueError(
                "Expected more than 1 value per channel when training, "
                f"got input size {tuple(x.shape)}"
            )
        # torch's CPU kernel accumulates statistics in double (acc_type) for float inputs
        acc = jnp.float64 if jax.config.jax_enable_x64 else jnp.promote_types(x.dtype, "float32")
        xs = x.astype(acc)
        mean = true_divide(jnp.sum(xs, axis=reduce), jnp.asarray(n, acc))
        centered = xs - jnp.expand_dims(mean, reduce)
        var_sum = jnp.sum(centered * centered, axis=reduce)
        # torch's batch_norm_cpu_update_stats_template with momentum = 1 / num_batches_tracked:
        #   running = momentum * batch_stat + (1 - momentum) * running, var unbiased
        nbt = self._ju_num_batches_tracked[...] + 1
        self._ju_num_batches_tracked[...] = nbt
        momentum = 1.0 / nbt.astype(acc)
        unbiased = true_divide(var_sum, jnp.asarray(n - 1, acc))
        old_mean, old_var = old_mean.astype(acc), old_var.astype(acc)
        new_mean = momentum * mean + (1 - momentum) * old_mean
        new_var = momentum * unbiased + (1 - momentum) * old_var
        self.mean[...] = new_mean.astype(self.mean[...].dtype)
        self.var[...] = new_var.astype(self.var[...].dtype)
        return y

    sub = type(cls.__name__, (cls,), {"__call__": __call__, "__module__": cls.__module__})
    _CUMULATIVE_CLASSES[cls] = sub
    return sub


def update_bn(loader, model, device=None) -> None:
    r"""torch's ``update_bn``: recomputes the BatchNorm running statistics of a flax.nnx model.

    One pass over ``loader`` in training mode, as torch's::

        for each BatchNorm: mean = 0, var = 1, num_batches_tracked = 0      # reset_running_stats
        for batch in loader:                     # a batch is an array, or a tuple/list whose
            model(batch[0] if tuple else batch)  # first element is the input
        # each BatchNorm, with torch's momentum=None (cumulative average), per call k:
        #   mean = (1/k) * batch_mean + (1 - 1/k) * mean
        #   var  = (1/k) * batch_var_unbiased + (1 - 1/k) * var

    so ``mean``/``var`` end as the average over batches of the batch means and of the
    *unbiased* batch variances: torch's numbers on the same model and data. (flax's own
    BatchNorm update keeps the biased variance; here it is torch's, so the model evaluated
    afterwards matches torch's.) Dropout and the like are in training mode during the pass, as
    in torch; every module's ``deterministic`` / ``use_running_average`` is restored after.
    The model is modified in place (flax.nnx modules are mutable); each batch runs under
    ``nnx.jit``.

    Args (torch's names and defaults):
      loader: an iterable of batches (arrays, or tuples/lists whose first element is the input).
      model: a ``flax.nnx.Module`` called as ``model(x)``.
      device: if given, each input is ``jax.device_put`` there first.

    Example::

        >>> import jax.numpy as jnp, jaxupdate as ju
        >>> from flax import nnx
        >>> model = nnx.Sequential(nnx.Linear(3, 4, rngs=nnx.Rngs(0)),
        ...                        nnx.BatchNorm(4, rngs=nnx.Rngs(0)))
        >>> loader = [jnp.ones((8, 3)), jnp.zeros((8, 3))]
        >>> ju.swa_utils.update_bn(loader, model)
    """
    from flax import nnx

    modules = [m for _, m in nnx.iter_modules(model)]
    bns = list({id(m): m for m in modules if isinstance(m, nnx.BatchNorm)}.values())
    if not bns:
        return
    modes = []
    for m in modules:
        for attr in ("deterministic", "use_running_average"):
            if hasattr(m, attr):
                modes.append((m, attr, getattr(m, attr)))
    originals = [type(bn) for bn in bns]
    for bn in bns:  # torch's reset_running_stats(), and a num_batches_tracked of our own
        bn.mean[...] = jnp.zeros_like(bn.mean[...])
        bn.var[...] = jnp.ones_like(bn.var[...])
        bn._ju_num_batches_tracked = nnx.BatchStat(_long(0))
        bn.__class__ = _cumulative_class(type(bn))

    @nnx.jit
    def forward(model, x):
        model(x)

    try:
        model.train()
        for batch in loader:
            if isinstance(batch, (list, tuple)):
                batch = batch[0]
            if device is not None:
                batch = jax.device_put(batch, device)
            forward(model, batch)
    finally:
        for bn, cls in zip(bns, originals):
            bn.__class__ = cls
            del bn._ju_num_batches_tracked
        for m, attr, value in modes:
            setattr(m, attr, value)

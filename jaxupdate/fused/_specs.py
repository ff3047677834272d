"""What each fused optimizer passes to its kernel: the scalars (resolved and cast exactly as
the XLA path does it), the state arrays, and the chain state after the step.

A transformation built with ``fused=True`` is the ordinary chain (same ``update`` arithmetic and
state types) with a :class:`FusedSpec` left on ``tx.update``; :func:`jaxupdate.step` reads it.
On CPU its ``init`` holds the kernel's state fields flat (``jaxupdate.fused._flat``: one buffer
per dtype per field, so a step donates a few large arrays instead of one per leaf per field);
``update``, checkpoints, ``to_torch`` and ``state_dict`` interop convert at their boundary.
"""

from __future__ import annotations

import contextlib
import contextvars
import warnings
from typing import Any, Callable, NamedTuple, Tuple

import jax
import jax.numpy as jnp
import optax

from jaxupdate._hparams import is_number, resolve
from jaxupdate.numerics import bias_correction, cast, step_float

_ATTR = "_jaxupdate_fused"


class FusedSpec(NamedTuple):
    """``kind``: kernel family; ``blocks``: names of the chain's blocks, in order;
    ``hparams``: normalized hyperparameters (hashable: floats, arrays by identity, schedules);
    ``n_state``: arrays per leaf in the kernel's state."""

    kind: str
    blocks: Tuple[str, ...]
    hparams: Any
    n_state: int

    def __hash__(self):
        return hash((self.kind, self.blocks, self.n_state, tuple(map(id, self.hparams))))

    def __eq__(self, other):
        return self is other


def attach(tx, spec: FusedSpec):
    setattr(tx.update, _ATTR, spec)
    return tx


def spec_of(tx):
    """The :class:`FusedSpec` of a ``fused=True`` transformation, else ``None``."""
    return getattr(getattr(tx, "update", None), _ATTR, None)


class _Like(NamedTuple):
    dtype: Any


def _c(s, dtype):
    # jaxupdate.numerics.cast against an array of this dtype
    return cast(s, _Like(jnp.dtype(dtype)))


def _flag(b, dtype):
    return jnp.asarray(b, dtype)


def _wide(dtype) -> bool:
    # jaxupdate.numerics.fused_dtype: float32 computed in float64 under x64
    return jnp.dtype(dtype) == jnp.float32 and bool(jax.config.jax_enable_x64)


def _lerp_scalars(weight, dtype):
    """(small, w, 1 - w) of jaxupdate.transforms.moments.lerp."""
    if is_number(weight):
        w = _c(weight, dtype)
        return _flag(abs(weight) < 0.5, dtype), w, 1 - w
    w = _c(weight, dtype)
    return (jnp.abs(w) < 0.5).astype(dtype), w, 1 - w


def _count(state):
    """The optimizer's step count: the chain (``counted_chain``) state ends with it."""
    return state[-1].count


def _grad_scalars(spec, state, dtype, wd):
    """maximize, coupled weight decay (flag, value)."""
    b = spec.blocks
    if "wd" in b:
        value = _c(resolve(wd, _count(state)), dtype)
        return [_flag("maximize" in b, dtype), _flag(1, dtype), value]
    return [_flag("maximize" in b, dtype), _flag(0, dtype), _flag(0, dtype)]


def _neg_lr(spec, state, lr, dtype):
    return _c(-resolve(lr, _count(state)), dtype)


def _stack(values, dtype, kind):
    # the kernel reads the optimizer from the last element (its index in _kernels.KINDS)
    values = list(values) + [("adam", "sgd", "adagrad", "rmsprop").index(kind)]
    return jnp.stack([jnp.asarray(v, dtype).reshape(()) for v in values])


def adam_scalars(spec, state, dtype):
    lr, (beta1, beta2), eps, wd = spec.hparams
    c = _count(state)
    b1, b2, e = resolve(beta1, c), resolve(beta2, c), resolve(eps, c)
    step = step_float(c)
    # torch_adam_update: addcdiv_'s value -lr / bc1, in the scalar dtype
    value = -(resolve(lr, c) / bias_correction(b1, step))
    small, w, omw = _lerp_scalars(1.0 - b1, dtype)
    if "dwd" in spec.blocks:
        dwd = [_flag(1, dtype), _c(1.0 - resolve(lr, c) * resolve(wd, c), dtype)]
    else:
        dwd = [_flag(0, dtype), _flag(1, dtype)]
    return _stack(
        _grad_scalars(spec, state, dtype, wd)
        + [small, w, omw, _c(b2, dtype), _c(1.0 - b2, dtype),
           _c(jnp.sqrt(bias_correction(b2, step)), dtype), _c(e, dtype),
           _c(value, dtype)]
        + dwd + [_flag(_wide(dtype), dtype)],
        dtype,
        "adam",
    )


def adam_state(spec, state):
    s = state[spec.blocks.index("adam")]
    fields = [s.exp_avg, s.exp_avg_sq]
    return fields + ([s.max_exp_avg_sq] if spec.n_state == 3 else [])


def adam_rebuild(spec, state, arrays, increment=True):
    s = state[spec.blocks.index("adam")]
    new = s._replace(exp_avg=arrays[0], exp_avg_sq=arrays[1],
                     max_exp_avg_sq=arrays[2] if spec.n_state == 3 else None)
    return advance(spec, state, {"adam": new}, increment)


def advance(spec, state, replaced, increment=True):
    """The chain state after one step: the step count (its last element) incremented (as
    ``counted_chain``'s ``update`` does; ``increment=False``: already done), the blocks in
    ``replaced`` (name -> new state) replaced."""
    out = [replaced.get(name, s) for name, s in zip(spec.blocks, state)]
    count = state[-1]
    out.append(count._replace(count=optax.safe_increment(count.count)) if increment else count)
    return type(state)(out) if not hasattr(state, "_fields") else type(state)(*out)


def _block(spec, state, name):
    return state[spec.blocks.index(name)]


def sgd_scalars(spec, state, dtype):
    lr, momentum, dampening, wd, nesterov = spec.hparams
    if "mom" in spec.blocks:
        c = _count(state)
        mom = resolve(momentum, c)
        mom_part = [(c == 0).astype(dtype), _c(mom, dtype),
                    _c(1.0 - resolve(dampening, c), dtype), _flag(nesterov, dtype)]
    else:
        mom_part = [_flag(0, dtype)] * 4
    return _stack(_grad_scalars(spec, state, dtype, wd) + mom_part
                  + [_neg_lr(spec, state, lr, dtype), _flag(_wide(dtype), dtype)], dtype, "sgd")


def sgd_state(spec, state):
    return [_block(spec, state, "mom").momentum_buffer] if "mom" in spec.blocks else []


def sgd_rebuild(spec, state, arrays, increment=True):
    if "mom" not in spec.blocks:
        return advance(spec, state, {}, increment)
    new = _block(spec, state, "mom")._replace(momentum_buffer=arrays[0])
    return advance(spec, state, {"mom": new}, increment)


def adagrad_scalars(spec, state, dtype):
    lr, lr_decay, eps, wd = spec.hparams
    c = _count(state)
    # torch_adagrad: clr = lr / (1 + (step - 1) * lr_decay), in the scalar dtype
    count = jnp.asarray(c, step_float(c).dtype)
    clr = resolve(lr, c) / (1.0 + count * resolve(lr_decay, c))
    return _stack(_grad_scalars(spec, state, dtype, wd)
                  + [_c(-clr, dtype), _c(resolve(eps, c), dtype), _flag(_wide(dtype), dtype)],
                  dtype, "adagrad")


def adagrad_state(spec, state):
    return [_block(spec, state, "adagrad").sum]


def adagrad_rebuild(spec, state, arrays, increment=True):
    new = _block(spec, state, "adagrad")._replace(sum=arrays[0])
    return advance(spec, state, {"adagrad": new}, increment)


def rmsprop_scalars(spec, state, dtype):
    lr, alpha, eps, wd, momentum, centered = spec.hparams
    c = _count(state)
    a = resolve(alpha, c)
    small, w, omw = _lerp_scalars(1.0 - a, dtype)
    if "mom" in spec.blocks:
        cm = c
        # torch_momentum(momentum, first_step_copies=False): dampening 0, so keep = 1.0
        mom_part = [_flag(1, dtype), _c(resolve(momentum, cm), dtype),
                    _c(1.0 - resolve(0.0, cm), dtype)]
    else:
        mom_part = [_flag(0, dtype)] * 3
    return _stack(_grad_scalars(spec, state, dtype, wd)
                  + [_c(a, dtype), _c(1.0 - a, dtype), _flag(centered, dtype), small, w, omw,
                     _c(resolve(eps, c), dtype)] + mom_part
                  + [_neg_lr(spec, state, lr, dtype), _flag(_wide(dtype), dtype)],
                  dtype, "rmsprop")


def rmsprop_state(spec, state):
    rms = _block(spec, state, "rms")
    out = [rms.square_avg] + ([rms.grad_avg] if rms.grad_avg is not None else [])
    if "mom" in spec.blocks:
        out.append(_block(spec, state, "mom").momentum_buffer)
    return out


def rmsprop_rebuild(spec, state, arrays, increment=True):
    rms = _block(spec, state, "rms")
    centered = rms.grad_avg is not None
    replaced = {"rms": rms._replace(square_avg=arrays[0],
                                    grad_avg=arrays[1] if centered else None)}
    if "mom" in spec.blocks:
        mom = _block(spec, state, "mom")
        replaced["mom"] = mom._replace(momentum_buffer=arrays[2 if centered else 1])
    return advance(spec, state, replaced, increment)


class Kernel(NamedTuple):
    scalars: Callable
    state: Callable
    rebuild: Callable


KERNELS = {
    "adam": Kernel(adam_scalars, adam_state, adam_rebuild),
    "sgd": Kernel(sgd_scalars, sgd_state, sgd_rebuild),
    "adagrad": Kernel(adagrad_scalars, adagrad_state, adagrad_rebuild),
    "rmsprop": Kernel(rmsprop_scalars, rmsprop_state, rmsprop_rebuild),
}


def _prefix(maximize, weight_decay):
    from jaxupdate._hparams import is_static_zero

    return (("maximize",) if maximize else ()) + (
        () if is_static_zero(weight_decay) else ("wd",))


def sgd_spec(lr, momentum, dampening, weight_decay, nesterov, maximize) -> FusedSpec:
    """The spec of ``jaxupdate.optim.sgd``'s chain (arguments as normalized there)."""
    from jaxupdate._hparams import is_static_zero

    has_mom = not is_static_zero(momentum)
    blocks = _prefix(maximize, weight_decay) + (("mom",) if has_mom else ()) + ("lr",)
    hp = (lr, momentum, dampening, weight_decay, nesterov)
    return FusedSpec("sgd", blocks, hp, 1 if has_mom else 0)


def adagrad_spec(lr, lr_decay, weight_decay, eps, maximize) -> FusedSpec:
    """The spec of ``jaxupdate.optim.adagrad``'s chain (arguments as normalized there)."""
    blocks = _prefix(maximize, weight_decay) + ("adagrad",)
    return FusedSpec("adagrad", blocks, (lr, lr_decay, eps, weight_decay), 1)


def rmsprop_spec(lr, alpha, eps, weight_decay, momentum, centered, maximize) -> FusedSpec:
    """The spec of ``jaxupdate.optim.rmsprop``'s chain (arguments as normalized there)."""
    from jaxupdate._hparams import is_static_zero

    has_mom = not is_static_zero(momentum)
    # without momentum the rms block's update includes lr (torch_rmsprop_update)
    blocks = _prefix(maximize, weight_decay) + ("rms",) + (("mom", "lr") if has_mom else ())
    hp = (lr, alpha, eps, weight_decay, momentum, centered)
    return FusedSpec("rmsprop", blocks, hp, 1 + int(centered) + int(has_mom))


def adam_spec(lr, betas, eps, weight_decay, amsgrad, maximize, decoupled) -> FusedSpec:
    """The spec of ``jaxupdate.optim.adam``'s chain (same block order as ``_adam_chain``)."""
    from jaxupdate._hparams import is_static_zero
    from jaxupdate.optim._base import check_adam_hparams

    lr, betas, eps, weight_decay = check_adam_hparams(lr, betas, eps, weight_decay)
    decay = not is_static_zero(weight_decay)
    blocks = (("maximize",) if maximize else ()) + (
        ("wd",) if decay and not decoupled else ()) + ("adam",) + (
        ("dwd",) if decay and decoupled else ())
    return FusedSpec("adam", blocks, (lr, betas, eps, weight_decay), 3 if amsgrad else 2)


class FusedOutsideStepWarning(UserWarning):
    """A ``fused=True`` transformation's ``update`` ran outside :func:`jaxupdate.step`."""


# the spec of the fused transformation jaxupdate.step is running through tx.update (its XLA
# route: bfloat16 leaves, a GPU, extra arguments); None outside ju.step
_STEPPING: contextvars.ContextVar = contextvars.ContextVar("jaxupdate_fused_stepping",
                                                           default=None)


@contextlib.contextmanager
def stepping(spec):
    """Marks ``spec``'s ``update`` calls as :func:`jaxupdate.step`'s own (no warning)."""
    token = _STEPPING.set(spec)
    try:
        yield
    finally:
        _STEPPING.reset(token)


# the dtypes the kernels are compiled for (jaxupdate.step runs them; tx.init holds them flat)
KERNEL_DTYPES = (jnp.dtype(jnp.float32), jnp.dtype(jnp.float64))


def flat_eligible(params) -> bool:
    """Whether ``tx.init`` of a fused optimizer holds its state flat for ``params``: on a CPU
    backend (where the kernel runs) and every leaf an array of float32 / float64 (the kernel's
    dtypes; bfloat16 leaves and GPUs take the XLA path, which reads per-leaf state), in a
    process with one device."""
    if jax.default_backend() != "cpu" or jax.device_count() != 1:
        # several devices: parameters may be sharded (also inside jit, where a tracer does
        # not say), and per-leaf state is sharded like its parameter (jaxupdate.sharding)
        return False
    leaves = jax.tree.leaves(params)
    return all(getattr(x, "dtype", None) is not None and hasattr(x, "shape")
               and jnp.dtype(x.dtype) in KERNEL_DTYPES for x in leaves)


def _flat_init(tx, spec):
    """``tx`` whose ``init`` holds the kernel's state fields as
    :class:`jaxupdate.fused._flat.FlatLeaves` (one buffer per dtype per field) where
    :func:`flat_eligible`; the values are those of the per-leaf state (zeros, or whatever the
    inner init builds). The fields share one layout object, so the step compares them by
    identity."""
    from jaxupdate.fused._flat import FlatLeaves, pure, tree_layout

    inner = tx.init
    k = KERNELS[spec.kind]

    def init(params):
        state = inner(params)
        if not flat_eligible(params):
            return state
        fields = k.state(spec, state)
        if not fields:  # SGD without momentum: no per-leaf state
            return state
        layout = tree_layout(pure(fields[0]))
        return k.rebuild(spec, state, [FlatLeaves.from_tree(pure(f), layout) for f in fields],
                         increment=False)

    return tx._replace(init=init)


def _warn_outside_step(tx, spec):
    """``tx`` whose ``update`` warns once (:class:`FusedOutsideStepWarning`) when called other
    than by ``ju.step`` on this transformation itself: inside ``optax.chain``, a wrapper, or
    ``tx.update`` directly, the fused kernel cannot run (it writes the parameters, which
    ``update`` only returns updates for) and the XLA path runs instead, same numbers. A flat
    state (:func:`_flat_init`) is unflattened for the XLA path and flattened again after it,
    in the layout it came in."""
    from jaxupdate.fused._flat import flatten_like, has_flat, unflatten_state

    inner = tx.update
    warned = []

    def update(updates, state, params=None, **extra_args):
        if not warned and _STEPPING.get() is not spec:
            warned.append(True)
            warnings.warn(
                f"a fused=True {spec.kind} optimizer's update() was called outside ju.step "
                "(inside optax.chain, a wrapper, or tx.update directly): that runs the XLA path "
                "(same numbers), not the fused kernel. Step it with params, opt_state = "
                "ju.step(tx, params, grads, opt_state) to run the kernel, or build it with "
                "fused=False.", FusedOutsideStepWarning, stacklevel=2)
        if not has_flat(state):
            return inner(updates, state, params, **extra_args)
        updates, new_state = inner(updates, unflatten_state(state), params, **extra_args)
        return updates, flatten_like(new_state, state)

    return tx._replace(update=update)


def fused(tx, spec: FusedSpec):
    """``tx`` marked for :func:`jaxupdate.step`'s kernel (numba checked here, as torch checks
    ``fused=True`` support at construction); its ``update`` warns when called outside
    ``ju.step`` (:func:`_warn_outside_step`)."""
    from jaxupdate.fused import require_numba

    if jax.default_backend() == "cpu":
        require_numba()
    return attach(_warn_outside_step(_flat_init(tx, spec), spec), spec)


def with_fused(flag: bool, spec_fn_result: FusedSpec, tx):
    """``tx`` itself when ``flag`` is false, else ``tx`` marked with the spec (:func:`fused`)."""
    return fused(tx, spec_fn_result) if flag else tx

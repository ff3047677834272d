"""Gradient clipping as ``torch.nn.utils.clip_grad``: by total norm and by value.

Two forms of each:

- transformations to chain before an optimizer, as torch calls ``clip_grad_norm_`` between
  ``loss.backward()`` and ``optimizer.step()``::

      tx = optax.chain(ju.clip_grad_norm(1.0), ju.adam(lr=1e-3))

- functions on a pytree of gradients that return new gradients (JAX arrays are immutable, so
  the trailing underscore only marks the torch function they mirror)::

      grads, total_norm = ju.clip_grad_norm_(grads, max_norm=1.0)

The arithmetic is torch's, operation by operation: one norm per leaf, then the norm of those
norms; ``clip_coef = max_norm / (total_norm + 1e-6)`` in the norm's dtype, clamped to at most
1 and multiplied in unconditionally (also when it is 1, as torch does to avoid a host sync).

``error_if_nonfinite=True`` raises torch's ``RuntimeError`` eagerly, and reports from inside
``jax.jit`` (and ``vmap``, ``scan``, ``lax.cond``) through ``jax.debug.callback``, an effect XLA
never removes: the jitted computation fails and JAX raises ``jax.errors.JaxRuntimeError`` -- a
subclass of ``RuntimeError`` -- whose message ends with torch's text (on CPU at the call; with
asynchronous dispatch on an accelerator, at the latest when a result is read, e.g.
``jax.block_until_ready``). So ``except RuntimeError`` catches both, and a non-finite norm never
passes silently as NaN gradients. For a functional error value instead, leave the flag off and
``checkify.check(jnp.isfinite(total_norm), ...)`` the returned norm under ``checkify``.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxupdate._hparams import normalize, resolve
from jaxupdate.numerics import cast
from jaxupdate.transforms.common import init_count

__all__ = [
    "ClipGradNormState",
    "clip_grad_norm",
    "clip_grad_norm_",
    "clip_grad_value",
    "clip_grad_value_",
    "clip_grads_with_norm_",
    "get_total_norm",
]


def _nonfinite_message(norm_type: float) -> str:
    return (
        f"The total norm of order {norm_type} for gradients from "
        "`parameters` is non-finite, so it cannot be clipped. To disable "
        "this error and scale the gradients by the non-finite norm anyway, "
        "set `error_if_nonfinite=False`"
    )


def _real_dtype(dtype):
    return jnp.finfo(dtype).dtype if jnp.issubdtype(dtype, jnp.complexfloating) else dtype


def _vector_norm(x, p: float):
    """``torch.linalg.vector_norm(x, p)``: torch's reduction for each order, in x's real dtype.

    torch reduces ``|x|`` with ``max`` (inf), ``min`` (-inf), a count of non-zeros (0), a sum
    (1), ``sqrt`` of the sum of squares (2) or ``sum(|x|**p) ** (1/p)``; half-precision inputs
    accumulate in float32 (torch's opmath) and are rounded back.
    """
    a = jnp.abs(x)  # complex -> modulus, in the real dtype
    out_dtype = a.dtype
    if out_dtype in (jnp.float16, jnp.bfloat16):
        a = a.astype(jnp.float32)
    if a.size == 0 and math.isinf(p):
        # torch: "... cannot compute the inf norm on an empty tensor because the operation
        # does not have an identity"
        raise RuntimeError(
            f"linalg.vector_norm cannot compute the {'' if p > 0 else '-'}inf norm on an "
            "empty tensor because the operation does not have an identity"
        )
    if p == math.inf:
        n = jnp.max(a)
    elif p == -math.inf:
        n = jnp.min(a)
    elif p == 0:
        n = jnp.sum(a != 0).astype(a.dtype)
    elif p == 1:
        n = jnp.sum(a)
    elif p == 2:
        n = jnp.sqrt(jnp.sum(a * a))
    else:
        n = jnp.sum(a**p) ** (1.0 / p)
    return n.astype(out_dtype)


def _report_nonfinite(total_norm, norm_type: float) -> None:
    """torch's error for a non-finite total norm: raised now if the norm is known, else at run time.

    Under a trace (jit, vmap, scan, grad) the value is not known yet; ``jax.debug.callback`` is
    an effect XLA never removes, so the check runs with the computation and its exception makes
    the jitted call raise ``jax.errors.JaxRuntimeError`` (a ``RuntimeError``) carrying the text.
    """
    if not isinstance(total_norm, jax.core.Tracer):
        if not bool(jnp.isfinite(total_norm)):
            raise RuntimeError(_nonfinite_message(norm_type))
        return

    def check(norm):
        norm = np.asarray(norm)
        if not np.all(np.isfinite(norm)):
            raise RuntimeError(f"{_nonfinite_message(norm_type)} (total norm: {norm})")

    jax.debug.callback(check, total_norm)


def get_total_norm(tensors, norm_type=2.0, error_if_nonfinite: bool = False) -> jax.Array:
    r"""``torch.nn.utils.get_total_norm``: the norm of all leaves viewed as one vector.

    Computed as torch does, as the norm of the per-leaf norms::

        total_norm = vector_norm([vector_norm(g, p) for g in leaves(tensors)], p)

    where ``vector_norm(x, p)`` is ``max|x|`` for ``p = inf``, ``min|x|`` for ``-inf``, the number
    of non-zeros for ``0`` and ``(sum |x|**p) ** (1/p)`` otherwise (``|x|`` the modulus for
    complex leaves). An empty tree gives ``0.0`` (float32, as torch's ``torch.tensor(0.0)``).

    Args (torch's names and defaults; ``foreach`` does not apply):
      tensors: a pytree of arrays (``None`` leaves are skipped, like torch's missing ``.grad``).
      norm_type: the order ``p``, default ``2.0``; ``'inf'`` or ``math.inf`` for the max-norm.
      error_if_nonfinite: if ``True``, a ``nan``/``inf`` total norm raises torch's
        ``RuntimeError``; inside ``jit`` it surfaces as ``jax.errors.JaxRuntimeError`` (also a
        ``RuntimeError``) when the jitted function runs. Default ``False``.

    Returns:
      A 0-d array in the (promoted) real dtype of the leaves.

    Example::

        >>> import jax.numpy as jnp, jaxupdate as ju
        >>> float(ju.get_total_norm({"a": jnp.array([3.0]), "b": jnp.array([4.0])}))
        5.0
    """
    norm_type = float(norm_type)
    leaves = jax.tree.leaves(tensors)
    if not leaves:
        return jnp.zeros([], jnp.float32)
    norms = [_vector_norm(jnp.asarray(g), norm_type) for g in leaves]
    total_norm = _vector_norm(jnp.stack(norms), norm_type)
    if error_if_nonfinite:
        _report_nonfinite(total_norm, norm_type)
    return total_norm


def clip_grads_with_norm_(grads, max_norm, total_norm):
    r"""``torch.nn.utils.clip_grads_with_norm_``: scales the gradients by a given total norm.

    torch's arithmetic, in the dtype of ``total_norm`` and then of each gradient::

        clip_coef = max_norm / (total_norm + 1e-6)
        grad = grad * min(clip_coef, 1.0)      # applied even when the coefficient is 1

    Args (torch's names; ``foreach`` does not apply):
      grads: a pytree of gradients (torch's ``parameters``, whose ``.grad`` it scales).
      max_norm: the largest norm allowed (a float or 0-d array; no sign check, as torch).
      total_norm: the norm to scale by, e.g. from :func:`get_total_norm`.

    Returns:
      The scaled gradients, same structure and dtypes.

    Example::

        >>> import jax.numpy as jnp, jaxupdate as ju
        >>> g = {"w": jnp.array([3.0, 4.0])}
        >>> clipped = ju.clip_grads_with_norm_(g, 1.0, ju.get_total_norm(g))
        >>> # clipped["w"] == [3, 4] * (1.0 / (5.0 + 1e-6)), i.e. about [0.6, 0.8]
    """
    if not jax.tree.leaves(grads):
        return grads
    total_norm = jnp.asarray(total_norm)
    max_norm = float(max_norm) if isinstance(max_norm, (int, float)) else max_norm
    # torch's `max_norm / (total_norm + 1e-6)` with a Python float on the left runs
    # Tensor.__rtruediv__, i.e. `reciprocal(total_norm + 1e-6) * max_norm`: two roundings
    clip_coef = jnp.reciprocal(total_norm + 1e-6) * cast(max_norm, total_norm)
    clip_coef_clamped = jnp.minimum(clip_coef, jnp.asarray(1.0, clip_coef.dtype))
    return jax.tree.map(lambda g: g * cast(clip_coef_clamped, g), grads)


def clip_grad_norm_(grads, max_norm, norm_type=2.0, error_if_nonfinite: bool = False):
    r"""``torch.nn.utils.clip_grad_norm_``: clips gradients to a total norm, returns the norm.

    Equivalent to :func:`get_total_norm` followed by :func:`clip_grads_with_norm_`::

        total_norm = vector_norm([vector_norm(g, norm_type) for g in grads], norm_type)
        grads = [g * min(max_norm / (total_norm + 1e-6), 1.0) for g in grads]

    Args (torch's names and defaults; ``foreach`` does not apply):
      grads: a pytree of gradients (torch takes ``parameters`` and clips their ``.grad``).
      max_norm: max norm of the gradients.
      norm_type: order of the p-norm, default ``2.0``; ``'inf'`` for the max-norm.
      error_if_nonfinite: raise torch's ``RuntimeError`` if the total norm is ``nan``/``inf``
        (inside ``jit``: ``jax.errors.JaxRuntimeError``, a ``RuntimeError``). Default ``False``.

    Returns:
      ``(clipped_grads, total_norm)``: torch modifies ``.grad`` in place and returns the norm.

    Example::

        >>> import jax, jax.numpy as jnp, jaxupdate as ju
        >>> grads = {"w": jnp.array([3.0, 4.0])}
        >>> grads, norm = ju.clip_grad_norm_(grads, max_norm=1.0)
        >>> float(norm)
        5.0
    """
    total_norm = get_total_norm(grads, norm_type, error_if_nonfinite)
    return clip_grads_with_norm_(grads, max_norm, total_norm), total_norm


def clip_grad_value_(grads, clip_value):
    r"""``torch.nn.utils.clip_grad_value_``: clamps every gradient entry to ``[-v, v]``.

    torch's ``grad.clamp_(min=-clip_value, max=clip_value)``, i.e. ``min(max(g, -v), v)`` with
    ``v`` rounded to the gradient's dtype (a negative ``v`` therefore sets every entry to ``v``,
    and NaNs propagate). Complex gradients raise torch's ``NotImplementedError``.

    Args (torch's names; ``foreach`` does not apply):
      grads: a pytree of gradients.
      clip_value: the largest absolute value allowed (a float or 0-d array).

    Returns:
      The clamped gradients.

    Example::

        >>> import jax.numpy as jnp, jaxupdate as ju
        >>> clipped = ju.clip_grad_value_({"w": jnp.array([-2.0, 0.5, 3.0])}, 1.0)
        >>> # clipped["w"] == [-1.0, 0.5, 1.0]
    """
    clip_value = float(clip_value) if isinstance(clip_value, (int, float)) else clip_value

    def clamp(g):
        if jnp.iscomplexobj(g):
            raise NotImplementedError("clamp is not supported for complex types")
        v = jnp.asarray(clip_value, g.dtype)
        return jnp.minimum(jnp.maximum(g, -v), v)

    return jax.tree.map(clamp, grads)


class ClipGradNormState(NamedTuple):
    """``count`` (updates so far, for a scheduled ``max_norm``) and the last ``total_norm``."""

    count: jax.Array
    total_norm: jax.Array


def _norm_dtype(tree):
    leaves = jax.tree.leaves(tree)
    if not leaves:
        return jnp.float32
    return jnp.result_type(*[_real_dtype(jnp.asarray(x).dtype) for x in leaves])


def clip_grad_norm(
    max_norm, norm_type=2.0, error_if_nonfinite: bool = False
) -> optax.GradientTransformationExtraArgs:
    r"""``torch.nn.utils.clip_grad_norm_`` as a transformation, to chain before an optimizer.

    Each update does what torch does between ``loss.backward()`` and ``optimizer.step()``::

        total_norm = vector_norm([vector_norm(g, norm_type) for g in grads], norm_type)
        grads = [g * min(max_norm / (total_norm + 1e-6), 1.0) for g in grads]

    The state keeps the last ``total_norm`` (what torch's call returns, for logging) and a
    ``count``. Unlike ``optax.clip_by_global_norm`` (which scales by ``max_norm / norm`` only
    when ``norm > max_norm``), torch adds ``1e-6`` and always multiplies, and supports any
    ``norm_type``.

    Args (torch's names and defaults, minus ``parameters`` and ``foreach``):
      max_norm: max norm of the gradients; a float, 1-element array or schedule of the count.
      norm_type: order of the p-norm, default ``2.0``; ``'inf'`` for the max-norm.
      error_if_nonfinite: raise torch's ``RuntimeError`` on a ``nan``/``inf`` total norm;
        under ``jit`` the call raises ``jax.errors.JaxRuntimeError`` (a ``RuntimeError``) with
        torch's message. Default ``False``.

    Example::

        >>> import optax, jax.numpy as jnp, jaxupdate as ju
        >>> tx = optax.chain(ju.clip_grad_norm(1.0), ju.adam(lr=1e-3))
        >>> params = {"w": jnp.ones(3)}
        >>> state = tx.init(params)
        >>> updates, state = tx.update({"w": jnp.full(3, 10.0)}, state, params)
        >>> # state[0].total_norm == sqrt(300), the norm before clipping (torch's return value)
    """
    max_norm = normalize(max_norm, "max_norm")
    norm_type = float(norm_type)

    def init_fn(params):
        return ClipGradNormState(init_count(), jnp.zeros([], _norm_dtype(params)))

    def update_fn(updates, state, params=None, **extra_args):
        del params, extra_args
        total_norm = get_total_norm(updates, norm_type, error_if_nonfinite)
        clipped = clip_grads_with_norm_(updates, resolve(max_norm, state.count), total_norm)
        new_state = ClipGradNormState(
            optax.safe_increment(state.count), total_norm.astype(state.total_norm.dtype)
        )
        return clipped, new_state

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


class _CountState(NamedTuple):
    count: jax.Array


def clip_grad_value(clip_value) -> optax.GradientTransformationExtraArgs:
    r"""``torch.nn.utils.clip_grad_value_`` as a transformation, to chain before an optimizer.

    Each update clamps every gradient entry::

        grad = min(max(grad, -clip_value), clip_value)

    Args (torch's names, minus ``parameters`` and ``foreach``):
      clip_value: the largest absolute value allowed; a float, 1-element array or schedule.

    Example::

        >>> import optax, jaxupdate as ju
        >>> tx = optax.chain(ju.clip_grad_value(0.5), ju.sgd(lr=0.1))
    """
    clip_value = normalize(clip_value, "clip_value")

    def init_fn(params):
        del params
        return _CountState(init_count())

    def update_fn(updates, state, params=None, **extra_args):
        del params, extra_args
        v = resolve(clip_value, state.count)
        return clip_grad_value_(updates, v), _CountState(optax.safe_increment(state.count))

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)

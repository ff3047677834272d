"""Guards for optimizers that, like their torch counterparts, accept only some parameters.

torch checks parameters when the optimizer is built (shapes) or on the first ``step()``
(complex dtypes); a transformation first sees them at ``init``, so the same errors, with
torch's types and wording, are raised there, and again at ``update`` for leaves arriving later.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax


def _checking(check) -> optax.GradientTransformationExtraArgs:
    """An identity transformation that runs ``check(tree)`` on the parameters in ``init`` and on
    the updates (and parameters, when given) in ``update``: torch raises such errors at
    construction or at the first step, a transformation when it first sees the trees."""

    def init_fn(params):
        check(params)
        return optax.EmptyState()

    def update_fn(updates, state, params=None, **extra_args):
        del extra_args
        check(updates)
        if params is not None:
            check(params)
        return updates, state

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def reject_complex(name: str) -> optax.GradientTransformationExtraArgs:
    """Raises torch's ``RuntimeError("<name> does not support complex parameters")``."""

    def check(tree):
        if any(jnp.iscomplexobj(x) for x in jax.tree.leaves(tree)):
            raise RuntimeError(f"{name} does not support complex parameters")

    return _checking(check)


def require_matrices(name: str) -> optax.GradientTransformationExtraArgs:
    """Raises torch's ``ValueError("<name> only supports 2D parameters whereas we found a
    parameter with size: <shape>")`` for any leaf that is not a matrix."""

    def check(tree):
        for x in jax.tree.leaves(tree):
            if jnp.ndim(x) != 2:
                raise ValueError(
                    f"{name} only supports 2D parameters whereas we found a parameter "
                    f"with size: {tuple(jnp.shape(x))}"
                )

    return _checking(check)

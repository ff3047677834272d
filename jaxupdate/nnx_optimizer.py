"""``flax.nnx`` route to :func:`jaxupdate.step`: an ``nnx.Optimizer`` whose ``update`` writes
the new parameters with one fused pass (``fused=True`` optimizers on CPU) or with
``tx.update`` + ``apply_updates`` (everything else), with the same numbers either way.

Example::

    >>> import jax.numpy as jnp, jaxupdate as ju
    >>> from flax import nnx
    >>> from jaxupdate.nnx_optimizer import Optimizer
    >>> model = nnx.Linear(2, 1, rngs=nnx.Rngs(0))
    >>> optimizer = Optimizer(model, ju.adam(lr=1e-2, fused=True), wrt=nnx.Param)
    >>> grads = nnx.grad(lambda m: jnp.sum(m(jnp.ones((1, 2))) ** 2))(model)
    >>> optimizer.update(model, grads)
"""

from __future__ import annotations

from flax import nnx

from jaxupdate.step import step


class Optimizer(nnx.Optimizer):
    """``nnx.Optimizer`` (same constructor: ``Optimizer(model, tx, wrt=nnx.Param)``) whose
    ``update(model, grads)`` runs ``ju.step`` instead of ``tx.update`` + ``apply_updates``.

    Mirrors flax 0.12's ``nnx.Optimizer.update`` with that one call changed. ``update``
    returns ``None``: a fused step never forms the per-leaf updates. Under ``nnx.jit``, XLA
    updates the parameters and the state in place where the buffers are donated, else it
    copies them first (correct either way).
    """

    def update(self, model, grads, /, **kwargs):
        params = nnx.as_pure(nnx.state(model, self.wrt, graph=self.graph))
        grad_arrays = nnx.as_pure(nnx.state(grads, self.wrt, graph=self.graph))
        opt_state = nnx.as_pure(self.opt_state)
        new_params, new_state = step(self.tx, params, grad_arrays, opt_state,
                                     **nnx.as_pure(kwargs))
        nnx.update(model, new_params)
        nnx.update(self.opt_state, nnx.state(new_state, graph=self.graph))
        self.step[...] += 1
        return None


__all__ = ["Optimizer"]

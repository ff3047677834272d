"""Test helpers beside tests/parity.py: torch's and jaxupdate's optimizer state after every step
(for tests that compare state buffers and scalars along the whole trajectory)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import torch

from tests.parity import JAX_DTYPE


def run_torch_states(torch_cls, kwargs, params, grads, dtype, hparams_at=None):
    """torch trajectory with its optimizer state after every step.

    Returns ``(traj, states)``: ``traj[step][leaf]`` the parameters, ``states[step][leaf]`` a
    dict of numpy copies of ``optimizer.state[p]`` (complex tensors kept complex).
    ``hparams_at(count)`` optionally returns a dict of group hyperparameters set before each
    step (torch's way of scheduling them).
    """
    tp = [torch.tensor(p).to(dtype).requires_grad_() for p in params]
    opt = torch_cls(tp, **kwargs)
    traj, states = [], []
    for count, g in enumerate(grads):
        if hparams_at is not None:
            opt.param_groups[0].update(hparams_at(count))
        for t, gg in zip(tp, g, strict=True):
            t.grad = torch.tensor(gg).to(dtype)
        opt.step()
        traj.append([t.detach().clone().numpy() for t in tp])
        states.append(
            [{k: v.detach().clone().numpy() for k, v in opt.state[t].items()} for t in tp]
        )
    return traj, states


def run_jax_states(tx, params, grads, dtype):
    """jaxupdate trajectory (jitted step) with the whole optimizer state after every step."""
    jdt = JAX_DTYPE[dtype]
    jp = [jnp.asarray(p, jdt) for p in params]
    state = tx.init(jp)

    @jax.jit
    def step(g, state, p):
        updates, state = tx.update(g, state, p)
        return jax.tree.map(jnp.add, p, updates), state

    traj, states = [], []
    for g in grads:
        jp, state = step([jnp.asarray(x, jdt) for x in g], state, jp)
        traj.append([np.asarray(x) for x in jp])
        states.append(state)
    return traj, states

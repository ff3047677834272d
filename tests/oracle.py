"""Test helpers beside tests/parity.py: pairwise option grids, torch's state per step.

Pairwise grids: a full product of seven two-valued options is 128 configurations; a
pairwise covering set is about eight, and still runs every value of every option together
with every value of every other option. Deterministic: the greedy choice scans the product in order.
"""

from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import torch

from tests.parity import JAX_DTYPE


def pairwise(keep=lambda kw: True, **axes):
    """Configurations (dicts) covering every pair of values of two different options.

    ``keep(kw)`` drops invalid combinations; pairs that no kept configuration can cover are
    left out.
    """
    keys = list(axes)
    rows = [
        dict(zip(keys, vals, strict=True))
        for vals in itertools.product(*axes.values())
        if keep(dict(zip(keys, vals, strict=True)))
    ]

    def pairs(row):
        idx = [(k, axes[k].index(row[k])) for k in keys]
        return set(itertools.combinations(idx, 2))

    uncovered = set().union(*(pairs(r) for r in rows)) if rows else set()
    chosen = []
    while uncovered:
        best = max(rows, key=lambda r: len(pairs(r) & uncovered))
        chosen.append(best)
        uncovered -= pairs(best)
    return chosen


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


def find_state(opt_state, cls):
    """The one NamedTuple of type ``cls`` inside an optimizer state."""
    found = [
        s for s in jax.tree.leaves(opt_state, is_leaf=lambda x: isinstance(x, cls))
        if isinstance(s, cls)
    ]
    assert len(found) == 1, found
    return found[0]


def as_real(x):
    """torch's view_as_real for numpy arrays (real arrays unchanged)."""
    x = np.asarray(x)
    return np.stack([x.real, x.imag], axis=-1) if np.iscomplexobj(x) else x


def max_rel(a, b):
    """max |a - b| / max |b| (b the reference), 0 for empty arrays."""
    a, b = np.asarray(a), np.asarray(b)
    assert a.shape == b.shape, (a.shape, b.shape)
    if not b.size:
        return 0.0
    scale = max(float(np.max(np.abs(b))), 1e-30)
    return float(np.max(np.abs(a.astype(b.dtype) - b))) / scale

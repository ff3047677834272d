"""Test helper beside tests/parity.py: torch's optimizer state after every step (for tests that
compare state buffers and scalars along the whole trajectory; jaxupdate's side is
``tests.parity.run_jax(..., states=True)``)."""

from __future__ import annotations

import torch


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


def states_every_step(torch_cls, ju_fn, kwargs, state_cls, keys, dtype, steps):
    """Runs both for ``steps`` steps and compares, after every step and for every leaf, the
    count with torch's ``step`` and the buffers ``keys`` (complex ones in torch's real view).

    Returns ``[(jaxupdate's state_cls block, torch's per-leaf state dicts)]``, one per step,
    for the optimizer's own further checks.
    """
    from tests import parity as P

    params, grads = P.problem(dtype, steps)
    _, t_states = run_torch_states(torch_cls, kwargs, params, grads, dtype)
    _, j_states = P.run_jax(ju_fn(**kwargs), params, grads, dtype, states=True)
    out = []
    for ts, js in zip(t_states, j_states, strict=True):
        s = P.find_state(js, state_cls)
        for leaf, t in enumerate(ts):
            assert int(P.step_count(js)) == float(t["step"])
            for key in keys:
                err = P.max_rel(getattr(s, key)[leaf], P.as_real(t[key]))
                assert err <= P.TOL[torch.float64], (key, err)
        out.append((s, ts))
    return out

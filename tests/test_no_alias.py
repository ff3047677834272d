"""Arrays built from torch memory own their memory (issue 12, part 1).

``tensor.numpy()`` shares the tensor's memory and ``jnp.asarray`` of it can be zero-copy on CPU,
so a JAX array built that way moves whenever torch updates the tensor in place
(``optimizer.step()``, a scheduler filling a tensor lr, ``param.add_``). Every test converts,
records the JAX side, mutates the torch tensors in place, and checks that nothing on the JAX
side moved; where a trajectory is involved, it also checks that both runs still agree.
"""

from __future__ import annotations

import copy
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

import jaxupdate as ju
from jaxupdate.interop import _torch as T
from jaxupdate.interop import load_torch_state_dict
from jaxupdate.interop import parity as P
from jaxupdate.interop.from_torch import from_torch
from jaxupdate.interop.weights import load_pt, torch_to_nnx, weights_from_torch
from jaxupdate.lr_scheduler import inject_hyperparams, set_hyperparams

# realistic sizes, lengths not multiples of 16
SHAPES = [(1000, 33), (100_003,), (7,)]


def _host(tree):
    """A numpy copy of every leaf (what the JAX side held before torch moved)."""
    return jax.tree.map(lambda x: np.array(x, copy=True), tree)


def _same(before, after):
    for a, b in zip(jax.tree.leaves(before), jax.tree.leaves(after)):
        np.testing.assert_array_equal(np.asarray(b), a)


def _torch_step(ps, opt, g):
    """One torch step (in place) on fresh gradients; returns them."""
    grads = [torch.randn(p.shape, generator=g, dtype=p.dtype) for p in ps]
    for p, gr in zip(ps, grads):
        p.grad = gr
    opt.step()
    return grads


def _run_sgd(steps, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    ps = [torch.nn.Parameter(torch.randn(s, generator=g, dtype=dtype)) for s in SHAPES]
    opt = torch.optim.SGD(ps, lr=0.1, momentum=0.9)
    for _ in range(steps):
        _torch_step(ps, opt, g)
    return ps, opt, g


def _assert_torch_equal(params, ps):
    for n, p in zip(params, ps):
        np.testing.assert_allclose(np.asarray(n), T.to_numpy(p), rtol=1e-12, atol=1e-15)


def _mutate(tensors):
    with torch.no_grad():
        for t in tensors:
            t.mul_(-3.0).add_(1.0)


def test_to_numpy_copies():
    for dtype in (torch.float32, torch.float64, torch.bfloat16, torch.int64):
        t = torch.ones(100_003, dtype=dtype)
        a = T.to_numpy(t)
        j = jnp.asarray(a, a.dtype)  # the explicit-dtype form is zero-copy on CPU
        t.fill_(7)
        assert float(a[0]) == 1.0 and float(j[0]) == 1.0, dtype


def test_load_torch_state_dict_owns_memory():
    """The issue's scenario: torch keeps stepping after its state was loaded into jaxupdate."""
    ps, opt, g = _run_sgd(3)
    params = [jnp.asarray(T.to_numpy(p)) for p in ps]
    tx = ju.sgd(lr=0.1, momentum=0.9)
    state = load_torch_state_dict(tx, opt.state_dict(), params)
    before, p_before = _host(state), _host(params)
    # torch goes on: step() updates momentum_buffer and the parameters in place
    grads = _torch_step(ps, opt, g)
    _same(before, state)
    _same(p_before, params)
    # and jaxupdate's next step is still torch's
    updates, _ = tx.update([jnp.asarray(T.to_numpy(x)) for x in grads], state, params)
    _assert_torch_equal(ju.apply_updates(params, updates), ps)


def test_from_torch_snapshot_at_conversion():
    """Issue 15 point 2: init after torch stepped on loads the state as it was at conversion."""
    ps, opt, g = _run_sgd(2)
    tx = from_torch(opt)
    at_conversion = copy.deepcopy(opt.state_dict())
    params = [jnp.asarray(T.to_numpy(p)) for p in ps]
    _torch_step(ps, opt, g)  # torch moves on before init
    state = tx.init(params)
    want = load_torch_state_dict(ju.sgd(lr=0.1, momentum=0.9), at_conversion, params)
    _same(_host(want), state)
    before = _host(state)
    _mutate([opt.state[p]["momentum_buffer"] for p in ps])
    _same(before, state)


def test_from_torch_tensor_lr_and_state_dict_params():
    w = torch.nn.Parameter(torch.randn(100_003, dtype=torch.float64))
    opt = torch.optim.Adam([w], lr=torch.tensor(0.01, dtype=torch.float64))
    w.grad = torch.ones_like(w)
    opt.step()
    tx = from_torch(opt)
    params = [jnp.asarray(T.to_numpy(w))]
    state = tx.init(params)
    before = _host(state)
    opt.param_groups[0]["lr"].fill_(5.0)  # what torch's schedulers do to a tensor lr
    _mutate(opt.state[w].values())
    _same(before, state)
    upd, _ = tx.update([jnp.ones(100_003)], state, params)
    # Adam's second step with lr 0.01 (not 5.0): |update| is about lr
    assert float(jnp.max(jnp.abs(upd[0]))) < 0.02


def test_tensor_hyperparameters():
    lr = torch.tensor(0.1, dtype=torch.float64)
    tx = ju.sgd(lr=lr)
    tx2 = inject_hyperparams(ju.sgd)(lr=0.5)
    params = {"w": jnp.ones(3)}
    s2 = set_hyperparams(tx2.init(params), lr=lr)
    lr.fill_(100.0)
    u, _ = tx.update({"w": jnp.ones(3)}, tx.init(params), params)
    np.testing.assert_allclose(np.asarray(u["w"]), -0.1)
    assert float(s2.hyperparams["lr"]) == 0.1


def test_weights_from_torch_and_load_pt(tmp_path):
    net = torch.nn.Sequential(torch.nn.Linear(1000, 33), torch.nn.Linear(33, 7))
    w = weights_from_torch(net)
    wb = weights_from_torch(net, buffers=True, nested=True)
    before, before_b = _host(w), _host(wb)
    _mutate(net.parameters())
    _same(before, w)
    _same(before_b, wb)

    path = os.path.join(tmp_path, "w.pt")
    torch.save(net.state_dict(), path)
    loaded = load_pt(path)
    before = _host(loaded)
    # load_pt's tensors are private to it; the mapping form shares the caller's tensors
    sd = net.state_dict()
    from_sd = weights_from_torch(sd)
    b2 = _host(from_sd)
    _mutate(sd.values())
    _same(before, loaded)
    _same(b2, from_sd)


def test_torch_to_nnx():
    nnx = pytest.importorskip("flax.nnx")
    t = torch.nn.Linear(1000, 33)
    m = nnx.Linear(1000, 33, rngs=nnx.Rngs(0))
    torch_to_nnx(m, t)
    before = _host(nnx.state(m, nnx.Param))
    _mutate(t.parameters())
    _same(before, nnx.state(m, nnx.Param))


def test_parity_cli_kwargs():
    lr = torch.tensor(0.01, dtype=torch.float64)
    betas = (torch.tensor(0.9, dtype=torch.float64), 0.999)
    kw = P.to_jax_kwargs({"lr": lr, "betas": betas, "foreach": False})
    lr.fill_(3.0)
    betas[0].fill_(0.0)
    assert float(kw["lr"]) == 0.01 and float(kw["betas"][0]) == 0.9


def test_from_torch_continues_while_torch_keeps_stepping():
    """Side by side after conversion, torch stepping first each time: both still agree."""
    ps, opt, g = _run_sgd(3)
    tx = from_torch(opt)
    params = [jnp.asarray(T.to_numpy(p)) for p in ps]
    state = tx.init(params)
    step = jax.jit(tx.update)
    for _ in range(10):
        grads = _torch_step(ps, opt, g)  # in place, before jaxupdate's step reads its state
        updates, state = step([jnp.asarray(T.to_numpy(x)) for x in grads], state, params)
        params = ju.apply_updates(params, updates)
    _assert_torch_equal(params, ps)


def test_to_torch_leaves_the_jax_run_alone():
    """to_torch writes copies into torch: torch stepping on in place moves nothing in JAX."""
    ps, opt, g = _run_sgd(2)
    tx = from_torch(opt)
    params = [jnp.asarray(T.to_numpy(p)) for p in ps]
    state = tx.init(params)
    updates, state = tx.update([jnp.ones(s) for s in SHAPES], state, params)
    params = ju.apply_updates(params, updates)
    before, p_before = _host(state), _host(params)
    ju.interop.to_torch(opt, tx, state, params)
    _torch_step(ps, opt, g)
    _mutate(ps)
    _same(before, state)
    _same(p_before, params)

"""Hypergradients: ``jax.grad`` through K unrolled jaxupdate steps equals torch's.

The objective is the loss after K optimizer steps on a smooth non-quadratic loss (its gradient
depends on the parameters, so the chain through every gradient matters), differentiated with
respect to one hyperparameter or to the initial parameters:

    jaxupdate: def f(h): tx = ju.adam(lr=h); K x (jax.grad(loss), tx.update, apply_updates)
               return loss(params)            -> jax.grad(f)
    torch:     h = tensor(.., requires_grad=True); p = p0.clone()
               opt = Adam([p], lr=h, differentiable=True)
               K x (p.grad = autograd.grad(loss, p, create_graph=True); opt.step())
               loss(p).backward()             -> h.grad, p0.grad

The oracle is torch's own ``differentiable=True`` autograd wherever torch accepts that
hyperparameter as a tensor and differentiates through it (``oracle="torch"``). Where it does
not (a TypeError such as ``add_(): argument 'alpha' must be Number, not Tensor``, a ``.grad``
that silently stays None, or a wrong gradient), the oracle is a 4th-order central finite
difference of torch's own float64 forward (``oracle="fd"``), and the entry says why.

The table has one line per (optimizer, configuration, what is differentiated). Optimizers
whose jaxupdate module does not exist yet are skipped with that reason and run once it lands.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import inspect
import warnings
from typing import Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

import jaxupdate as ju

K = 5  # unrolled steps (per entry `steps` may ask for more)
SHAPES = ((2, 3), (4,))  # two leaves: the params are a pytree / a list of tensors
N = sum(int(np.prod(s)) for s in SHAPES)

# torch autograd vs jax.grad, both exact up to rounding: max|jax - torch| / max|torch|.
TOL = 1e-10
# Finite differences of torch's forward. Measured against torch's own autograd on every entry
# where both exist (test_fd_oracle_matches_torch_autograd): worst 6.0e-8 (AdamW d/dbeta2 at
# beta2 = 0.999, where the step is 1e-6 and rounding dominates), typically 1e-12..1e-9. The fd
# entries measure at most 4.4e-8 (NAdam beta2 and ASGD lr, whose jaxupdate forwards round
# mu_product / eta to float32 as torch does under its default dtype), typically 1e-13..1e-9.
FD_TOL = 1e-7
# Per-optimizer agreement where the forwards themselves differ on purpose, with the reason.
TOL_FOR = {
    # jaxupdate's NAdam rounds mu_product to float32 after every step, as torch's state tensor
    # under torch's default dtype (jaxupdate/transforms/nadam_radam.py). No torch setting both
    # does that and differentiates like its non-differentiable path (the differentiable path
    # also computes mu_product * mu_next and the step factors as float32 tensors), so the
    # oracle runs in float64: forwards differ by 2.8e-9, hypergradients by at most 6.1e-9
    # (d/dbeta1, measured) -> 2e-8.
    "nadam": 2e-8,
}

# Loss: 0.5 x'Ax + b'x + 0.25 sum(x^4) on the concatenated parameters x; A symmetric positive.
_rng = np.random.default_rng(0)
_M = _rng.standard_normal((N, N))
A = _M @ _M.T / N + np.eye(N)
B = _rng.standard_normal(N)
P0 = [_rng.standard_normal(s) for s in SHAPES]
DIRECTION = [_rng.standard_normal(s) for s in SHAPES]  # for finite differences w.r.t. params

TORCH_CLS = {
    "sgd": torch.optim.SGD,
    "adam": torch.optim.Adam,
    "adamw": torch.optim.AdamW,
    "rmsprop": torch.optim.RMSprop,
    "adagrad": torch.optim.Adagrad,
    "adadelta": torch.optim.Adadelta,
    "adamax": torch.optim.Adamax,
    "nadam": torch.optim.NAdam,
    "radam": torch.optim.RAdam,
    "asgd": torch.optim.ASGD,
    "rprop": torch.optim.Rprop,
}
MODULE = {"adamw": "adam"}  # jaxupdate.optim module of a function, where not its own name
# hyperparameters that are one element of a tuple argument
PAIRS = {
    "beta1": ("betas", 0),
    "beta2": ("betas", 1),
    "etaminus": ("etas", 0),
    "etaplus": ("etas", 1),
}

# Why torch's differentiable=True is not the oracle (torch 2.13, measured).
# test_fd_entries_give_the_right_reason keeps these honest as torch changes.
TYPE_ERROR = "torch: TypeError, the tensor reaches a Number-only `alpha`/`value`/`fill_value`"
NO_GRAD = "torch: the tensor's .grad stays None (read as a Python float on the way)"
WRONG = "torch: .grad is wrong (48% off its own finite differences: eta is read as a float)"
DETACHED = ("torch: .grad is wrong (76% off): the first momentum buffer is grad.detach(), and "
            "the zero seed that avoids it needs dampening 0")


class Case(NamedTuple):
    name: str  # jaxupdate function (and torch class) name
    wrt: str  # "params" or a hyperparameter name (beta1/beta2/etaminus/etaplus for pairs)
    kwargs: dict  # torch's argument names with float values, the same on both sides
    oracle: str = "torch"  # "torch" (autograd, differentiable=True) or "fd"
    why: str = ""  # for oracle="fd": why torch's autograd is not the oracle
    seed: Optional[Callable] = None  # (param, kwargs) -> torch state set before step 1
    steps: int = K


def case(name, wrt, oracle="torch", why="", seed=None, steps=K, **kwargs):
    return Case(name, wrt, kwargs, oracle, why, seed, steps)


def _zero_buffer(p, kwargs):
    """torch's SGD creates its momentum buffer as grad.detach().clone() on the first step,
    which cuts the graph from the first gradient: d/dparams and d/dweight_decay come out wrong
    (test_torch_sgd_first_buffer_is_detached). A zero buffer gives the same forward bit for bit
    (0 * momentum + 1 * grad, dampening 0) with the graph intact; torch's own
    test_differentiable.py seeds the buffer too."""
    return {"momentum_buffer": torch.zeros_like(p)}


def _asgd_float32_state(p, kwargs):
    """torch's initial ASGD state, with eta and mu as float32 tensors as under torch's default
    dtype (jaxupdate's asgd reproduces that float32 rounding of eta; the oracle runs with a
    float64 default, see _torch_float64)."""
    return {
        "step": torch.zeros(()),
        "eta": torch.tensor(float(kwargs.get("lr", 1e-2)), dtype=torch.float32),
        "mu": torch.ones((), dtype=torch.float32),
        "ax": torch.zeros_like(p),
    }


ZB = _zero_buffer
R = 8  # RAdam's rectified branch (rho_t > 5) starts at step 6 with beta2 = 0.999

CASES = [
    # --- SGD: lr, momentum, weight_decay differentiable in torch; dampening and Nesterov's
    # momentum are not (add_(alpha=...) takes a Number).
    case("sgd", "params", lr=0.05),
    case("sgd", "lr", lr=0.05),
    case("sgd", "params", lr=0.05, momentum=0.9, seed=ZB),
    case("sgd", "lr", lr=0.05, momentum=0.9, seed=ZB),
    case("sgd", "momentum", lr=0.05, momentum=0.9, seed=ZB),
    case("sgd", "params", lr=0.05, momentum=0.9, weight_decay=0.1, seed=ZB),
    case("sgd", "weight_decay", lr=0.05, momentum=0.9, weight_decay=0.1, seed=ZB),
    case("sgd", "weight_decay", lr=0.05, weight_decay=0.1),
    case("sgd", "params", lr=0.05, momentum=0.9, nesterov=True, maximize=True, seed=ZB),
    case("sgd", "lr", lr=0.05, momentum=0.9, nesterov=True, seed=ZB),
    case("sgd", "momentum", "fd", TYPE_ERROR, lr=0.05, momentum=0.9, nesterov=True),
    case("sgd", "params", "fd", DETACHED, lr=0.05, momentum=0.9, dampening=0.2),
    case("sgd", "dampening", "fd", TYPE_ERROR, lr=0.05, momentum=0.9, dampening=0.2),
    # --- Adam / AdamW: every float hyperparameter is differentiable in torch
    case("adam", "params", lr=0.05),
    case("adam", "lr", lr=0.05),
    case("adam", "beta1", lr=0.05),
    case("adam", "beta2", lr=0.05),
    case("adam", "eps", lr=0.05, eps=1e-3),
    case("adam", "params", lr=0.05, amsgrad=True),
    case("adam", "lr", lr=0.05, amsgrad=True),
    case("adam", "beta1", lr=0.05, amsgrad=True),
    case("adam", "beta2", lr=0.05, betas=(0.5, 0.9), amsgrad=True),
    case("adam", "params", lr=0.05, weight_decay=0.1),
    case("adam", "weight_decay", lr=0.05, weight_decay=0.1),
    case("adam", "weight_decay", lr=0.05, weight_decay=0.1, decoupled_weight_decay=True),
    case("adam", "beta1", lr=0.05, weight_decay=0.1, maximize=True, amsgrad=True),
    case("adamw", "params", lr=0.05),
    case("adamw", "lr", lr=0.05),
    case("adamw", "beta1", lr=0.05),
    case("adamw", "beta2", lr=0.05),
    case("adamw", "eps", lr=0.05, eps=1e-3),
    case("adamw", "weight_decay", lr=0.05),
    case("adamw", "params", lr=0.05, amsgrad=True),
    case("adamw", "beta2", lr=0.05, amsgrad=True),
    case("adamw", "weight_decay", lr=0.05, weight_decay=0.3, amsgrad=True),
    # --- RMSprop: eps and momentum differentiable in torch; lr, alpha, weight_decay are not
    case("rmsprop", "params", lr=0.01),
    case("rmsprop", "eps", lr=0.01, eps=1e-3),
    case("rmsprop", "params", lr=0.01, momentum=0.5, centered=True, weight_decay=0.1),
    case("rmsprop", "momentum", lr=0.01, momentum=0.5),
    case("rmsprop", "eps", lr=0.01, momentum=0.5, centered=True, eps=1e-3),
    case("rmsprop", "lr", "fd", TYPE_ERROR, lr=0.01),
    case("rmsprop", "lr", "fd", TYPE_ERROR, lr=0.01, momentum=0.5, centered=True),
    case("rmsprop", "alpha", "fd", TYPE_ERROR, lr=0.01, alpha=0.9),
    case("rmsprop", "alpha", "fd", TYPE_ERROR, lr=0.01, alpha=0.9, centered=True),
    case("rmsprop", "weight_decay", "fd", TYPE_ERROR, lr=0.01, weight_decay=0.1),
    # --- modules being written in jaxupdate/optim/<name>.py: skipped until they exist
    case("adagrad", "params", lr=0.05, lr_decay=0.01, weight_decay=0.1),
    case("adagrad", "eps", lr=0.05, eps=1e-3),
    case("adagrad", "lr", "fd", TYPE_ERROR, lr=0.05),
    case("adagrad", "lr_decay", "fd", TYPE_ERROR, lr=0.05, lr_decay=0.01),
    case("adagrad", "weight_decay", "fd", TYPE_ERROR, lr=0.05, weight_decay=0.1),
    case("adagrad", "initial_accumulator_value", "fd", TYPE_ERROR, lr=0.05,
         initial_accumulator_value=0.1),
    case("adadelta", "params", lr=0.5, weight_decay=0.1),
    case("adadelta", "eps", lr=0.5, eps=1e-3),
    case("adadelta", "lr", "fd", TYPE_ERROR, lr=0.5),
    case("adadelta", "rho", "fd", TYPE_ERROR, lr=0.5),
    case("adadelta", "weight_decay", "fd", TYPE_ERROR, lr=0.5, weight_decay=0.1),
    case("adamax", "params", lr=0.05, weight_decay=0.1),
    case("adamax", "beta2", lr=0.05),
    case("adamax", "eps", lr=0.05, eps=1e-3),
    case("adamax", "lr", "fd", TYPE_ERROR, lr=0.05),
    case("adamax", "beta1", "fd", TYPE_ERROR, lr=0.05),
    case("adamax", "weight_decay", "fd", TYPE_ERROR, lr=0.05, weight_decay=0.1),
    case("nadam", "params", lr=0.05, weight_decay=0.1),
    case("nadam", "lr", lr=0.05),
    case("nadam", "beta1", lr=0.05),
    case("nadam", "eps", lr=0.05, eps=1e-3),
    case("nadam", "momentum_decay", lr=0.05, momentum_decay=0.04),
    case("nadam", "weight_decay", lr=0.05, weight_decay=0.1, decoupled_weight_decay=True),
    case("nadam", "beta2", "fd", TYPE_ERROR, lr=0.05),
    case("nadam", "weight_decay", "fd", TYPE_ERROR, lr=0.05, weight_decay=0.1),
    case("radam", "params", lr=0.05, weight_decay=0.1, steps=R),
    case("radam", "params", lr=0.05, weight_decay=0.1, decoupled_weight_decay=True, steps=R),
    case("radam", "lr", lr=0.05, steps=R),
    case("radam", "beta1", lr=0.05, steps=R),
    case("radam", "beta2", "fd", TYPE_ERROR, lr=0.05, steps=R),
    case("radam", "eps", lr=0.05, eps=1e-3, steps=R),
    case("radam", "weight_decay", "fd", TYPE_ERROR, lr=0.05, weight_decay=0.1, steps=R),
    case("asgd", "params", lr=0.05, t0=2.0, weight_decay=0.1, seed=_asgd_float32_state),
    case("asgd", "params", lr=0.05, lambd=0.1, t0=2.0, seed=_asgd_float32_state),
    case("asgd", "lr", "fd", NO_GRAD, lr=0.05, t0=2.0),
    case("asgd", "lambd", "fd", WRONG, lr=0.05, lambd=0.1, t0=2.0),
    case("asgd", "alpha", "fd", NO_GRAD, lr=0.05, lambd=0.1, t0=2.0),
    case("asgd", "weight_decay", "fd", TYPE_ERROR, lr=0.05, weight_decay=0.1),
    # Rprop: lr large enough that gradients change sign within K steps, so etaminus acts
    case("rprop", "params", lr=0.3),
    case("rprop", "etaplus", lr=0.3),
    case("rprop", "etaminus", lr=0.3),
    case("rprop", "lr", "fd", TYPE_ERROR, lr=0.3),
]

# float hyperparameters deliberately without an entry, and why
NOT_COVERED = {
    ("asgd", "t0"): "moves only the average `ax`, never the parameters: hypergradient 0",
    ("rprop", "step_sizes"): "clamp bounds: a derivative only where a step size sits on one",
}


def _case_id(c: Case) -> str:
    opts = "-".join(f"{k}={v}" for k, v in c.kwargs.items())
    return f"{c.name}-d{c.wrt}-{opts}" + ("-fd" if c.oracle == "fd" else "")


def _signature(name):
    return inspect.signature(TORCH_CLS[name].__init__).parameters


def _value(c: Case) -> float:
    """The value of the differentiated hyperparameter (torch's default when not given)."""
    if c.wrt == "params":
        return 0.0
    if c.wrt in PAIRS:
        tup, i = PAIRS[c.wrt]
        return float(c.kwargs.get(tup, _signature(c.name)[tup].default)[i])
    return float(c.kwargs.get(c.wrt, _signature(c.name)[c.wrt].default))


def _with_hparam(c: Case, value, wrap_other):
    """c.kwargs with c.wrt set to `value`; for a pair, the other element goes through wrap_other
    (both arrays or both tensors: torch wants both betas floats or both Tensors)."""
    kw = dict(c.kwargs)
    if c.wrt in PAIRS:
        tup, i = PAIRS[c.wrt]
        pair = [wrap_other(float(x)) for x in kw.get(tup, _signature(c.name)[tup].default)]
        pair[i] = value
        kw[tup] = tuple(pair)
    else:
        kw[c.wrt] = value
    return kw


# ---------------------------------------------------------------------------------------------
# the jaxupdate side


def _ju_fn(name):
    """The jaxupdate optimizer function; skips (with the reason) while its module is missing."""
    if hasattr(ju, name):
        return getattr(ju, name)
    modname = f"jaxupdate.optim.{MODULE.get(name, name)}"
    if importlib.util.find_spec(modname) is None:
        pytest.skip(f"{modname} does not exist yet (being written); runs once it does")
    return getattr(importlib.import_module(modname), name)


def _jax_loss(params):
    x = jnp.concatenate([jnp.ravel(p) for p in params])
    return 0.5 * x @ jnp.asarray(A) @ x + jnp.asarray(B) @ x + 0.25 * jnp.sum(x**4)


def _jax_grad(fn, c: Case):
    """jax.grad of the loss after c.steps jaxupdate steps w.r.t. c.wrt: a float, or a list."""

    def objective(h, params):
        kwargs = c.kwargs
        if c.wrt != "params":
            kwargs = _with_hparam(c, h, lambda x: jnp.asarray(x, jnp.float64))
        tx = fn(**kwargs)
        state = tx.init(params)
        for _ in range(c.steps):
            grads = jax.grad(_jax_loss)(params)
            updates, state = tx.update(grads, state, params)
            params = ju.apply_updates(params, updates)
        return _jax_loss(params)

    h0 = jnp.asarray(_value(c), jnp.float64)
    p0 = [jnp.asarray(p, jnp.float64) for p in P0]
    # eager, not jit: compiling each of ~90 small graphs costs ~2 s, eager ops are cached (0.2 s)
    if c.wrt == "params":
        return [np.asarray(g) for g in jax.grad(objective, argnums=1)(h0, p0)]
    return float(jax.grad(objective, argnums=0)(h0, p0))


# ---------------------------------------------------------------------------------------------
# the torch side


@contextlib.contextmanager
def _torch_float64():
    """torch with float64 as its default dtype while the oracle runs.

    torch's differentiable (and capturable) paths compute Adam's bias corrections from the
    `step` state tensor, created in the default dtype: with float32 there, the hypergradients
    of float64 parameters carry float32 rounding (measured: 1.5e-4 relative on Adam's d/dlr).
    jaxupdate computes them in float64, as torch's non-differentiable path does (Python floats).
    """
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        yield
    finally:
        torch.set_default_dtype(old)


def _torch_loss(params):
    x = torch.cat([p.reshape(-1) for p in params])
    return 0.5 * x @ torch.tensor(A) @ x + torch.tensor(B) @ x + 0.25 * (x**4).sum()


def _torch_run(c: Case, differentiate: bool, p0=None, h=None):
    """Loss after c.steps torch steps; with `differentiate`, the gradient w.r.t. c.wrt instead.

    Differentiable runs follow torch's test_differentiable.py: non-leaf clones as params, the
    hyperparameter a float64 tensor with requires_grad, and the optimizer state cloned after
    each step (clone is the identity for autograd): torch's next step updates the state in
    place while the previous step's graph still holds it, which otherwise fails with "one of
    the variables needed for gradient computation has been modified by an inplace operation"
    (SGD's buffer under a tensor lr, amsgrad's max_exp_avg_sq, RMSprop's grad_avg, Adamax's
    exp_inf, Rprop's prev).
    """
    p0 = P0 if p0 is None else p0
    h = _value(c) if h is None else h
    with _torch_float64(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if differentiate:
            leaves = [torch.tensor(p, requires_grad=True) for p in p0]
            params = [p.clone() for p in leaves]
            ht = torch.tensor(h, requires_grad=c.wrt != "params")
            kw = c.kwargs if c.wrt == "params" else _with_hparam(c, ht, torch.tensor)
            opt = TORCH_CLS[c.name](params, differentiable=True, **kw)
        else:
            params = [torch.tensor(p, requires_grad=True) for p in p0]
            kw = c.kwargs if c.wrt == "params" else _with_hparam(c, h, float)
            opt = TORCH_CLS[c.name](params, **kw)
        if c.seed is not None:
            for p in params:
                opt.state[p].update(c.seed(p, c.kwargs))
        for _ in range(c.steps):
            # the loss sees clones: torch's step updates `params` in place under the graph
            grads = torch.autograd.grad(
                _torch_loss([p.clone() for p in params]), params, create_graph=differentiate
            )
            for p, g in zip(params, grads, strict=True):
                p.grad = g.clone()  # autograd.grad of a cat returns views of one buffer
            opt.step()
            if differentiate:
                for p in params:
                    st = opt.state[p]
                    for key, v in list(st.items()):
                        if torch.is_tensor(v):
                            st[key] = v.clone()
        loss = _torch_loss(params)
        if not differentiate:
            return float(loss)
        loss.backward()
        if c.wrt == "params":
            return [p.grad.numpy() for p in leaves]
        return None if ht.grad is None else float(ht.grad)


def _directional(grads):
    return float(sum(np.sum(g * d) for g, d in zip(grads, DIRECTION, strict=True)))


def _fd(c: Case):
    """4th-order central difference of torch's non-differentiable float64 forward.

    Hyperparameters: step 1e-3 times the distance to 0, or to 1 for a value inside (0, 1)
    (beta2 = 0.999 sits 1e-3 from RAdam's 2 / (1 - beta2) pole). Params: along DIRECTION.
    """
    if c.wrt == "params":
        f = lambda t: _torch_run(c, False, p0=[p + t * d for p, d in zip(P0, DIRECTION)])  # noqa: B905
        x, step = 0.0, 1e-4
    else:
        x = _value(c)
        f = lambda t: _torch_run(c, False, h=t)
        step = 1e-3 * (min(x, 1 - x) if 0 < x < 1 else abs(x))
    return (-f(x + 2 * step) + 8 * f(x + step) - 8 * f(x - step) + f(x - 2 * step)) / (12 * step)


def _flat(x):
    return np.concatenate([np.ravel(v) for v in (x if isinstance(x, list) else [x])])


def _rel(a, b):
    """max |a - b| / max |b| over all leaves (a float is a one-leaf tree)."""
    a, b = _flat(a), _flat(b)
    return float(np.max(np.abs(a - b)) / max(float(np.max(np.abs(b))), 1e-300))


# ---------------------------------------------------------------------------------------------
# the tests


@pytest.mark.parametrize("c", CASES, ids=[_case_id(c) for c in CASES])
def test_hypergradient_matches_torch(c: Case):
    fn = _ju_fn(c.name)
    got = _jax_grad(fn, c)
    if c.oracle == "torch":
        want = _torch_run(c, True)
        assert want is not None, f"torch gives no gradient for {c.wrt}: make it an fd entry"
        err, tol = _rel(got, want), TOL_FOR.get(c.name, TOL)
    else:
        assert c.why, "an fd entry says why torch's autograd cannot be the oracle"
        want = _fd(c)
        got = _directional(got) if c.wrt == "params" else got
        err, tol = abs(got - want) / abs(want), max(FD_TOL, TOL_FOR.get(c.name, 0.0))
    assert err <= tol, f"{_case_id(c)}: jax {got} vs torch {want} ({c.oracle}): {err:.2e}"


def test_table_covers_every_float_hyperparameter():
    """Each optimizer has entries for params and every float hyperparameter of torch's class."""
    for name in TORCH_CLS:
        covered = {c.wrt for c in CASES if c.name == name}
        wanted = {"params"}
        for k, p in _signature(name).items():
            if (name, k) in NOT_COVERED or isinstance(p.default, bool):
                continue
            if k in ("betas", "etas"):
                wanted |= {h for h, (tup, _) in PAIRS.items() if tup == k}
            elif isinstance(p.default, (int, float)):
                wanted.add(k)
        assert wanted <= covered, f"{name}: no entry for {sorted(wanted - covered)}"


FD_CHECKS = [c for c in CASES if c.oracle == "torch"]


@pytest.mark.parametrize("c", FD_CHECKS, ids=[_case_id(c) for c in FD_CHECKS])
def test_fd_oracle_matches_torch_autograd(c: Case):
    """The finite-difference oracle reproduces torch's autograd where torch has one (FD_TOL).

    torch alone (milliseconds): it validates the oracle of the "fd" entries, and torch's own
    differentiable path, on every entry where both exist.
    """
    want = _torch_run(c, True)
    want = _directional(want) if c.wrt == "params" else want
    got = _fd(c)
    assert abs(got - want) <= FD_TOL * abs(want), (got, want)


def test_torch_sgd_first_buffer_is_detached():
    """Why SGD entries seed the momentum buffer: torch's fresh buffer cuts the first gradient.

    If this starts failing, torch stopped detaching and the seed can go.
    """
    c = case("sgd", "params", lr=0.05, momentum=0.9, seed=ZB)
    seeded = _torch_run(c, True)
    fresh = _torch_run(c._replace(seed=None), True)
    assert _rel(_jax_grad(ju.sgd, c), seeded) <= TOL
    assert _rel(fresh, seeded) > 1e-2


FORMS = [
    case("sgd", "lr", lr=0.05, momentum=0.9, weight_decay=0.1, seed=ZB),
    case("adam", "beta1", lr=0.05, amsgrad=True),
    case("rmsprop", "momentum", lr=0.01, momentum=0.5, centered=True),
]


@pytest.mark.parametrize("c", FORMS, ids=[_case_id(c) for c in FORMS])
def test_every_form_of_the_hyperparameter_differentiates(c: Case):
    """The same hypergradient from a 0-d array, a 1-element array, a schedule closing over the
    value, under jit, and under vmap (a sweep over values), as from torch."""
    fn = _ju_fn(c.name)
    want = _torch_run(c, True)

    def objective(h):
        tx = fn(**_with_hparam(c, h, lambda x: jnp.asarray(x, jnp.float64)))
        params = [jnp.asarray(p) for p in P0]
        state = tx.init(params)
        for _ in range(c.steps):
            updates, state = tx.update(jax.grad(_jax_loss)(params), state, params)
            params = ju.apply_updates(params, updates)
        return _jax_loss(params)

    h = jnp.asarray(_value(c), jnp.float64)
    forms = {
        "0-d": jax.grad(objective)(h),
        "(1,)": jax.grad(lambda x: objective(jnp.reshape(x, (1,))))(h),
        "schedule": jax.grad(lambda x: objective(lambda count: x))(h),
        "jit": jax.jit(jax.grad(objective))(h),
        "vmap": jax.vmap(jax.grad(objective))(jnp.stack([h, 0.5 * h]))[0],
    }
    for form, got in forms.items():
        assert _rel(float(got), want) <= TOL, (form, float(got), want)


FD_ENTRIES = [c for c in CASES if c.oracle == "fd"]


@pytest.mark.parametrize("c", FD_ENTRIES, ids=[_case_id(c) for c in FD_ENTRIES])
def test_fd_entries_give_the_right_reason(c: Case):
    """Each fd entry fails in torch the way its `why` says (torch alone, milliseconds). If torch
    starts differentiating one of them correctly, this fails: make it an oracle="torch" entry."""
    if c.why == TYPE_ERROR:
        with pytest.raises(TypeError, match="must be Number, not Tensor"):
            _torch_run(c, True)
        return
    got = _torch_run(c, True)
    if c.why == NO_GRAD:
        assert got is None
        return
    assert c.why in (WRONG, DETACHED), c.why
    got = _directional(got) if c.wrt == "params" else got
    assert abs(got - _fd(c)) > 0.1 * abs(got)

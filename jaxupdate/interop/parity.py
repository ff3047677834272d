"""Side-by-side runs against the installed torch: the harness behind ``python -m jaxupdate parity``.

torch is the oracle. Both sides start from the same parameters and receive the same random
gradient sequence (so parity is measured on the update rule itself; L-BFGS, which evaluates
its own gradients, gets a smooth loss written in both frameworks), and the parameters are
compared after every step: the error of a run is ``max |jax - torch| / max |torch|`` over
steps and parameters.

Agreement demanded (the test suite's, ``tests/parity.py``): float64 / complex128 1e-10 here
(the tests demand 1e-12 on the same problems; the CLI leaves a margin for other torch builds
and CPUs), float32 / complex64 2e-6, or ten times torch's own float32-vs-float64 error where
the configuration amplifies rounding (XLA fuses multiply-adds that torch's kernels round
twice; see ``tests/parity.py``).

torch is imported when a function here runs, never at import.
"""

from __future__ import annotations

import inspect
from typing import Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxupdate.interop import _torch as T

TORCH_ONLY_KWARGS = ("foreach", "fused", "capturable", "differentiable")
TOL = {"float64": 1e-10, "complex128": 1e-10, "float32": 2e-6, "complex64": 2e-6}
WIDE = {"float32": "float64", "complex64": "complex128"}
SHAPES = ((3, 4), (5,), (), (2, 3, 2))
SHAPES_2D = ((3, 4), (5, 3), (4, 4))  # Muon: matrices only
SHAPES_SPARSE = ((3, 4), (5,), (2, 3, 2))  # SparseAdam: torch's to_sparse needs ndim >= 1


class Result(NamedTuple):
    err: float
    tol: float

    @property
    def ok(self) -> bool:
        return bool(self.err <= self.tol)


def optimizer_table() -> list[tuple[str, Callable, bool]]:
    """``(torch class name, configs function, supports complex)`` for every torch optimizer.

    From torch's own test table (``torch.testing._internal.common_optimizers.optim_db``).
    """
    from torch.testing._internal.common_optimizers import optim_db

    return [(o.optim_cls.__name__, o.optim_inputs_func, o.supports_complex) for o in optim_db]


def configs(inputs_func: Callable) -> list[dict]:
    """torch's configurations (constructor kwargs) for CPU, without kernel-choice kwargs."""
    out, seen = [], set()
    for oi in inputs_func("cpu"):
        kw = {k: v for k, v in oi.kwargs.items() if k not in TORCH_ONLY_KWARGS}
        key = repr(sorted(kw.items()))
        if key not in seen:
            seen.add(key)
            out.append(kw)
    return out


def _tdtype(name: str):
    return getattr(T.torch(), name)


def _shapes(cls_name: str):
    return {"Muon": SHAPES_2D, "SparseAdam": SHAPES_SPARSE}.get(cls_name, SHAPES)


def problem(dtype: str, steps: int, shapes=SHAPES, seed: int = 0):
    """Initial parameters and a gradient sequence as float64 / complex128 numpy arrays."""
    rng = np.random.default_rng(seed)
    cplx = dtype.startswith("complex")

    def draw(shape):
        x = rng.standard_normal(shape)
        return x + 1j * rng.standard_normal(shape) if cplx else x

    return [draw(s) for s in shapes], [[draw(s) for s in shapes] for _ in range(steps)]


def to_jax_kwargs(kwargs: dict) -> dict:
    out = {}
    for k, v in kwargs.items():
        if k in TORCH_ONLY_KWARGS:
            continue
        if T.is_tensor(v):
            v = T.to_numpy(v)
        elif isinstance(v, tuple):
            v = tuple(T.to_numpy(x) if T.is_tensor(x) else x for x in v)
        out[k] = v
    return out


# --- the L-BFGS problem: a smooth loss, the same in both frameworks ------------------------


def _lbfgs_coeffs(shapes, seed=1):
    rng = np.random.default_rng(seed)
    return [(rng.uniform(0.5, 2.0, s), rng.standard_normal(s)) for s in shapes]


def _loss_torch(tp, coeffs):
    torch = T.torch()
    total = 0
    for p, (a, b) in zip(tp, coeffs):
        a_t, b_t = torch.tensor(a, dtype=p.dtype), torch.tensor(b, dtype=p.dtype)
        total = total + (0.5 * a_t * p * p + b_t * p + 0.1 * p**4).sum()
    return total


def _loss_jax(params, coeffs):
    total = 0
    for p, (a, b) in zip(params, coeffs):
        a_j, b_j = jnp.asarray(a, p.dtype), jnp.asarray(b, p.dtype)
        total = total + jnp.sum(0.5 * a_j * p * p + b_j * p + 0.1 * p**4)
    return total


# --- running -----------------------------------------------------------------------------------


def _numpy(t):
    return t.detach().clone().numpy()


class _TorchRun:
    """A torch optimizer stepping on the shared gradient sequence (or L-BFGS on the loss)."""

    def __init__(self, cls_name, kwargs, params, dtype, groups=None, scheduler_fn=None):
        torch = T.torch()
        self.cls_name = cls_name
        self.tp = [torch.tensor(p).to(_tdtype(dtype)).requires_grad_() for p in params]
        cls = getattr(torch.optim, cls_name)
        if groups:
            # split the parameters into len(groups) consecutive groups with these overrides
            n = len(self.tp)
            bounds = np.linspace(0, n, len(groups) + 1).round().astype(int)
            spec = [
                {"params": self.tp[bounds[i] : bounds[i + 1]], **g} for i, g in enumerate(groups)
            ]
            self.opt = cls(spec, **kwargs)
        else:
            self.opt = cls(self.tp, **kwargs)
        self.sched = scheduler_fn(self.opt) if scheduler_fn is not None else None
        self.dtype = _tdtype(dtype)
        self.coeffs = _lbfgs_coeffs([p.shape for p in params])

    def step(self, grads, metric=None):
        torch = T.torch()
        if self.cls_name == "LBFGS":
            def closure():
                self.opt.zero_grad()
                loss = _loss_torch(self.tp, self.coeffs)
                loss.backward()
                return loss

            self.opt.step(closure)
        else:
            for t, g in zip(self.tp, grads):
                grad = torch.tensor(g).to(self.dtype)
                t.grad = grad.to_sparse() if self.cls_name == "SparseAdam" else grad
            self.opt.step()
        if self.sched is not None:
            if metric is None:
                self.sched.step()
            else:
                self.sched.step(metric)
        return [_numpy(t) for t in self.tp]

    def params(self):
        return [_numpy(t) for t in self.tp]


def _jax_step(tx, cls_name, coeffs, jit=True):
    from jax.experimental import sparse

    vg = jax.value_and_grad(lambda p: _loss_jax(p, coeffs))

    def step(g, state, p, metric):
        extra = {} if metric is None else {"value": metric}
        if cls_name == "LBFGS":
            loss, g = vg(p)
            extra = {"value": loss, "value_and_grad_fn": vg}
        elif cls_name == "SparseAdam":
            g = [sparse.BCOO.fromdense(x, nse=x.size) for x in g]
        updates, state = tx.update(g, state, p, **extra)
        return optax.apply_updates(p, updates), state

    return jax.jit(step) if jit else step


def rel_err(jax_traj, torch_traj) -> float:
    worst = 0.0
    for js, ts in zip(jax_traj, torch_traj, strict=True):
        for a, b in zip(js, ts, strict=True):
            a, b = np.asarray(a), np.asarray(b)
            if a.shape != b.shape:
                raise AssertionError(f"shapes differ: {a.shape} vs {b.shape}")
            scale = max(float(np.max(np.abs(b))) if b.size else 0.0, 1e-30)
            diff = float(np.max(np.abs(a.astype(b.dtype) - b))) if b.size else 0.0
            worst = max(worst, diff / scale)
    return worst


def trajectories(
    cls_name: str,
    kwargs: dict,
    dtype: str = "float64",
    steps: int = 20,
    *,
    groups: Optional[list] = None,
    scheduler_fn: Optional[Callable] = None,
    via_from_torch: bool = False,
    convert_at: int = 0,
    metrics: Optional[list] = None,
    tx_fn: Optional[Callable] = None,
    seed: int = 0,
    jit: bool = True,
):
    """``(jax trajectory, torch trajectory)`` of ``steps - convert_at`` steps.

    torch runs ``convert_at`` steps alone; then the jaxupdate side starts from torch's current
    parameters: built by :func:`jaxupdate.interop.from_torch` from the live torch optimizer and
    scheduler (``via_from_torch``; its state and position carry over), by ``tx_fn()``, or by
    the optimizer function for ``cls_name`` with ``kwargs``. ``metrics[k]`` is the value
    passed to ReduceLROnPlateau after step ``k``.
    """
    from jaxupdate.interop.from_torch import from_torch
    from jaxupdate.interop.state_dict import optimizer_fn_for

    params, grads = problem(dtype, steps, _shapes(cls_name), seed)
    run = _TorchRun(cls_name, kwargs, params, dtype, groups, scheduler_fn)
    metric = (lambda k: None) if metrics is None else (lambda k: metrics[k])
    for k in range(convert_at):
        run.step(grads[k], metric(k))
    if via_from_torch:
        tx = from_torch(run.opt, run.sched)
    elif tx_fn is not None:
        tx = tx_fn()
    else:
        tx = optimizer_fn_for(cls_name)(**to_jax_kwargs(kwargs))
    jdt = jnp.dtype(dtype)
    jp = [jnp.asarray(p, jdt) for p in run.params()]
    state = tx.init(jp)
    step = _jax_step(tx, cls_name, run.coeffs, jit)
    t_traj, j_traj = [], []
    for k in range(convert_at, steps):
        m = metric(k)
        jp, state = step([jnp.asarray(g, jdt) for g in grads[k]], state, jp,
                         None if m is None else jnp.asarray(m, jnp.float64))
        j_traj.append([np.asarray(x) for x in jp])
        t_traj.append(run.step(grads[k], m))
    return j_traj, t_traj


def check(cls_name: str, kwargs: dict, dtype: str = "float64", steps: int = 20,
          **kw) -> Result:
    """The run's error and the tolerance it must meet (see the module docstring)."""
    j, t = trajectories(cls_name, kwargs, dtype, steps, **kw)
    err = rel_err(j, t)
    tol = TOL[dtype]
    if dtype in WIDE and err > tol:
        _, t_wide = trajectories(cls_name, kwargs, WIDE[dtype], steps, **kw)
        own = rel_err([[x.astype(t_wide[0][0].dtype) for x in s] for s in t], t_wide)
        tol = max(tol, 10 * own)
    return Result(err, tol)


# --- float32 bit for bit ----------------------------------------------------------------------

#: realistic float32 tensors for the bit-identity runs: a 1,000 x 33 matrix and a vector whose
#: length is not a multiple of 16, so torch's vectorized loops and their scalar tails both run
BIT_SHAPES = ((1000, 33), (100_003,))

#: ``(torch class, kwargs)``: the elementwise optimizers' bit-identity configurations
BIT_CASES = (
    ("SGD", {"lr": 0.1}),
    ("SGD", {"lr": 0.1, "momentum": 0.9, "weight_decay": 1e-2}),
    ("SGD", {"lr": 0.1, "momentum": 0.9, "nesterov": True}),
    ("SGD", {"lr": 0.1, "momentum": 0.9, "dampening": 0.5, "maximize": True}),
    ("Adam", {"lr": 1e-3}),
    ("Adam", {"lr": 1e-3, "weight_decay": 1e-2, "amsgrad": True}),
    ("AdamW", {"lr": 1e-3}),
    ("AdamW", {"lr": 1e-3, "amsgrad": True}),
    ("RMSprop", {"lr": 1e-3}),
    ("RMSprop", {"lr": 1e-3, "centered": True, "momentum": 0.9, "weight_decay": 1e-2}),
    ("Adagrad", {"lr": 1e-2, "lr_decay": 1e-3}),
    ("Adadelta", {"lr": 1.0}),
    ("Adamax", {"lr": 2e-3}),
    ("NAdam", {"lr": 2e-3}),
    ("NAdam", {"lr": 2e-3, "decoupled_weight_decay": True, "weight_decay": 1e-2}),
    ("RAdam", {"lr": 1e-3}),
    ("RAdam", {"lr": 1e-3, "decoupled_weight_decay": True, "weight_decay": 1e-2}),
    ("ASGD", {"lr": 1e-2, "t0": 10}),
    ("Rprop", {"lr": 1e-2}),
    ("Adafactor", {"lr": 1e-2}),
)


def bit_identical_share(
    cls_name: str,
    kwargs: dict,
    steps: int = 100,
    shapes=BIT_SHAPES,
    *,
    wide_updates: bool = True,
    seed: int = 0,
) -> float:
    """Share of float32 parameter elements bit-identical to torch's after ``steps`` steps.

    torch runs ``torch.optim.<cls_name>(..., foreach=False)`` (its ``_single_tensor_``
    functions) on CPU; jaxupdate runs the optimizer under ``jit`` with ``optax.apply_updates``,
    both on the same float32 parameters and gradients. ``wide_updates=True`` passes
    ``tx.update(..., wide_updates=True)``, whose float64 updates ``apply_updates`` lands on
    torch's float32 parameters exactly (see ``jaxupdate.numerics.delta``); ``False`` measures
    the plain float32 updates. Needs ``jax_enable_x64`` (float32 fused multiply-adds are
    emulated in float64); raises otherwise.

    Example::

        >>> from jaxupdate.interop import parity
        >>> parity.bit_identical_share("SGD", {"lr": 0.1}, steps=5)   # doctest: +SKIP
        1.0
    """
    from jaxupdate.interop.state_dict import optimizer_fn_for

    if not jax.config.jax_enable_x64:
        raise RuntimeError(
            "float32 bit identity with torch needs jax_enable_x64 (torch's fused multiply-adds "
            "are emulated in float64): jax.config.update('jax_enable_x64', True)"
        )
    params, grads = problem("float32", steps, shapes, seed)
    cls = getattr(T.torch().optim, cls_name)
    # the _single_tensor_ path where torch offers a choice (Muon has no foreach argument)
    single = {"foreach": False} if "foreach" in inspect.signature(cls).parameters else {}
    run = _TorchRun(cls_name, {**kwargs, **single}, params, "float32")
    tx = optimizer_fn_for(cls_name)(**to_jax_kwargs(kwargs))
    jp = [jnp.asarray(p, jnp.float32) for p in run.params()]
    extra = {"wide_updates": True} if wide_updates else {}

    @jax.jit
    def step(g, state, p):
        updates, state = tx.update(g, state, p, **extra)
        return optax.apply_updates(p, updates), state

    state = tx.init(jp)
    for k in range(steps):
        jp, state = step([jnp.asarray(g, jnp.float32) for g in grads[k]], state, jp)
        run.step(grads[k])
    same = sum(int(np.sum(np.asarray(a) == b)) for a, b in zip(jp, run.params(), strict=True))
    return same / sum(int(np.size(b)) for b in run.params())


# --- schedulers ----------------------------------------------------------------------------------


def scheduler_cases() -> list[tuple[str, str, dict, Callable]]:
    """``(name, optimizer class, optimizer kwargs, scheduler factory)``: every torch scheduler.

    Factories take the torch optimizer. ReduceLROnPlateau is driven by :data:`PLATEAU_METRICS`.
    """
    lrs = T.torch().optim.lr_scheduler
    return [
        ("LambdaLR", "SGD", {"lr": 0.1}, lambda o: lrs.LambdaLR(o, lambda e: 0.95**e)),
        ("MultiplicativeLR", "SGD", {"lr": 0.1},
         lambda o: lrs.MultiplicativeLR(o, lambda e: 0.9)),
        ("StepLR", "SGD", {"lr": 0.1, "momentum": 0.9}, lambda o: lrs.StepLR(o, 3, 0.5)),
        ("MultiStepLR", "Adam", {"lr": 0.05}, lambda o: lrs.MultiStepLR(o, [2, 5, 5], 0.5)),
        ("ConstantLR", "SGD", {"lr": 0.1}, lambda o: lrs.ConstantLR(o, 0.25, 4)),
        ("LinearLR", "AdamW", {"lr": 0.05}, lambda o: lrs.LinearLR(o, 0.2, 1.0, 6)),
        ("ExponentialLR", "RMSprop", {"lr": 0.01}, lambda o: lrs.ExponentialLR(o, 0.9)),
        ("PolynomialLR", "SGD", {"lr": 0.1}, lambda o: lrs.PolynomialLR(o, 8, 2.0)),
        ("CosineAnnealingLR", "Adam", {"lr": 0.05},
         lambda o: lrs.CosineAnnealingLR(o, 7, 0.001)),
        ("CosineAnnealingWarmRestarts", "SGD", {"lr": 0.1},
         lambda o: lrs.CosineAnnealingWarmRestarts(o, 3, 2, 0.01)),
        ("CyclicLR", "SGD", {"lr": 0.1, "momentum": 0.9},
         lambda o: lrs.CyclicLR(o, 0.01, 0.1, step_size_up=3, mode="triangular2")),
        ("OneCycleLR", "Adam", {"lr": 0.05},
         lambda o: lrs.OneCycleLR(o, 0.1, total_steps=30, pct_start=0.3)),
        ("SequentialLR", "SGD", {"lr": 0.1},
         lambda o: lrs.SequentialLR(
             o, [lrs.LinearLR(o, 0.1, 1.0, 3), lrs.ExponentialLR(o, 0.8)], milestones=[3])),
        ("ChainedScheduler", "SGD", {"lr": 0.1},
         lambda o: lrs.ChainedScheduler(
             [lrs.ConstantLR(o, 0.5, 4), lrs.ExponentialLR(o, 0.9)], optimizer=o)),
        ("ReduceLROnPlateau", "SGD", {"lr": 0.1, "momentum": 0.5},
         lambda o: lrs.ReduceLROnPlateau(o, patience=1, factor=0.5, cooldown=1)),
    ]


#: metric sequence for ReduceLROnPlateau: improves, plateaus, improves, plateaus
PLATEAU_METRICS = [1.0, 0.9, 0.9, 0.9, 0.9, 0.8, 0.8, 0.8, 0.8, 0.8] * 3


__all__ = [
    "BIT_CASES",
    "BIT_SHAPES",
    "PLATEAU_METRICS",
    "Result",
    "TOL",
    "bit_identical_share",
    "check",
    "configs",
    "optimizer_table",
    "problem",
    "rel_err",
    "scheduler_cases",
    "trajectories",
]

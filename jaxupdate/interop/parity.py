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

from jaxupdate._described import Parity, declaration
from jaxupdate.interop import _torch as T

TORCH_ONLY_KWARGS = ("foreach", "fused", "capturable", "differentiable")
TOL = {"float64": 1e-10, "complex128": 1e-10, "float32": 2e-6, "complex64": 2e-6}
WIDE = {"float32": "float64", "complex64": "complex128"}
SHAPES = ((3, 4), (5,), (), (2, 3, 2))


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


def dtype_name(dtype) -> str:
    """``"float64"`` for ``"float64"`` or ``torch.float64`` (the harness takes either form)."""
    return dtype if isinstance(dtype, str) else str(dtype).removeprefix("torch.")


def torch_dtype(dtype):
    """The torch dtype for a dtype name or torch dtype."""
    return getattr(T.torch(), dtype_name(dtype))


def wider(dtype):
    """The dtype of torch's reference run for a float32 / complex64 one (float64 /
    complex128), in the form given; ``None`` for other dtypes."""
    wide = WIDE.get(dtype_name(dtype))
    if wide is None or isinstance(dtype, str):
        return wide
    return torch_dtype(wide)


def parity_of(cls_name: str) -> Parity:
    """How the harness runs torch class ``cls_name``: its declaration's ``parity``."""
    decl = declaration(cls_name)
    return decl.parity if decl is not None else Parity()


def shapes_for(cls_name: str) -> tuple:
    """The parameter shapes of ``cls_name``'s problem: its declaration's ``parity.shapes``
    (Muon: matrices; SparseAdam: no 0-d), else :data:`SHAPES`."""
    return parity_of(cls_name).shapes or SHAPES


def jit_for(cls_name: str) -> bool:
    """Whether the harness compiles ``cls_name``'s update (its declaration's ``parity.jit``:
    loops such as L-BFGS's line search or Newton-Schulz run faster compiled)."""
    return parity_of(cls_name).jit


def problem(dtype="float64", steps: int = 30, shapes=SHAPES, seed: int = 0,
            grad_scale: float = 1.0):
    """Initial parameters and a gradient sequence as float64 / complex128 numpy arrays
    (complex for a complex ``dtype``, a name or a torch dtype), gradients times ``grad_scale``.
    """
    rng = np.random.default_rng(seed)
    cplx = dtype_name(dtype).startswith("complex")

    def draw(shape):
        x = rng.standard_normal(shape)
        return x + 1j * rng.standard_normal(shape) if cplx else x

    params = [draw(s) for s in shapes]
    return params, [[grad_scale * draw(s) for s in shapes] for _ in range(steps)]


def to_jax_kwargs(kwargs: dict) -> dict:
    """torch constructor kwargs -> jaxupdate kwargs: kernel choices dropped, tensors (also
    inside tuples) become numpy arrays of their own."""
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
    t = t.detach().clone()
    return (t.float() if t.dtype == T.torch().bfloat16 else t).numpy()  # numpy has no bfloat16


class TorchRun:
    """A torch optimizer stepping on the shared gradient sequence (or L-BFGS on the loss).

    ``torch_cls``: a ``torch.optim`` class or its name; ``dtype``: a name or torch dtype;
    ``groups``: overrides of consecutive param groups; ``scheduler_fn(optimizer)``: a
    scheduler stepped after each step. ``step(grads)`` returns the parameters as numpy arrays.
    """

    def __init__(self, torch_cls, kwargs, params, dtype, groups=None, scheduler_fn=None):
        torch = T.torch()
        cls = getattr(torch.optim, torch_cls) if isinstance(torch_cls, str) else torch_cls
        self.cls_name = cls.__name__
        self.parity = parity_of(self.cls_name)
        self.dtype = torch_dtype(dtype)
        self.tp = [torch.tensor(p).to(self.dtype).requires_grad_() for p in params]
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
        self.coeffs = _lbfgs_coeffs([p.shape for p in params])

    def step(self, grads, metric=None):
        torch = T.torch()
        if self.parity.closure:
            def closure():
                self.opt.zero_grad()
                loss = _loss_torch(self.tp, self.coeffs)
                loss.backward()
                return loss

            self.opt.step(closure)
        else:
            for t, g in zip(self.tp, grads):
                grad = torch.tensor(g).to(self.dtype)
                t.grad = grad.to_sparse() if self.parity.sparse_grads else grad
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
    parity = parity_of(cls_name)

    def step(g, state, p, metric):
        extra = {} if metric is None else {"value": metric}
        if parity.closure:
            loss, g = vg(p)
            extra = {"value": loss, "value_and_grad_fn": vg}
        elif parity.sparse_grads:
            g = [sparse.BCOO.fromdense(x, nse=x.size) for x in g]
        updates, state = tx.update(g, state, p, **extra)
        return optax.apply_updates(p, updates), state

    return jax.jit(step) if jit else step


def torch_trajectory(torch_cls, kwargs, params, grads, dtype, lr_at=None) -> list:
    """torch's trajectory: per step, the parameters as numpy arrays.

    ``lr_at(count)`` optionally sets the group's lr before each step (a schedule's value).
    """
    run = TorchRun(torch_cls, kwargs, params, dtype)
    traj = []
    for count, g in enumerate(grads):
        if lr_at is not None:
            run.opt.param_groups[0]["lr"] = float(lr_at(count))
        traj.append(run.step(g))
    return traj


def max_rel(a, b) -> float:
    """``max |a - b| / max |b|`` (``b`` the reference), 0 for empty arrays."""
    a, b = np.asarray(a), np.asarray(b)
    if a.shape != b.shape:
        raise AssertionError(f"shapes differ: {a.shape} vs {b.shape}")
    if not b.size:
        return 0.0
    scale = max(float(np.max(np.abs(b))), 1e-30)
    return float(np.max(np.abs(a.astype(b.dtype) - b))) / scale


def rel_err(jax_traj, torch_traj) -> float:
    """The largest :func:`max_rel` over steps and parameters (each relative to its scale)."""
    worst = 0.0
    for js, ts in zip(jax_traj, torch_traj, strict=True):
        for a, b in zip(js, ts, strict=True):
            worst = max(worst, max_rel(a, b))
    return worst


def tolerance(err: float, tol: float, dtype, torch_traj, wide_torch_traj: Callable) -> float:
    """``tol``, or for a float32 / complex64 run that misses it, ten times torch's own error
    against its float64 run (``wide_torch_traj()``, the same run in :func:`wider` dtype).

    Why ten: where a configuration amplifies rounding (RMSprop's centered ``sqrt(v - m*m)``
    near zero, Adagrad's accumulator near a zero parameter), XLA's fused multiply-adds where
    torch's kernels round twice, and torch's vectorized CPU ``sqrt`` (not correctly rounded:
    one ulp off for 17% of float32 elements on AVX512), turn one-ulp differences into 1e-5
    within 40 steps for torch itself. The criterion still fails any real error in the rule.
    """
    if wider(dtype) is None or err <= tol:
        return tol
    t_wide = wide_torch_traj()
    own = rel_err([[x.astype(t_wide[0][0].dtype) for x in s] for s in torch_traj], t_wide)
    return max(tol, 10 * own)


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

    params, grads = problem(dtype, steps, shapes_for(cls_name), seed)
    run = TorchRun(cls_name, kwargs, params, dtype, groups, scheduler_fn)
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
    wide = lambda: trajectories(cls_name, kwargs, wider(dtype), steps, **kw)[1]  # noqa: E731
    return Result(err, tolerance(err, TOL[dtype], dtype, t, wide))


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
    run = TorchRun(cls_name, {**kwargs, **single}, params, "float32")
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
    "SHAPES",
    "TOL",
    "TORCH_ONLY_KWARGS",
    "TorchRun",
    "bit_identical_share",
    "check",
    "configs",
    "dtype_name",
    "jit_for",
    "max_rel",
    "optimizer_table",
    "parity_of",
    "problem",
    "rel_err",
    "scheduler_cases",
    "shapes_for",
    "tolerance",
    "to_jax_kwargs",
    "torch_dtype",
    "torch_trajectory",
    "trajectories",
    "wider",
]

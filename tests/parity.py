"""Side-by-side runs of a torch optimizer and its jaxupdate twin on the same gradients.

torch is the oracle. Both sides start from the same parameters and receive the same gradient
sequence (random, so a rounding difference cannot be amplified by a loss landscape and parity
is measured on the update rule itself); the parameters are compared after every step.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import torch

import jaxupdate as ju

# Agreement demanded, as max |jax - torch| / max |torch| over the whole trajectory.
# float64: rounding only. float32: under jit XLA contracts multiply-adds into FMAs (torch's CPU
# kernels round after each in-place op), so the two drift apart by a few ulps over tens of steps.
TOL = {
    torch.float64: 1e-12,
    torch.complex128: 1e-12,
    torch.float32: 2e-6,
    torch.complex64: 2e-6,
}

JAX_DTYPE = {
    torch.float64: jnp.float64,
    torch.float32: jnp.float32,
    torch.complex128: jnp.complex128,
    torch.complex64: jnp.complex64,
    torch.float16: jnp.float16,
    torch.bfloat16: jnp.bfloat16,
}

# Parameter shapes of the default problem: a matrix, a vector, a 0-d scalar and a 3-d tensor.
SHAPES = ((3, 4), (5,), (), (2, 3, 2))

# Arguments of torch's constructors that choose a torch kernel, not the mathematics.
TORCH_ONLY_KWARGS = ("foreach", "fused", "capturable", "differentiable")


def problem(dtype=torch.float64, steps=30, shapes=SHAPES, seed=0, grad_scale=1.0):
    """Initial parameters and a gradient sequence, as float64/complex128 numpy arrays."""
    rng = np.random.default_rng(seed)
    cplx = dtype.is_complex

    def draw(shape):
        x = rng.standard_normal(shape)
        if cplx:
            x = x + 1j * rng.standard_normal(shape)
        return x

    params = [draw(s) for s in shapes]
    grads = [[grad_scale * draw(s) for s in shapes] for _ in range(steps)]
    return params, grads


def to_jax_kwargs(kwargs):
    """torch constructor kwargs -> jaxupdate kwargs (tensors become numpy arrays)."""
    out = {}
    for k, v in kwargs.items():
        if k in TORCH_ONLY_KWARGS:
            continue
        if isinstance(v, torch.Tensor):
            v = v.detach().cpu().numpy()
        elif isinstance(v, tuple):
            v = tuple(x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else x for x in v)
        out[k] = v
    return out


def _numpy(t):
    t = t.detach().clone()
    return (t.float() if t.dtype == torch.bfloat16 else t).numpy()  # numpy has no bfloat16


def run_torch(torch_cls, kwargs, params, grads, dtype, lr_at=None):
    """torch trajectory: list (per step) of lists of numpy parameters.

    ``lr_at(count)`` optionally sets the group's lr before each step (a schedule's value).
    """
    tp = [torch.tensor(p).to(dtype).requires_grad_() for p in params]
    opt = torch_cls(tp, **kwargs)
    traj = []
    for count, g in enumerate(grads):
        if lr_at is not None:
            opt.param_groups[0]["lr"] = float(lr_at(count))
        for t, gg in zip(tp, g):
            t.grad = torch.tensor(gg).to(dtype)
        opt.step()
        traj.append([_numpy(t) for t in tp])
    return traj


def run_jax(tx, params, grads, dtype, jit=True, container=list):
    """jaxupdate trajectory on the same data; the update (and apply) is jitted by default."""
    jdt = JAX_DTYPE[dtype]
    jp = container(jnp.asarray(p, jdt) for p in params)
    state = tx.init(jp)

    def step(g, state, p):
        updates, state = tx.update(g, state, p)
        return ju.apply_updates(p, updates), state

    if jit:
        step = jax.jit(step)
    traj = []
    for g in grads:
        jp, state = step(container(jnp.asarray(x, jdt) for x in g), state, jp)
        traj.append([np.asarray(x) for x in jax.tree.leaves(jp)])
    return traj


def rel_err(jax_traj, torch_traj):
    """Largest max|a - b| / max|b| over steps and leaves (relative to the leaf's scale)."""
    worst = 0.0
    for js, ts in zip(jax_traj, torch_traj, strict=True):
        for a, b in zip(js, ts, strict=True):
            assert a.shape == b.shape, (a.shape, b.shape)
            scale = max(float(np.max(np.abs(b))) if b.size else 0.0, 1e-30)
            diff = float(np.max(np.abs(a.astype(b.dtype) - b))) if b.size else 0.0
            worst = max(worst, diff / scale)
    return worst


WIDE = {torch.float32: torch.float64, torch.complex64: torch.complex128}


def assert_parity(torch_cls, ju_fn, kwargs, dtype=torch.float64, steps=30, jit=True, **prob):
    """Runs both optimizers side by side and asserts agreement at every step.

    float64: TOL (rounding only). float32: TOL, or, where the configuration itself amplifies
    rounding chaotically (RMSprop's centered variance ``sqrt(v - m*m)`` near zero with
    alpha=0.5, momentum feeding it back), ten times torch's own float32 error against its
    float64 run. Why ten: under jit XLA contracts ``v - m*m`` and similar into fused
    multiply-adds where torch's kernels round twice (measured: 5.6% of elements of ``s - m*m``
    differ by an ulp), and such configurations turn one-ulp differences into 1e-5 within 40
    steps for torch itself. Also: torch's vectorized CPU ``sqrt`` is not correctly rounded
    (measured on AVX512: one ulp off for 17% of float32 elements), which Adagrad's
    accumulator amplifies when a parameter passes near zero. The criterion still fails any
    real error in the update rule.
    """
    params, grads = problem(dtype, steps, **prob)
    t_traj = run_torch(torch_cls, kwargs, params, grads, dtype)
    j_traj = run_jax(ju_fn(**to_jax_kwargs(kwargs)), params, grads, dtype, jit=jit)
    err = rel_err(j_traj, t_traj)
    tol = TOL[dtype]
    if dtype in WIDE and err > tol:
        t_wide = run_torch(torch_cls, kwargs, params, grads, WIDE[dtype])
        own = rel_err([[x.astype(WIDE_NP[dtype]) for x in s] for s in t_traj], t_wide)
        tol = max(tol, 10 * own)
    assert err <= tol, f"{ju_fn.__name__}({kwargs}) {dtype}: rel err {err:.3e} > {tol:.1e}"
    return err


WIDE_NP = {torch.float32: np.float64, torch.complex64: np.complex128}

"""SparseAdam: Adam on the entries present in sparse (BCOO) gradients, exactly as torch."""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.experimental import sparse

from jaxupdate._described import Parity, state_converters, torch_optimizer
from jaxupdate._hparams import is_number, is_schedule, normalize, resolve, scalar_dtype
from jaxupdate.numerics import bias_correction, cast
from jaxupdate.optim._base import check, check_betas
from jaxupdate.transforms.common import init_count

_DENSE_GRAD_ERROR = "SparseAdam does not support dense gradients, please consider Adam instead"


class SparseAdamState(NamedTuple):
    """``count``: update calls (for schedules); ``step``: torch's per-parameter step (int32 per
    leaf, incremented only for leaves that received a gradient); ``exp_avg``, ``exp_avg_sq``:
    dense moments shaped like the parameters, as torch keeps them."""

    # one block, so the optimizer's one step count lives here (see transforms.step_count)
    holds_step_count = True
    count: jax.Array
    step: Any
    exp_avg: Any
    exp_avg_sq: Any


def _is_sparse(x) -> bool:
    return isinstance(x, sparse.JAXSparse)


def _check_params(params) -> None:
    """torch's constructor checks, with its [group, index] positions (one group here)."""
    leaves = jax.tree.leaves(params, is_leaf=_is_sparse)
    sparse_at = [[0, i] for i, x in enumerate(leaves) if _is_sparse(x)]
    if sparse_at:
        raise ValueError(
            f"Sparse params at indices {sparse_at}: SparseAdam requires dense parameter tensors"
        )
    complex_at = [[0, i] for i, x in enumerate(leaves) if jnp.iscomplexobj(x)]
    if complex_at:
        raise ValueError(
            f"Complex params at indices {complex_at}: SparseAdam does not support complex "
            "parameters"
        )


def _coalesce(g: sparse.BCOO, dtype, maximize: bool):
    """torch's ``(-grad if maximize else grad).coalesce()``, with static shapes.

    Returns ``(rows, values)``: ``nse`` slots holding the distinct flattened sparse indices in
    increasing order, each with the sum of its values (summed in the order the entries come,
    as torch's coalesce after its stable sort), then unused slots whose row is the
    out-of-range sentinel ``prod(sparse shape)``. Entries with out-of-range indices (BCOO's
    padding convention) are dropped.
    """
    if g.n_batch:
        g = sparse.bcoo_update_layout(g, n_batch=0)
    data = g.data.astype(dtype)
    if maximize:
        data = -data
    sparse_shape = g.shape[: g.n_sparse]
    n_rows = math.prod(sparse_shape)
    itype = jnp.int64 if jax.config.jax_enable_x64 else jnp.int32
    idx = g.indices.astype(itype)
    flat = jnp.zeros(idx.shape[0], itype)
    for k, size in enumerate(sparse_shape):
        flat = flat * size + idx[:, k]
    inside = jnp.all((idx >= 0) & (idx < jnp.asarray(sparse_shape, itype)), axis=1)
    flat = jnp.where(inside, flat, n_rows)
    order = jnp.argsort(flat, stable=True)
    flat, data = flat[order], data[order]
    first = jnp.concatenate([jnp.ones((1,), bool), flat[1:] != flat[:-1]])
    slot = jnp.cumsum(first) - 1
    values = jnp.zeros_like(data).at[slot].add(data)
    rows = jnp.full(flat.shape, n_rows, itype).at[slot].set(flat)
    return rows, values


@torch_optimizer(
    "SparseAdam",
    ("step", "exp_avg", "exp_avg_sq"),
    state=SparseAdamState,
    # torch's to_sparse needs ndim >= 1: no 0-d parameter in the parity problem
    parity=Parity(shapes=((3, 4), (5,), (2, 3, 2)), sparse_grads=True),
)
def sparse_adam(
    lr=1e-3,
    betas=(0.9, 0.999),
    eps=1e-8,
    maximize: bool = False,
) -> optax.GradientTransformationExtraArgs:
    r"""torch.optim.SparseAdam: Adam restricted to the entries present in sparse gradients.

    Gradients are ``jax.experimental.sparse.BCOO`` arrays shaped like their parameters, e.g.
    the row-sparse gradient of an embedding table (``n_sparse=1``, one dense row per looked-up
    index; see ``examples/sparse_embedding.py``) or an element-sparse one. Duplicate indices
    are summed first, as torch's ``coalesce``; entries with out-of-range indices (BCOO's
    padding) are ignored. Only the moments and parameters at the indices present change.

    Algorithm (torch's ``_functional.sparse_adam``), per parameter with a gradient::

        step += 1                                  # per parameter, as torch's state["step"]
        g = coalesce(-grad if maximize else grad)  # indices I, values g_I
        if g has no entries: continue              # (step was still incremented)
        m_old, v_old = m[I], v[I]
        dm = (g_I - m_old) * (1 - beta1);  m[I] = m_old + dm
        dv = (g_I * g_I - v_old) * (1 - beta2);  v[I] = v_old + dv
        numer = dm + m_old
        denom = sqrt(dv + v_old) + eps
        step_size = lr * sqrt(1 - beta2**step) / (1 - beta1**step)
        param[I] = param[I] + (-step_size) * (numer / denom)

    The returned update is dense (zero outside ``I``), so ``optax.apply_updates`` lands on
    torch's ``param[I] + delta`` exactly.

    Args (torch's names, order and defaults; ``params`` does not apply):
      lr: learning rate, default ``1e-3``, must be ``> 0``; a float, 1-element array or
        schedule (a function of the number of update calls).
      betas: ``(beta1, beta2)``, default ``(0.9, 0.999)``, each in ``[0, 1)``.
      eps: added to the denominator, default ``1e-8``, must be ``> 0``.
      maximize: maximize the objective, default ``False``.

    Leaves: a ``BCOO`` gradient (a ``BCSR`` is converted) updates its parameter; a ``None``
    gradient (torch's ``p.grad is None``) leaves the parameter, its moments and its ``step``
    untouched (its update is zeros); a dense gradient raises torch's ``RuntimeError("SparseAdam
    does not support dense gradients, please consider Adam instead")``. Sparse or complex
    parameters raise torch's ``ValueError`` at ``init`` (torch: in its constructor). For the
    dense parameters of a model, use another optimizer (e.g. ``adam``), as with torch.

    Example::

        >>> import jax.numpy as jnp, optax
        >>> from jax.experimental import sparse
        >>> from jaxupdate.optim.sparse_adam import sparse_adam
        >>> params = {"emb": jnp.zeros((10, 3))}
        >>> tx = sparse_adam(lr=1e-2)
        >>> state = tx.init(params)
        >>> rows = jnp.array([[2], [7], [2]])           # row 2 looked up twice
        >>> g = sparse.BCOO((jnp.ones((3, 3)), rows), shape=(10, 3))
        >>> updates, state = tx.update({"emb": g}, state)
        >>> params = optax.apply_updates(params, updates)   # rows 2 and 7 move by -1e-2
    """
    lr_n = normalize(lr, "lr")  # torch's "Tensor lr must be 1-element"
    check(lr_n, lambda v: 0.0 < v, f"Invalid learning rate: {lr}")
    eps_n = normalize(eps, "eps")
    check(eps_n, lambda v: 0.0 < v, f"Invalid epsilon value: {eps}")
    beta1, beta2 = check_betas(betas, same_kind=False)  # torch's SparseAdam: float + tensor ok

    def init_fn(params):
        _check_params(params)
        return SparseAdamState(
            count=init_count(),
            step=jax.tree.map(lambda _: jnp.zeros([], jnp.int32), params),
            exp_avg=jax.tree.map(jnp.zeros_like, params),
            exp_avg_sq=jax.tree.map(jnp.zeros_like, params),
        )

    def update_fn(updates, state: SparseAdamState, params=None, **extra_args):
        del params, extra_args
        treedef = jax.tree.structure(state.exp_avg)
        grads = treedef.flatten_up_to(updates)
        lr_v = resolve(lr_n, state.count)  # (an array lr is used in its own dtype, see below)
        b1 = resolve(beta1, state.count)
        b2 = resolve(beta2, state.count)
        eps_v = resolve(eps_n, state.count)
        steps, ms, vs = (
            treedef.flatten_up_to(x) for x in (state.step, state.exp_avg, state.exp_avg_sq)
        )
        out_u, out_step, out_m, out_v = [], [], [], []
        for g, step, m, v in zip(grads, steps, ms, vs):
            if g is None:
                out_u.append(jnp.zeros_like(m))
                out_step.append(step)
                out_m.append(m)
                out_v.append(v)
                continue
            if isinstance(g, sparse.BCSR):
                g = g.to_bcoo()
            if not isinstance(g, sparse.BCOO):
                raise RuntimeError(_DENSE_GRAD_ERROR)
            if tuple(g.shape) != tuple(m.shape):
                raise ValueError(
                    f"sparse gradient of shape {tuple(g.shape)} for a parameter of shape "
                    f"{tuple(m.shape)}"
                )
            step = step + 1
            out_step.append(step)
            if g.data.size == 0:  # torch: "Skip update for empty grad" (after step += 1)
                out_u.append(jnp.zeros_like(m))
                out_m.append(m)
                out_v.append(v)
                continue
            rows, values = _coalesce(g, m.dtype, maximize)
            n_rows = math.prod(g.shape[: g.n_sparse])
            row_shape = (n_rows,) + tuple(m.shape[g.n_sparse :])
            m2, v2 = m.reshape(row_shape), v.reshape(row_shape)
            old_m = m2.at[rows].get(mode="fill", fill_value=0)
            old_v = v2.at[rows].get(mode="fill", fill_value=0)
            dm = (values - old_m) * cast(1.0 - b1, values)
            dv = (values * values - old_v) * cast(1.0 - b2, values)
            m2 = m2.at[rows].set(old_m + dm, mode="drop")
            v2 = v2.at[rows].set(old_v + dv, mode="drop")
            numer = dm + old_m
            denom = jnp.sqrt(dv + old_v) + cast(eps_v, dv)
            step_f = jnp.asarray(step, scalar_dtype())
            sqrt_bc2 = jnp.sqrt(bias_correction(b2, step_f))
            bc1 = bias_correction(b1, step_f)
            if is_number(lr_n) or is_schedule(lr_n):
                step_size = lr_v * sqrt_bc2 / bc1
            else:
                # torch keeps a Tensor lr as a 0-d tensor here: the step size is computed in
                # the lr's dtype (float32 for torch.tensor(1e-3))
                lr_t = jnp.asarray(lr_n)
                step_size = lr_t * cast(sqrt_bc2, lr_t) / cast(bc1, lr_t)
            delta = cast(-step_size, numer) * (numer / denom)
            u2 = jnp.zeros(row_shape, m.dtype).at[rows].set(delta, mode="drop")
            out_u.append(u2.reshape(m.shape))
            out_m.append(m2.reshape(m.shape))
            out_v.append(v2.reshape(m.shape))
        new_state = SparseAdamState(
            count=optax.safe_increment(state.count),
            step=treedef.unflatten(out_step),
            exp_avg=treedef.unflatten(out_m),
            exp_avg_sq=treedef.unflatten(out_v),
        )
        return treedef.unflatten(out_u), new_state

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


# --------------------------------------------------------------------------------------------
# torch's state_dict entries (jaxupdate.interop.state_dict; torch imported when they run)
# --------------------------------------------------------------------------------------------


def sparse_adam_state_to_torch(state: SparseAdamState, leaves, count: int) -> dict:
    """``state`` as torch's SparseAdam state entries, ``{parameter position: entry}``.

    torch's SparseAdam keeps its own ``step`` (a Python int) per parameter, made at its first
    gradient: a parameter that never had one has no state. Used by
    :func:`jaxupdate.interop.torch_state_dict`.
    """
    from jaxupdate.interop import _torch as T

    st = state
    steps, m, v = (jax.tree.leaves(x) for x in (st.step, st.exp_avg, st.exp_avg_sq))
    out = {}
    for i, (s, a, b) in enumerate(zip(steps, m, v, strict=True)):
        if int(s) > 0:
            out[i] = {
                "step": int(s),
                "exp_avg": T.to_tensor(a),
                "exp_avg_sq": T.to_tensor(b),
            }
    return out


def sparse_adam_state_from_torch(state: SparseAdamState, entries, leaves, step) -> SparseAdamState:
    """``state`` filled from torch's SparseAdam per-parameter entries (empty: no gradient yet).

    The update count is ``step`` or the largest per-parameter step. Raises ``ValueError`` for
    another number of parameters or buffers of another shape. Used by
    :func:`jaxupdate.interop.load_torch_state_dict`.
    """
    from jaxupdate.interop import _torch as T

    st = state
    treedef = jax.tree.structure(st.exp_avg)
    steps, m, v = (list(jax.tree.leaves(x)) for x in (st.step, st.exp_avg, st.exp_avg_sq))
    if len(entries) != len(m):
        raise ValueError(f"SparseAdam: {len(entries)} parameters in the state_dict, {len(m)} here")
    for i, e in enumerate(entries):
        if not e:
            continue
        for key, buf in (("exp_avg", m), ("exp_avg_sq", v)):
            a = T.to_numpy(e[key])
            if a.shape != tuple(buf[i].shape):
                raise ValueError(
                    f"SparseAdam {key} of parameter {i}: shape {a.shape}, "
                    f"expected {tuple(buf[i].shape)}"
                )
            buf[i] = jnp.asarray(a, buf[i].dtype)
        steps[i] = jnp.asarray(
            int(float(np.asarray(T.to_numpy(e["step"])).reshape(()))), steps[i].dtype
        )
    return st._replace(
        count=jnp.asarray(
            max([0] + [int(s) for s in steps]) if step is None else step, st.count.dtype
        ),
        step=jax.tree.unflatten(jax.tree.structure(st.step), steps),
        exp_avg=jax.tree.unflatten(treedef, m),
        exp_avg_sq=jax.tree.unflatten(treedef, v),
    )


# the state is not per-parameter buffers: torch_state_dict / load_torch_state_dict call these
state_converters(sparse_adam, export=sparse_adam_state_to_torch, load=sparse_adam_state_from_torch)

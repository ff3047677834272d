"""float32 parameters bit-identical to torch's, step after step (CPU, ``jax_enable_x64``).

torch's CPU kernels round in a particular way (fused multiply-adds in ``add_(alpha=)``,
``lerp_``, ``addcmul_``; true divisions), and jaxupdate reproduces each of them
(``jaxupdate.numerics``). Two things are needed to see torch's float32 numbers bit for bit:

* ``jax_enable_x64``: the fused multiply-adds are emulated in float64;
* ``tx.update(..., wide_updates=True)``: the update ``new - param`` is returned in float64,
  where it is exact, so ``optax.apply_updates`` lands on torch's ``new`` (a float32 update
  would round a second time where the step is larger than the result).

This trains SGD with momentum and AdamW on the same float32 gradients in both frameworks and
prints the share of identical elements (1,000 x 33 and 100,003 elements, 100 steps). SGD must
be 100%; AdamW is 100% where torch's float32 ``sqrt`` is correctly rounded (on CPUs where
torch's MKL ``vsSqrt`` is not, about 98.6%: README, Numerics). Exits 1 if SGD is not exact.

Run: ``python examples/float32_bit_identical.py``.
"""

from __future__ import annotations

import sys

import jax

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
import torch  # noqa: E402

import jaxupdate as ju  # noqa: E402

SHAPES = ((1000, 33), (100_003,))
STEPS = 100


def share(torch_opt_cls, tx, kwargs, seed=0):
    rng = np.random.default_rng(seed)
    params = [rng.standard_normal(s).astype(np.float32) for s in SHAPES]
    tp = [torch.tensor(p, requires_grad=True) for p in params]
    opt = torch_opt_cls(tp, foreach=False, **kwargs)
    jp = [jnp.asarray(p) for p in params]
    state = tx.init(jp)

    @jax.jit
    def step(grads, state, params):
        updates, state = tx.update(grads, state, params, wide_updates=True)
        return optax.apply_updates(params, updates), state

    for _ in range(STEPS):
        grads = [rng.standard_normal(s).astype(np.float32) for s in SHAPES]
        for t, g in zip(tp, grads):
            t.grad = torch.tensor(g)
        opt.step()
        jp, state = step([jnp.asarray(g) for g in grads], state, jp)
    same = sum(int((np.asarray(a) == t.detach().numpy()).sum()) for a, t in zip(jp, tp))
    return same / sum(p.size for p in params)


def main() -> int:
    sgd_kw = dict(lr=0.1, momentum=0.9, weight_decay=1e-2)
    adamw_kw = dict(lr=1e-3, weight_decay=1e-2)
    s = share(torch.optim.SGD, ju.sgd(**sgd_kw), sgd_kw)
    a = share(torch.optim.AdamW, ju.adamw(**adamw_kw), adamw_kw)
    print(f"SGD(momentum, weight_decay): {s:.4%} of float32 elements bit-identical to torch")
    print(f"AdamW:                       {a:.4%} (100% where torch's float32 sqrt is exact)")
    print(f"share of SGD elements that differ from torch: {1 - s:.3e}")
    return 0 if s == 1.0 else 1


if __name__ == "__main__":
    sys.exit(main())

"""Muon as torch.optim.Muon: orthogonalized momentum by a bfloat16 Newton-Schulz iteration."""

from __future__ import annotations

from typing import Optional

import optax

from jaxupdate._described import Parity, torch_optimizer
from jaxupdate._hparams import normalize
from jaxupdate.optim._base import check
from jaxupdate.transforms import TorchMuonState
from jaxupdate.transforms.checks import reject_complex, require_matrices
from jaxupdate.transforms.common import counted_chain
from jaxupdate.transforms.muon import (
    DEFAULT_A,
    DEFAULT_B,
    DEFAULT_C,
    DEFAULT_NS_STEPS,
    EPS,
    scale_by_torch_muon,
    torch_muon_update,
)
from jaxupdate.transforms.validate import validate_inputs


@torch_optimizer(
    "Muon",
    ("momentum_buffer",),
    state=TorchMuonState,
    # Newton-Schulz runs faster compiled; torch's Muon takes matrices only
    parity=Parity(jit=True, shapes=((3, 4), (5, 3), (4, 4))),
)
def muon(
    lr=1e-3,
    weight_decay=0.1,
    momentum=0.95,
    nesterov: bool = True,
    ns_coefficients=(DEFAULT_A, DEFAULT_B, DEFAULT_C),
    eps=EPS,
    ns_steps: int = DEFAULT_NS_STEPS,
    adjust_lr_fn: Optional[str] = None,
) -> optax.GradientTransformationExtraArgs:
    r"""torch.optim.Muon as a pure transformation (matrices only).

    Algorithm (torch's ``_single_tensor_muon``), for each step, per ``A x B`` parameter::

        buf = lerp(buf, g, 1 - momentum)                   # buf starts at zero
        u = lerp(g, buf, momentum) if nesterov else buf
        O = NS(u)                                          # Newton-Schulz in bfloat16, below
        param = param * (1 - lr * weight_decay)
        param = param - lr * ratio * O
        ratio = sqrt(max(1, A / B))      if adjust_lr_fn in (None, "original")
                0.2 * sqrt(max(A, B))    if adjust_lr_fn == "match_rms_adamw"

    ``NS`` (torch's ``_zeropower_via_newtonschulz``) casts ``u`` to bfloat16, transposes it
    when ``A > B``, divides by ``max(norm(u), eps)`` and iterates ``ns_steps`` times
    ``G = X @ X.T; X = a * X + (b * G + c * G @ G) @ X`` with ``(a, b, c) = ns_coefficients``,
    every product accumulated in float32 and rounded to bfloat16, as torch's CPU kernels do.
    This is torch's Muon, not ``optax.contrib.muon`` (different momentum form, scaling, and
    no bfloat16 iteration).

    Args (torch's names, order and defaults; ``params`` does not apply):
      lr: learning rate, default ``1e-3``; a float, a 1-element array or a schedule
        ``count -> lr`` (``count`` = updates already applied).
      weight_decay: decoupled weight decay ``param *= 1 - lr * weight_decay``, default ``0.1``.
      momentum: momentum factor, default ``0.95``.
      nesterov: Nesterov momentum, default ``True``.
      ns_coefficients: ``(a, b, c)`` of the quintic iteration, default
        ``(3.4445, -4.7750, 2.0315)``.
      eps: lower bound of the norm that normalizes the input of the iteration, default ``1e-7``.
      ns_steps: number of Newton-Schulz iterations (a Python int below 100), default ``5``.
      adjust_lr_fn: ``None`` (= ``"original"``), ``"original"`` or ``"match_rms_adamw"``.

    Every leaf must be a matrix (torch's ``ValueError``, raised at ``init``; use
    ``optax.multi_transform`` to give other leaves another optimizer); complex leaves raise
    torch's ``RuntimeError``. ``update`` needs ``params``.

    Example::

        >>> import jax.numpy as jnp, jaxupdate as ju
        >>> from jaxupdate.optim.muon import muon
        >>> tx = muon(lr=0.02)
        >>> params = {"w": jnp.eye(2)}
        >>> state = tx.init(params)
        >>> updates, state = tx.update({"w": jnp.eye(2)}, state, params)
        >>> params = ju.apply_updates(params, updates)
    """
    lr_n = normalize(lr, "lr")
    check(lr_n, lambda v: 0.0 <= v, f"Learning rate should be >= 0 but is: {lr}")
    momentum_n = normalize(momentum, "momentum")
    check(momentum_n, lambda v: 0.0 <= v, f"momentum should be >= 0 but is: {momentum}")
    weight_decay_n = normalize(weight_decay, "weight_decay")
    check(
        weight_decay_n, lambda v: 0.0 <= v, f"weight decay should be >= 0 but is: {weight_decay}"
    )
    if adjust_lr_fn is not None and adjust_lr_fn not in ["original", "match_rms_adamw"]:
        raise ValueError(f"Adjust learning rate function {adjust_lr_fn} is not supported")
    # torch checks these two on the first step(); a transformation reports them when built
    if ns_steps >= 100:
        raise ValueError("Number of steps must be less than 100 for computational efficiency")
    if len(ns_coefficients) != 3:
        raise ValueError("Coefficients must be a tuple of exactly 3 values")
    coefficients = tuple(
        normalize(x, f"ns_coefficients[{i}]") for i, x in enumerate(ns_coefficients)
    )
    eps_n = normalize(eps, "eps")
    return validate_inputs(counted_chain(
        require_matrices("Muon"),
        reject_complex("Muon"),
        scale_by_torch_muon(momentum_n, nesterov, coefficients, eps_n, int(ns_steps)),
        torch_muon_update(lr_n, weight_decay_n, adjust_lr_fn),
    ))

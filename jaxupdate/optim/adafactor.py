"""Adafactor as torch.optim.Adafactor: factored second moments, relative step size, clipping."""

from __future__ import annotations

import optax

from jaxupdate._described import Parity, torch_optimizer
from jaxupdate._hparams import normalize
from jaxupdate.optim._base import check
from jaxupdate.transforms import TorchAdafactorState
from jaxupdate.transforms.adafactor import (
    scale_by_torch_factored_rms,
    torch_adafactor_update,
)
from jaxupdate.transforms.checks import reject_complex
from jaxupdate.transforms.common import counted_chain
from jaxupdate.transforms.common import maximize as maximize_block
from jaxupdate.transforms.validate import validate_inputs


def _check_float(value, name: str, ok, message: str):
    v = normalize(value, name)
    check(v, ok, message.format(value))
    return v


@torch_optimizer(
    "Adafactor",
    ("step", "row_var", "col_var", "variance"),
    state=TorchAdafactorState,
    parity=Parity(jit=True),  # its per-leaf factored loops run faster compiled
)
def adafactor(
    lr=1e-2,
    beta2_decay=-0.8,
    eps=(None, 1e-3),
    d=1.0,
    weight_decay=0.0,
    *,
    maximize: bool = False,
) -> optax.GradientTransformationExtraArgs:
    r"""torch.optim.Adafactor as a pure transformation.

    Algorithm (torch's ``_single_tensor_adafactor``), for each step ``t = 1, 2, ...``, per
    parameter, scalars in Python (double) precision::

        g = -grad if maximize else grad
        w = t ** beta2_decay                                 # 1 - beta2_t
        rho = min(lr, 1 / sqrt(t))
        alpha = max(eps2, norm(param) / sqrt(param.size)) * rho
        if weight_decay != 0: param = param * (1 - lr * weight_decay)
        if g.ndim >= 2:                                      # factored over the last two axes
            row_var = lerp(row_var, norm(g, axis=-1) ** 2 / g.shape[-1], w)
            col_var = lerp(col_var, norm(g, axis=-2) ** 2 / g.shape[-2], w)
            v = row_var * col_var / max(mean(row_var, axis=-2), eps1)
        else:
            variance = lerp(variance, g * g, w); v = variance
        U = g / sqrt(max(v, eps1 ** 2))
        param = param - alpha / max(1, rms(U) / d) * U

    Unlike ``optax.adafactor`` (which factors only large matrices, puts eps inside the
    factors and multiplies by an external learning rate), this is torch's variant: ``lr``
    only caps the relative step size ``rho`` and scales the weight decay.

    Args (torch's names, order and defaults; ``params`` and ``foreach`` do not apply):
      lr: maximum relative step size and weight-decay scale, default ``1e-2``; a float, a
        1-element array or a schedule ``count -> lr`` (``count`` = updates already applied).
      beta2_decay: exponent of ``1 - beta2_t = t ** beta2_decay``, default ``-0.8``.
      eps: ``(eps1, eps2)``, default ``(None, 1e-3)``; ``eps1`` bounds the variance estimate
        from below (``None``: the machine epsilon of the first parameter's dtype, as torch),
        ``eps2`` bounds the parameter RMS used for the step size.
      d: clipping threshold of the update's RMS, default ``1.0``.
      weight_decay: decoupled weight decay ``param *= 1 - lr * weight_decay``, default ``0``.
      maximize: maximize the objective instead of minimizing it.

    Complex parameters raise torch's ``RuntimeError`` (at ``init``). ``update`` needs
    ``params``.

    Example::

        >>> import jax.numpy as jnp, jaxupdate as ju
        >>> from jaxupdate.optim.adafactor import adafactor
        >>> tx = adafactor(lr=1e-2)
        >>> params = {"w": jnp.ones((2, 3)), "b": jnp.ones(3)}
        >>> state = tx.init(params)
        >>> grads = {"w": jnp.ones((2, 3)), "b": jnp.ones(3)}
        >>> updates, state = tx.update(grads, state, params)
        >>> ju.apply_updates(params, updates)["b"]   # 1 - max(1e-3, rms(b)) * min(lr, 1)
        Array([0.99, 0.99, 0.99], dtype=float32)
    """
    lr_n = _check_float(lr, "lr", lambda v: 0.0 <= v, "Learning rate should be >= 0 but is: {}")
    beta2_decay_n = _check_float(
        beta2_decay, "beta2_decay", lambda v: 0.0 >= v, "beta2_decay should be <= 0 but is: {}"
    )
    if not isinstance(eps, (tuple, list)) or len(eps) != 2:
        raise ValueError(f"eps must be a pair (eps1, eps2), got {eps!r}")
    eps1, eps2 = eps
    if eps1 is not None:
        eps1 = _check_float(
            eps1, "eps1", lambda v: 0.0 <= v, "epsilon1 should be >= 0 but is: {}"
        )
    eps2_n = _check_float(eps2, "eps2", lambda v: 0.0 <= v, "epsilon2 should be >= 0 but is: {}")
    d_n = _check_float(
        d, "d", lambda v: 1.0 <= v, "Clipping threshold d should be >= 1 but is: {}"
    )
    weight_decay_n = _check_float(
        weight_decay,
        "weight_decay",
        lambda v: 0.0 <= v,
        "weight_decay should be >= 0 but is: {}",
    )
    blocks = [
        reject_complex("Adafactor"),
        maximize_block() if maximize else None,
        scale_by_torch_factored_rms(beta2_decay_n, eps1),
        torch_adafactor_update(lr_n, eps2_n, d_n, weight_decay_n),
    ]
    return validate_inputs(counted_chain(*blocks))

"""Shared by the optimizer constructors: torch-worded validation and chain assembly."""

from __future__ import annotations

from typing import Callable

import optax

from jaxupdate._hparams import concrete, is_number, is_schedule, normalize
from jaxupdate.transforms import complex_as_real, counted_chain
from jaxupdate.transforms.validate import validate_inputs


def check(value, ok: Callable[[float], bool], message: str) -> None:
    """Raises ``ValueError(message)`` when ``value`` is known now and ``ok(value)`` is false.

    Values only known later (schedules, traced arrays under ``jax.grad``) are not checked,
    as torch only checks at construction.
    """
    v = concrete(value)
    if v is not None and not ok(v):
        raise ValueError(message)


def check_lr(lr):
    """torch's learning-rate checks: 1-element if an array, then ``0 <= lr``."""
    lr_n = normalize(lr, "lr")
    check(lr_n, lambda v: 0.0 <= v, f"Invalid learning rate: {lr}")
    return lr_n


def check_nonneg(value, name: str, what: str):
    """``0 <= value``, torch's wording ``Invalid {what} value: {value}``."""
    v = normalize(value, name)
    check(v, lambda x: 0.0 <= x, f"Invalid {what} value: {value}")
    return v


def check_betas(betas, same_kind: bool = True):
    """torch's Adam-family beta checks: each beta in ``[0, 1)``, torch's wording.

    Each beta is a float, a 1-element array or a schedule (schedules are checked when used).
    ``same_kind=True`` (Adam, AdamW): torch also rejects a float beside a tensor ("betas must
    be either both floats or both Tensors"), after checking both values, so the types of
    both are checked first and the kinds last. ``same_kind=False`` (NAdam, RAdam, Adamax,
    SparseAdam): torch accepts the mix, and checks beta1 completely before beta2.

    Returns the normalized pair (floats, 0-d arrays or schedules).
    Example: ``check_betas((0.9, 1.0))`` raises
    ``ValueError("Invalid beta parameter at index 1: 1.0")``, as ``torch.optim.Adam`` does.
    """
    if len(betas) != 2:
        raise ValueError(f"betas must be a pair (beta1, beta2), got {betas!r}")

    def check_value(i, b):
        check(b, lambda x: 0.0 <= x < 1.0, f"Invalid beta parameter at index {i}: {betas[i]}")

    if not same_kind:
        out = []
        for i, b in enumerate(betas):
            out.append(normalize(b, f"betas[{i}]"))
            check_value(i, out[-1])
        return tuple(out)
    for i, b in enumerate(betas):
        if not is_schedule(b) and not is_number(b) and not hasattr(b, "shape"):
            raise TypeError(f"betas[{i}] must be a float, a 1-element array or a schedule")
    for i, b in enumerate(betas):
        if is_number(b) or (hasattr(b, "shape") and _size(b) == 1):
            check_value(i, b)
    kinds = {("number" if is_number(b) else "array") for b in betas if not is_schedule(b)}
    if len(kinds) == 2:
        raise ValueError("betas must be either both floats or both Tensors")
    return tuple(normalize(b, f"betas[{i}]") for i, b in enumerate(betas))


def check_adam_hparams(lr, betas, eps, weight_decay, same_kind: bool = True):
    """torch's Adam-family constructor checks in torch's order: lr, eps, betas, weight_decay.

    Shared by adam/adamw (``same_kind=True``), nadam and radam (``same_kind=False``, see
    :func:`check_betas`). Returns ``(lr, betas, eps, weight_decay)`` normalized.
    Example: ``check_adam_hparams(1e-3, (0.9, 0.999), -1.0, 0.0)`` raises
    ``ValueError("Invalid epsilon value: -1.0")``, as ``torch.optim.Adam`` does.
    """
    lr = check_lr(lr)
    eps = check_nonneg(eps, "eps", "epsilon")
    betas = check_betas(betas, same_kind)
    weight_decay = check_nonneg(weight_decay, "weight_decay", "weight_decay")
    return lr, betas, eps, weight_decay


def _size(x) -> int:
    size = 1
    for d in x.shape:
        size *= int(d)
    return size


def assemble(*blocks) -> optax.GradientTransformationExtraArgs:
    """Chains the blocks that are not None with one step count (``counted_chain``: the
    state is ``(*block_states, CountState)``, the count torch's ``step``), viewing complex
    leaves as real pairs (as torch), and checks grads, params and state against each other
    first (``validate_inputs``: at trace time, on static shapes and dtypes)."""
    return validate_inputs(complex_as_real(counted_chain(*blocks)))

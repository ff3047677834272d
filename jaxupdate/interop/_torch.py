"""torch, imported only when an interop function runs, and array <-> tensor conversions."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np


def torch():
    """The ``torch`` module, imported now (jaxupdate itself never needs it)."""
    try:
        import torch as _torch
    except ImportError as e:  # pragma: no cover - torch is a test dependency here
        raise ImportError(
            "jaxupdate.interop needs PyTorch: pip install 'jaxupdate[interop]'"
        ) from e
    return _torch


def is_tensor(x) -> bool:
    return type(x).__module__.startswith("torch") and hasattr(x, "detach")


def to_numpy(x) -> np.ndarray:
    """A torch tensor, jax or numpy array as a numpy array of its own (bfloat16 stays bfloat16).

    Always a copy: ``tensor.numpy()`` shares the tensor's memory, and ``jnp.asarray`` of it
    can be zero-copy on CPU, so a JAX array built from it would change whenever torch updates
    the tensor in place (``optimizer.step()``, a scheduler filling a tensor lr).
    """
    if is_tensor(x):
        t = x.detach().cpu()
        if t.dtype == torch().bfloat16:
            return np.array(jnp.asarray(t.float().numpy(), jnp.bfloat16))
        return np.array(t.numpy(), copy=True)
    return np.array(x, copy=True)


def to_tensor(x, dtype=None):
    """A jax / numpy array as a torch tensor (a copy; bfloat16 through float32)."""
    t = torch()
    a = np.asarray(x)
    if a.dtype == jnp.bfloat16:
        out = t.from_numpy(np.array(a.astype(np.float32))).to(t.bfloat16)
    else:
        out = t.from_numpy(np.array(a))
    return out if dtype is None else out.to(dtype)


def is_plateau_scheduler(scheduler) -> bool:
    """Whether ``scheduler`` is a ``torch.optim.lr_scheduler.ReduceLROnPlateau``.

    An ``isinstance`` check (torch imported only when there is a scheduler): jaxupdate's own
    :class:`jaxupdate.lr_scheduler.plateau.ReduceLROnPlateau` has the same class name.
    """
    if scheduler is None:
        return False
    return isinstance(scheduler, torch().optim.lr_scheduler.ReduceLROnPlateau)


def scalar_dtype():
    """torch's ``_get_scalar_dtype()``: the dtype of ``step`` and the other scalar state."""
    t = torch()
    return t.float64 if t.get_default_dtype() == t.float64 else t.float32

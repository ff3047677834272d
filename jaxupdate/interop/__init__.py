"""Moving runs between torch and jaxupdate: optimizer state_dicts and model weights.

torch is imported only when one of these functions runs; jaxupdate itself never needs it.

* :func:`load_torch_state_dict` / :func:`torch_state_dict`: a torch optimizer's
  ``state_dict()`` <-> the state of the equivalent jaxupdate transformation.
* :func:`from_torch`: the jaxupdate transformation of a live torch optimizer (param groups,
  state) and scheduler (position included).
* :func:`to_torch`: the converse, a jaxupdate run (state, parameters, scheduler position)
  continued in a live torch optimizer and scheduler; :func:`current_lr` reads a run's
  per-group lr (torch's ``scheduler.get_last_lr()``).
* :mod:`jaxupdate.interop.weights`: a torch module's parameters <-> pytrees in torch's order
  and names, and <-> flax ``nnx`` models (transposed ``Linear`` kernels, ``Conv`` layouts);
  ``.pt`` files through ``torch.load(weights_only=True)`` and safetensors files.
"""

from jaxupdate.interop import weights
from jaxupdate.interop.from_torch import from_torch
from jaxupdate.interop.state_dict import (
    TORCH_OPTIMIZERS,
    TorchOptimizer,
    load_into_torch,
    load_torch_state_dict,
    opt_state_from_nnx,
    opt_state_into_nnx,
    optimizer_fn_for,
    torch_state_dict,
)
from jaxupdate.interop.to_torch import current_lr, to_torch

__all__ = [
    "TORCH_OPTIMIZERS",
    "TorchOptimizer",
    "current_lr",
    "from_torch",
    "load_into_torch",
    "load_torch_state_dict",
    "opt_state_from_nnx",
    "opt_state_into_nnx",
    "optimizer_fn_for",
    "to_torch",
    "torch_state_dict",
    "weights",
]

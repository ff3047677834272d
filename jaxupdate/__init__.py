"""jaxupdate: torch.optim's parameter-update machinery as pure JAX functions.

``ju.adam(lr=1e-3, ...)`` and friends take torch's names, arguments and defaults and return
``optax.GradientTransformation``s that reproduce torch's numbers::

    tx = ju.adam(lr=1e-3)
    opt_state = tx.init(params)
    loss, grads = jax.value_and_grad(loss_fn)(params, x, y)
    updates, opt_state = tx.update(grads, opt_state, params)
    params = ju.apply_updates(params, updates)
"""

from optax import apply_updates

from jaxupdate import checkpoint, interop, lr_scheduler, optim, sharding, swa_utils, transforms
from jaxupdate.accumulate import accumulate_grads
from jaxupdate.clip_grad import (
    clip_grad_norm,
    clip_grad_norm_,
    clip_grad_value,
    clip_grad_value_,
    clip_grads_with_norm_,
    get_total_norm,
)
from jaxupdate.interop import from_torch, load_torch_state_dict, to_torch, torch_state_dict
from jaxupdate.nonfinite import skip_nonfinite
from jaxupdate.optim import *  # noqa: F403 - every optimizer, as listed in optim.__all__
from jaxupdate.param_groups import param_groups
from jaxupdate.precision import kahan_summation, master_params, master_weights
from jaxupdate.step import step

__version__ = "0.1.0"

__all__ = [
    "accumulate_grads",
    "checkpoint",
    "clip_grad_norm",
    "clip_grad_norm_",
    "clip_grad_value",
    "clip_grad_value_",
    "clip_grads_with_norm_",
    "from_torch",
    "to_torch",
    "get_total_norm",
    "interop",
    "kahan_summation",
    "load_torch_state_dict",
    "master_params",
    "master_weights",
    "param_groups",
    "torch_state_dict",
    "lr_scheduler",
    "swa_utils",
    "apply_updates",
    "sharding",
    "step",
    "skip_nonfinite",
    "transforms",
    *optim.__all__,
]

"""Block names say what a block returns: ``scale_by_torch_*`` a direction without lr,
``torch_*_update`` the update with lr included; the old names are deprecated aliases."""

import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jaxupdate.transforms as T

RENAMED = {
    "scale_by_torch_nadam": ("torch_nadam_update", (1e-3,)),
    "scale_by_torch_radam": ("torch_radam_update", (1e-3,)),
    "torch_adagrad": ("torch_adagrad_update", ()),
    "torch_adamax": ("torch_adamax_update", ()),
    "torch_rprop": ("torch_rprop_update", ()),
    "torch_asgd": ("torch_asgd_update", ()),
    "torch_momentum": ("scale_by_torch_momentum", (0.9,)),
    "scale_by_muon_lr": ("torch_muon_update", ()),
    "scale_by_torch_adafactor_step": ("torch_adafactor_update", ()),
}


def _run(tx, steps=3):
    params = {"w": jnp.linspace(-1.0, 1.0, 12).reshape(3, 4)}
    state = tx.init(params)
    out = []
    for k in range(steps):
        grads = {"w": jnp.cos(params["w"] * (k + 1))}
        updates, state = tx.update(grads, state, params)
        params = optax.apply_updates(params, updates)
        out.append(np.asarray(params["w"]))
    return out


@pytest.mark.parametrize("old", sorted(RENAMED))
def test_old_name_warns_and_is_the_new_block(old):
    new, args = RENAMED[old]
    assert old in T.__all__ and new in T.__all__
    with pytest.warns(DeprecationWarning, match=f"{old} is deprecated: use {new}"):
        tx_old = getattr(T, old)(*args)
    tx_new = getattr(T, new)(*args)
    for a, b in zip(_run(tx_old), _run(tx_new)):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("direction, update, kwargs", [
    ("scale_by_torch_adam", "torch_adam_update", {"betas": (0.8, 0.99), "amsgrad": True}),
    ("scale_by_torch_rms", "torch_rmsprop_update", {"alpha": 0.9, "centered": True}),
])
def test_lr_keyword_is_deprecated_for_the_update_block(direction, update, kwargs):
    with pytest.warns(DeprecationWarning, match="lr=.... is deprecated"):
        tx_old = getattr(T, direction)(**kwargs, lr=0.01)
    tx_new = getattr(T, update)(0.01, **kwargs)
    for a, b in zip(_run(tx_old), _run(tx_new)):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("direction, update", [
    ("scale_by_torch_adam", "torch_adam_update"),
    ("scale_by_torch_rms", "torch_rmsprop_update"),
])
def test_direction_times_lr_is_the_update_up_to_rounding(direction, update):
    # the update block multiplies lr before torch's division (addcdiv_'s value), the direction
    # followed by scale_by_learning_rate after it: the same step, rounded differently
    lr = 0.01
    tx_dir = optax.chain(getattr(T, direction)(), T.scale_by_learning_rate(lr))
    for a, b in zip(_run(tx_dir), _run(getattr(T, update)(lr))):
        np.testing.assert_allclose(a, b, rtol=1e-6)

"""Bad input: gradients, parameters and state that do not fit together raise clear errors.

Each error names the first mismatching key path; the checks read static shapes and dtypes, so
under jit they run at trace time only (the compiled step is unchanged).

WIRING. ``validate_inputs`` is meant to wrap every optimizer: ``jaxupdate/optim/_base.py``'s
``assemble`` (adam, adamw, sgd, rmsprop, adagrad, adadelta, adamax, nadam, radam, rprop) and
the three constructors that do not end in ``assemble`` (asgd, adafactor, muon). Until the lead
applies that change, ``WIRED`` is False and :func:`make` wraps the public constructor with
``validate_inputs`` itself (for ``assemble``-built optimizers exactly what the change does:
the check outermost, around the complex view). After the change set ``WIRED = True``: every
test then runs against the real ``ju.<optimizer>`` unchanged, and
``test_every_optimizer_validates`` checks the wiring. Schedules returning non-scalars are
rejected by ``jaxupdate._hparams.resolve`` itself.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jaxupdate as ju
from jaxupdate.transforms.validate import OptimizerInputError, check_same_layout, validate_inputs

WIRED = True  # the lead sets True once validate_inputs is in assemble / asgd / adafactor / muon

OPTIMIZERS = {
    "sgd": dict(lr=0.1, momentum=0.9),
    "adam": dict(lr=0.01),
    "adamw": dict(lr=0.01),
    "rmsprop": dict(lr=0.01, centered=True),
    "adagrad": dict(lr=0.1),
    "adadelta": dict(lr=0.5),
    "adamax": dict(lr=0.01),
    "nadam": dict(lr=0.01),
    "radam": dict(lr=0.01),
    "asgd": dict(lr=0.01),
    "rprop": dict(lr=0.01),
    "adafactor": dict(lr=0.01),
    "muon": dict(lr=0.01),
}


def make(name, **kwargs):
    """``ju.<name>(**kwargs)``, validated (wrapped here until the lead wires it in)."""
    tx = getattr(ju, name)(**kwargs)
    return tx if WIRED else validate_inputs(tx)


def tree(shape_w=(4, 3), dtype=jnp.float64, name="adam"):
    """A nested parameter tree; Muon takes matrices only."""
    w = jnp.linspace(-1.0, 1.0, int(np.prod(shape_w)), dtype=dtype).reshape(shape_w)
    if name == "muon":
        return {"layer": {"w": w, "v": jnp.ones((2, 5), dtype)}}
    return {"layer": {"w": w, "b": jnp.ones(3, dtype)}}


def raises(fn, match):
    with pytest.raises(OptimizerInputError) as info:
        fn()
    assert match in str(info.value), str(info.value)
    return str(info.value)


@pytest.mark.parametrize(
    "name,jit", [(n, True) for n in sorted(OPTIMIZERS)] + [("adam", False), ("asgd", False)]
)
def test_grads_shape_mismatch_names_path(name, jit):
    tx = make(name, **OPTIMIZERS[name])
    params = tree(name=name)
    state = tx.init(params)
    bad = jax.tree.map(lambda x: x, params)
    bad["layer"]["w"] = jnp.zeros((3, 4))
    update = jax.jit(tx.update) if jit else tx.update
    raises(lambda: update(bad, state, params), "grads['layer']['w'] has shape (3, 4) but params "
           "has (4, 3)")
    # and the good input still works (with the same jitted function)
    updates, _ = update(params, state, params)
    assert jax.tree.structure(updates) == jax.tree.structure(params)


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_grads_dtype_and_structure_mismatch(name):
    tx = make(name, **OPTIMIZERS[name])
    params = tree(name=name)
    state = tx.init(params)
    other = "v" if name == "muon" else "b"
    g32 = jax.tree.map(lambda x: x, params)
    g32["layer"][other] = params["layer"][other].astype(jnp.float32)
    raises(lambda: tx.update(g32, state, params),
           f"grads['layer']['{other}'] has dtype float32 but params has float64")
    missing = {"layer": {"w": params["layer"]["w"]}}
    raises(lambda: tx.update(missing, state, params),
           f"params['layer']['{other}'] is missing from grads")
    extra = {"layer": {**params["layer"], "c": jnp.ones((2, 2))}}
    raises(lambda: tx.update(extra, state, params), "grads['layer']['c'] has no counterpart in "
           "params")


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_integer_params_torch_error(name):
    """torch: ``nn.Parameter(torch.tensor([1, 2]))`` raises RuntimeError('Only Tensors of
    floating point and complex dtype can require gradients'); same type and words here."""
    tx = make(name, **OPTIMIZERS[name])
    params = tree(name=name)
    params["layer"]["step"] = jnp.zeros((2, 2), jnp.int32)
    with pytest.raises(RuntimeError, match="Only Tensors of floating point and complex dtype "
                       r"can require gradients: params\['layer'\]\['step'\] has dtype int32"):
        tx.init(params)


def test_integer_params_at_update_and_float0_grads():
    tx = make("adam")
    good = {"w": jnp.ones(3), "n": jnp.ones(2)}
    state = tx.init(good)
    params = {"w": jnp.ones(3), "n": jnp.ones(2, jnp.int32)}
    raises(lambda: tx.update(good, state, params), "params['n'] has dtype int32")
    # jax.grad(..., allow_int=True) gives float0 gradients for integer inputs
    grads = jax.grad(lambda p: jnp.sum(p["w"] ** 2), allow_int=True)(params)
    raises(lambda: tx.update(grads, state), "grads['n'] has dtype float0")


def test_state_from_another_optimizer_names_both():
    params = tree()
    sgd_state = make("sgd", lr=0.1, momentum=0.9).init(params)
    msg = raises(lambda: make("adam").update(params, sgd_state, params),
                 "opt_state does not belong to this optimizer (")
    assert "(TorchMomentumState, EmptyState, CountState), the state of SGD with momentum" in msg
    assert "this optimizer's state is made of (TorchAdamState, CountState)" in msg
    adam_state = make("adam").init(params)
    msg = raises(lambda: make("rmsprop").update(params, adam_state, params),
                 "the state of Adam/AdamW")
    assert "(TorchRMSState, CountState)" in msg


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_every_foreign_state_is_rejected(name):
    """Each optimizer rejects the state of the next one in the list (no silent mix-up)."""
    names = sorted(OPTIMIZERS)
    other = names[(names.index(name) + 1) % len(names)]
    params = tree(name="muon") if "muon" in (name, other) else tree()
    foreign = make(other, **OPTIMIZERS[other]).init(params)
    tx = make(name, **OPTIMIZERS[name])
    with pytest.raises(OptimizerInputError, match="opt_state does not (belong|fit)"):
        tx.update(params, foreign, params)


def test_state_of_same_optimizer_other_options_or_other_params():
    params = tree()
    plain = make("adam").init(params)
    raises(lambda: make("adam", amsgrad=True).update(params, plain, params),
           "this optimizer's state has opt_state[0].max_exp_avg_sq['layer']['b'], the given one "
           "does not")
    amsgrad = make("adam", amsgrad=True).init(params)
    raises(lambda: make("adam").update(params, amsgrad, params),
           "opt_state[0].max_exp_avg_sq['layer']['b'] is not part of this optimizer's state")
    small = tree(shape_w=(3, 4))
    state = make("adam").init(small)
    raises(lambda: make("adam").update(params, state, params),
           "opt_state[0].exp_avg['layer']['w'] has shape (3, 4) but the state init builds for "
           "these params has (4, 3)")
    # params=None: the grads stand for the params
    raises(lambda: make("adam").update(params, state), "but the state init builds for these "
           "grads has (4, 3)")


def test_complex_params_checked_before_the_real_view():
    tx = make("adam", lr=0.1)
    params = {"z": jnp.ones((2, 3), jnp.complex128)}
    state = tx.init(params)
    raises(lambda: tx.update({"z": jnp.ones((3, 2), jnp.complex128)}, state, params),
           "grads['z'] has shape (3, 2) but params has (2, 3)")
    raises(lambda: tx.update({"z": jnp.ones((2, 3), jnp.float64)}, state, params),
           "grads['z'] has dtype float64 but params has complex128")
    updates, _ = tx.update(params, state, params)
    assert updates["z"].dtype == jnp.complex128


def test_no_runtime_cost_under_jit():
    """The validated update traces to the same program as the bare one (checks are Python)."""
    inner = ju.adam(lr=0.01, amsgrad=True)
    tx = validate_inputs(inner)
    params = tree()
    state = tx.init(params)
    bare = jax.make_jaxpr(inner.update)(params, state, params)
    checked = jax.make_jaxpr(tx.update)(params, state, params)
    assert str(bare) == str(checked)
    # and the compiled function does not retrace on the next call
    traces = []

    def step(g, s, p):
        traces.append(1)
        return tx.update(g, s, p)

    jitted = jax.jit(step)
    for _ in range(3):
        _, state = jitted(params, state, params)
    assert len(traces) == 1


def test_check_same_layout_containers_and_lists():
    check_same_layout([jnp.ones(2)], [jnp.zeros(2)])
    with pytest.raises(OptimizerInputError, match=r"params\[1\] is missing from grads"):
        check_same_layout([jnp.ones(2)], [jnp.zeros(2), jnp.zeros(1)])
    with pytest.raises(OptimizerInputError, match="same entries in different containers"):
        check_same_layout((jnp.ones(2),), [jnp.zeros(2)])
    # the error is both a ValueError and torch's RuntimeError
    assert issubclass(OptimizerInputError, ValueError)
    assert issubclass(OptimizerInputError, RuntimeError)


def test_validate_inputs_wraps_any_optax_transformation():
    tx = validate_inputs(optax.chain(optax.clip_by_global_norm(1.0), optax.adam(1e-3)))
    params = tree()
    state = tx.init(params)
    raises(lambda: tx.update(tree(shape_w=(2, 6)), state, params),
           "grads['layer']['w'] has shape (2, 6) but params has (4, 3)")
    u1, _ = tx.update(params, state, params)
    u2, _ = optax.chain(optax.clip_by_global_norm(1.0), optax.adam(1e-3)).update(
        params, state, params
    )
    assert all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(u1), jax.tree.leaves(u2)))


def test_every_optimizer_validates():
    """Once wired, the public constructors themselves reject a mismatched gradient."""
    if not WIRED:
        pytest.skip("validate_inputs is not wired into assemble/asgd/adafactor/muon yet")
    for name, kwargs in OPTIMIZERS.items():
        tx = getattr(ju, name)(**kwargs)
        params = tree(name=name)
        state = tx.init(params)
        bad = {"layer": {k: jnp.zeros((7,)) for k in params["layer"]}}
        with pytest.raises(OptimizerInputError):
            tx.update(bad, state, params)


# --- schedules returning a non-scalar: jaxupdate._hparams.resolve rejects them --------------


@pytest.mark.parametrize("name", ["sgd", "adam", "rmsprop", "nadam"])
def test_schedule_returning_non_scalar(name):
    params = tree()
    tx = make(name, lr=lambda count: 0.01 * jnp.ones(3))
    state = tx.init(params)
    with pytest.raises(ValueError, match=r"returned a value of shape \(3,\): a schedule must "
                       "return a scalar"):
        jax.jit(tx.update)(params, state, params)
    # a 1-element array is fine, as torch's 1-element tensor lr
    ok = make(name, lr=lambda count: 0.01 * jnp.ones(1))
    ok.update(params, ok.init(params), params)

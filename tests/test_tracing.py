"""leaf_map's nested tracing (once per leaf shape) must not change a single bit of any result."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jaxupdate as ju
import jaxupdate._hparams as H

# every transformation whose per-leaf arithmetic goes through leaf_map, in its branches
CONFIGS = [
    ("adam", dict(lr=1e-2)),
    ("adam", dict(lr=1e-2, amsgrad=True, weight_decay=0.1, maximize=True)),
    ("adamw", dict(lr=1e-2, weight_decay=0.1)),
    ("sgd", dict(lr=1e-2, momentum=0.9, nesterov=True, weight_decay=0.1)),
    ("sgd", dict(lr=1e-2, momentum=0.9, dampening=0.3)),
    ("rmsprop", dict(lr=1e-2, centered=True, momentum=0.5)),
    ("rmsprop", dict(lr=1e-2)),
    ("adagrad", dict(lr=1e-2, lr_decay=0.01, initial_accumulator_value=0.1)),
    ("adadelta", dict(lr=0.5, weight_decay=0.1)),
    ("adamax", dict(lr=1e-2)),
    ("rprop", dict(lr=1e-2)),
]
# 24 leaves of 3 shapes: leaf_map nests (at least half the leaves repeat a shape)
SHAPES = [(5, 3), (3,), (2, 2, 2)] * 8


def _run(name, kwargs, dtype, nest, monkeypatch):
    monkeypatch.setattr(H, "NEST_LEAVES", nest)
    tx = getattr(ju, name)(**kwargs)
    rng = np.random.default_rng(0)
    params = [jnp.asarray(rng.standard_normal(s), dtype) for s in SHAPES]
    state = tx.init(params)

    @jax.jit
    def step(params, state, grads):
        updates, state = tx.update(grads, state, params)
        return optax.apply_updates(params, updates), state

    for _ in range(4):
        grads = [jnp.asarray(rng.standard_normal(s), dtype) for s in SHAPES]
        params, state = step(params, state, grads)
    return jax.tree.leaves((params, state))


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("name,kwargs", CONFIGS, ids=[f"{n}-{i}" for i, (n, _) in
                                                       enumerate(CONFIGS)])
def test_nested_tracing_is_bit_identical(name, kwargs, dtype, monkeypatch):
    direct = _run(name, kwargs, dtype, False, monkeypatch)
    nested = _run(name, kwargs, dtype, True, monkeypatch)
    assert len(direct) == len(nested)
    for a, b in zip(direct, nested):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_nesting_traces_once_per_shape(monkeypatch):
    """The jaxpr of a 24-leaf Adam step holds one nested call per leaf and map, whose bodies
    were traced once per distinct shape: far fewer equations than one inlined body per leaf."""
    params = [jnp.zeros(s) for s in SHAPES]
    tx = ju.adam(lr=1e-3)
    state = tx.init(params)
    counts = {}
    for nest in (False, True):
        monkeypatch.setattr(H, "NEST_LEAVES", nest)
        jaxpr = jax.make_jaxpr(lambda g, s, p: tx.update(g, s, p))(params, state, params)
        counts[nest] = len(jaxpr.eqns)
        # nested per-leaf calls take array operands (jnp.where's own jit works on scalars)
        calls = [e for e in jaxpr.eqns if e.primitive.name in ("pjit", "jit")
                 and any(getattr(v.aval, "shape", ()) for v in e.invars)]
        # per leaf: m (lerp), v, the direction, and the lr step
        assert len(calls) == (4 * len(SHAPES) if nest else 0)
    assert counts[True] < counts[False] / 2


def test_eager_and_few_leaves_are_not_nested(monkeypatch):
    """Eager updates and trees of mostly distinct shapes map directly (no nested jit)."""
    seen = []
    real_jit = jax.jit
    monkeypatch.setattr(jax, "jit", lambda f, *a, **k: seen.append(f) or real_jit(f, *a, **k))
    tx = ju.adam(lr=1e-3)
    params = [jnp.zeros(s) for s in SHAPES]
    tx.update(params, tx.init(params), params)  # eager, 24 leaves
    distinct = [jnp.zeros((k + 1,)) for k in range(10)]
    jax.make_jaxpr(lambda p: tx.update(p, tx.init(p), p))(distinct)  # traced, 10 shapes
    assert seen == []

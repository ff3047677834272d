"""leaf_map's nested tracing (once per leaf shape) must not change a single bit of any result."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jaxupdate as ju

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


def _run(name, kwargs, dtype, shapes):
    tx = getattr(ju, name)(**kwargs)
    rng = np.random.default_rng(0)
    params = [jnp.asarray(rng.standard_normal(s), dtype) for s in shapes]
    state = tx.init(params)

    @jax.jit
    def step(params, state, grads):
        updates, state = tx.update(grads, state, params)
        return optax.apply_updates(params, updates), state

    for _ in range(4):
        grads = [jnp.asarray(rng.standard_normal(s), dtype) for s in shapes]
        params, state = step(params, state, grads)
    return params, state


# the same 24 leaves, each in a shape of its own (same sizes): a tree of distinct shapes is
# mapped directly (no nested trace), and elementwise arithmetic does not see the shape
DISTINCT = [(15,), (3,), (8,), (1, 15), (1, 3), (2, 4), (15, 1), (3, 1), (4, 2), (3, 5),
            (1, 1, 3), (1, 8), (1, 3, 5), (1, 3, 1), (8, 1), (1, 5, 3), (3, 1, 1), (2, 4, 1),
            (3, 1, 5), (1, 1, 1, 3), (1, 2, 4), (1, 1, 15), (1, 1, 3, 1), (2, 1, 4)]


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("name,kwargs", CONFIGS, ids=[f"{n}-{i}" for i, (n, _) in
                                                       enumerate(CONFIGS)])
def test_nested_tracing_is_bit_identical(name, kwargs, dtype):
    """24 leaves of 3 shapes (nested per-leaf traces) against the same leaves in 24 distinct
    shapes (mapped directly): every parameter and state leaf must agree bit for bit. There is
    no switch to turn nesting off; a tree of distinct shapes is the direct path."""
    assert [int(np.prod(s)) for s in DISTINCT] == [int(np.prod(s)) for s in SHAPES]
    assert len(set(DISTINCT)) == len(DISTINCT)
    nested = _run(name, kwargs, dtype, SHAPES)
    direct = _run(name, kwargs, dtype, DISTINCT)
    a, b = jax.tree.leaves(nested), jax.tree.leaves(direct)
    assert len(a) == len(b)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(np.ravel(x), np.ravel(y))


def test_nesting_traces_once_per_shape():
    """The jaxpr of a 24-leaf Adam step holds one nested call per leaf and map, whose bodies
    were traced once per distinct shape: far fewer equations than one inlined body per leaf
    (a 3-leaf step of the same shapes is mapped directly: 8 times it is the inlined size)."""
    tx = ju.adam(lr=1e-3)
    counts = {}
    for shapes in (SHAPES, SHAPES[:3]):
        params = [jnp.zeros(s) for s in shapes]
        state = tx.init(params)
        jaxpr = jax.make_jaxpr(lambda g, s, p: tx.update(g, s, p))(params, state, params)
        counts[len(shapes)] = len(jaxpr.eqns)
        # nested per-leaf calls take array operands (jnp.where's own jit is not one of them)
        calls = [e for e in jaxpr.eqns if e.primitive.name in ("pjit", "jit")
                 and e.params.get("name") != "_where"
                 and any(getattr(v.aval, "shape", ()) for v in e.invars)]
        # per leaf: m (lerp), v, and the step (lr inside torch's addcdiv_, so no lr map)
        assert len(calls) == (3 * len(shapes) if len(shapes) == len(SHAPES) else 0)
    assert counts[len(SHAPES)] < 8 * counts[3] / 2


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

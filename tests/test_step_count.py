"""One step count per optimizer (torch's ``step``), owned by the chain, read by ``step_count``.

Every jaxupdate optimizer is a ``counted_chain``: its state is ``(*block_states, CountState)``
and its blocks read the chain's count (``update(..., count=)``) instead of keeping their own.
Blocks used alone keep a count only when they need one (schedules, bias corrections).
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jaxupdate as ju
from jaxupdate import transforms as T
from jaxupdate.transforms.common import CountState

OPTIMIZERS = [
    ("sgd", dict(lr=0.1, momentum=0.9, weight_decay=0.1)),
    ("adam", dict(lr=0.01, weight_decay=0.1)),
    ("adamw", dict(lr=lambda c: 0.01 / (1.0 + c), amsgrad=True)),
    ("rmsprop", dict(lr=0.01, centered=True, momentum=0.5)),
    ("rmsprop", dict(lr=0.01)),
    ("adagrad", dict(lr=0.1, lr_decay=1e-3)),
    ("adadelta", dict(lr=0.5, weight_decay=0.1)),
    ("adamax", dict(lr=0.01)),
    ("nadam", dict(lr=0.01, weight_decay=0.1, decoupled_weight_decay=True)),
    ("radam", dict(lr=0.01)),
    ("asgd", dict(lr=0.01, weight_decay=0.1, maximize=True)),
    ("rprop", dict(lr=0.01)),
    ("adafactor", dict(lr=0.01)),
    ("muon", dict(lr=0.01)),
    ("lbfgs", dict(lr=0.5)),
    ("sparse_adam", dict(lr=0.01)),
]
STEPS = 3


def _params(name):
    return [jnp.linspace(-1.0, 1.0, 12).reshape(3, 4), jnp.linspace(0.5, 2.0, 4 * 5).reshape(4, 5)]


def _grads(name, params, k):
    g = [jnp.cos(p * (k + 1)) for p in params]
    if name == "sparse_adam":
        return [jax.experimental.sparse.BCOO.fromdense(x) for x in g]
    return g


def _count_fields(node, out):
    """Every NamedTuple field called ``count`` outside a CountState (there should be none)."""
    if isinstance(node, tuple) and hasattr(node, "_fields"):
        for f in node._fields:
            if f == "count" and not getattr(type(node), "holds_step_count", False):
                out.append(type(node).__name__)
            _count_fields(getattr(node, f), out)
    elif isinstance(node, (tuple, list)):
        for x in node:
            _count_fields(x, out)
    elif isinstance(node, dict):
        for x in node.values():
            _count_fields(x, out)
    return out


@pytest.mark.parametrize("name,kwargs", OPTIMIZERS, ids=[f"{n}-{i}" for i, (n, _) in
                                                         enumerate(OPTIMIZERS)])
def test_every_optimizer_keeps_one_count(name, kwargs):
    params = _params(name)
    tx = getattr(ju, name)(**kwargs)
    state = tx.init(params)
    assert int(T.step_count(state)) == 0
    extra = {}
    if name == "lbfgs":
        def loss(p):
            return sum(jnp.sum(jnp.cos(x) * x) for x in p)
        vg = jax.value_and_grad(loss)
        extra = dict(value_and_grad_fn=vg)
    for k in range(STEPS):
        if name == "lbfgs":
            value, grads = extra["value_and_grad_fn"](params)
            updates, state = tx.update(grads, state, params, value=value, **extra)
        else:
            updates, state = tx.update(_grads(name, params, k), state, params)
        params = optax.apply_updates(params, updates)
    assert int(T.step_count(state)) == STEPS
    assert _count_fields(state, []) == []
    if name not in ("lbfgs", "sparse_adam"):  # one block each, holding their count
        assert isinstance(state[-1], CountState)
        assert sum(isinstance(s, CountState) for s in jax.tree.leaves(
            state, is_leaf=lambda x: isinstance(x, CountState))) == 1


def test_adamw_state_is_the_moments_then_the_count():
    tx = ju.adamw(lr=1e-3)
    state = tx.init({"w": jnp.ones(3)})
    kinds = [type(s).__name__ for s in state]
    # no count in the Adam block, none in the (constant) decoupled decay block
    assert kinds == ["TorchAdamState", "EmptyState", "CountState"]
    assert state[0]._fields == ("exp_avg", "exp_avg_sq", "max_exp_avg_sq")


def test_blocks_alone_count_only_when_they_need_to():
    params = {"w": jnp.ones(3)}
    # constant hyperparameters: no state at all (as optax's scale_by_learning_rate)
    for tx in (T.add_weight_decay(0.1), T.scale_by_learning_rate(0.1),
               T.decoupled_weight_decay(0.1, 0.01), T.scale_by_torch_rms(),
               T.scale_by_torch_momentum(0.9, first_step_copies=False)):
        assert not any(isinstance(x, CountState) for x in jax.tree.leaves(
            tx.init(params), is_leaf=lambda x: isinstance(x, CountState)))
    # a schedule, a bias correction or the first-step copy: a count of their own
    for tx in (T.scale_by_learning_rate(lambda c: 0.1 / (1 + c)), T.scale_by_torch_adam(),
               T.scale_by_torch_momentum(0.9)):
        assert int(T.step_count(tx.init(params))) == 0


def test_block_alone_in_optax_chain_equals_the_optimizer():
    """``scale_by_torch_adam`` in a user's optax.chain keeps its own count and gives Adam's
    direction; scaled by a schedule it matches ``ju.adam`` with that schedule up to the
    rounding of where lr is applied (inside addcdiv_ in ju.adam)."""
    sched = lambda c: 0.01 / (1.0 + c)  # noqa: E731
    mine = optax.chain(T.scale_by_torch_adam(), T.scale_by_learning_rate(sched))
    ref = ju.adam(lr=sched)
    p1 = p2 = {"w": jnp.linspace(-1.0, 1.0, 1000)}
    s1, s2 = mine.init(p1), ref.init(p2)
    for k in range(5):
        u1, s1 = mine.update({"w": jnp.cos(p1["w"] * (k + 1))}, s1, p1)
        u2, s2 = ref.update({"w": jnp.cos(p2["w"] * (k + 1))}, s2, p2)
        p1, p2 = optax.apply_updates(p1, u1), optax.apply_updates(p2, u2)
    np.testing.assert_allclose(np.asarray(p1["w"]), np.asarray(p2["w"]), rtol=1e-6)
    # two blocks that count on their own: two counts, both at 5
    counts = [x.count for x in jax.tree.leaves(s1, is_leaf=lambda x: isinstance(x, CountState))
              if isinstance(x, CountState)]
    assert [int(c) for c in counts] == [5, 5]


def test_counted_chain_takes_the_blocks_of_counted_blocks():
    tx = T.counted_chain(T.scale_by_torch_adam(), None,
                         T.scale_by_learning_rate(lambda c: 0.1 / (1 + c)))
    state = tx.init({"w": jnp.ones(3)})
    assert [type(s).__name__ for s in state] == ["TorchAdamState", "EmptyState", "CountState"]


def test_a_block_that_needs_the_count_says_so_without_one():
    tx = optax.chain(T.uncounted(T.scale_by_torch_adam()))
    params = {"w": jnp.ones(3)}
    with pytest.raises(ValueError, match="scale_by_torch_adam reads the optimizer's step count"):
        tx.update(params, tx.init(params), params)


def test_step_count_through_wrappers_and_groups():
    params = {"a": jnp.ones(3), "b": jnp.ones(2)}
    tx = ju.skip_nonfinite(ju.lr_scheduler.inject_hyperparams(ju.adam)(lr=0.1))
    state = tx.init(params)
    _, state = tx.update(params, state, params)
    assert int(T.step_count(state)) == 1
    groups = ju.param_groups(ju.sgd, [{"params": "^a$"}, {"params": "^b$", "lr": 0.5}],
                             lr=0.1, momentum=0.9)
    gstate = groups.init(params)
    with pytest.raises(ValueError, match="holds 2 optimizer step counts"):
        T.step_count(gstate)
    assert [int(T.step_count(g)) for g in gstate.groups] == [0, 0]


def test_with_step_count_sets_the_count_in_its_dtype():
    tx = ju.nadam()
    state = T.with_step_count(tx.init({"w": jnp.ones(3)}), 7)
    count = T.step_count(state)
    assert int(count) == 7 and count.dtype == jnp.int32


def test_a_state_of_only_the_count_is_named_sgd_without_momentum():
    params = {"w": jnp.zeros(3)}
    sgd_state = ju.sgd(lr=0.1).init(params)
    with pytest.raises(ValueError, match=r"\(EmptyState, CountState\), the state of SGD without"):
        ju.adam().update(params, sgd_state, params)

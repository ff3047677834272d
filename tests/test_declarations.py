"""Each optimizer module declares its torch facts once (``@torch_optimizer``); every consumer
reads them from there."""

from __future__ import annotations

import doctest
import inspect

import jax
import jax.numpy as jnp
import pytest
import torch

import jaxupdate as ju
from jaxupdate import _described
from jaxupdate._described import (
    TORCH_OPTIMIZERS,
    declaration,
    declarations,
    description,
    fn_qualname,
    state_converters,
    torch_optimizer,
)
from jaxupdate.interop import parity as H
from jaxupdate.interop import state_dict as SD
from jaxupdate.param_groups import constructor_only


def test_every_exported_optimizer_is_declared_once():
    """One declaration per exported optimizer function, its torch class a real torch.optim
    class, and the public view keyed by the function's qualname."""
    decls = declarations()
    assert len(decls) == len(ju.optim.__all__) == len(TORCH_OPTIMIZERS)
    for name in ju.optim.__all__:
        fn = getattr(ju.optim, name)
        d = declaration(fn)
        assert d is not None, name
        assert d.fn is fn  # the public (described) function
        assert declaration(d.torch_class) is d
        assert declaration(getattr(torch.optim, d.torch_class)) is d
        assert TORCH_OPTIMIZERS[fn_qualname(fn)] is d
        assert d.qualname == fn_qualname(fn)
        assert d.state is not None and hasattr(d.state, "_fields"), name
        # the declared state type is the optimizer's own block (error messages name it)
        # (SGD keeps its TorchMomentumState only with momentum)
        state = fn(**({"momentum": 0.9} if name == "sgd" else {})).init([jnp.ones((2, 3))])
        found = jax.tree.leaves(state, is_leaf=lambda x, t=d.state: isinstance(x, t))
        assert any(isinstance(x, d.state) for x in found), (name, state)
        assert set(d.scalar_keys) <= set(d.state_keys)
        assert set(d.constructor_only) <= set(inspect.signature(fn).parameters)
        # the function stays self-describing, as @described made it
        assert description(fn()).fn is inspect.unwrap(fn)


def test_view_is_read_only():
    with pytest.raises(TypeError):
        TORCH_OPTIMIZERS["x"] = None  # type: ignore[index]


def test_facts_reach_their_consumers():
    """What the registries repeated by hand before now comes from the declarations."""
    assert constructor_only(ju.adagrad) == ("initial_accumulator_value",)
    assert constructor_only(ju.adam) == ()
    assert constructor_only(lambda lr=0.1: None) == ()
    assert H.shapes_for("Muon") == ((3, 4), (5, 3), (4, 4))
    assert H.shapes_for("Adam") == H.SHAPES and H.shapes_for("NotAnOptimizer") == H.SHAPES
    assert {d.torch_class for d in declarations() if d.parity.jit} == {
        "LBFGS", "Muon", "Adafactor"
    }
    names = _described.state_names()
    assert names["TorchAdamState"] == "Adam/AdamW"
    assert names["TorchMomentumState"] == "SGD with momentum"
    assert names["LBFGSState"] == "LBFGS"
    assert SD.optimizer_fn_for("NAdam") is ju.nadam
    assert SD.optimizer_fn_for(torch.optim.SparseAdam) is ju.sparse_adam
    assert {d.torch_class for d in declarations() if d.custom} == {"LBFGS", "SparseAdam"}


def test_declaring_a_torch_class_twice_is_an_error():
    def adam_again(lr=1e-3):
        return ju.adam(lr)

    with pytest.raises(ValueError, match="torch.optim.Adam is declared twice"):
        torch_optimizer("Adam", ("step",))(adam_again)
    assert declaration("Adam").fn is ju.adam


def test_state_converters_need_a_declared_state():
    def undeclared(lr=1e-3):
        return ju.sgd(lr)

    with pytest.raises(ValueError, match="no torch_optimizer declaration with a state type"):
        state_converters(undeclared, export=None, load=None)


def test_docstring_examples():
    assert doctest.testmod(_described, optionflags=doctest.ELLIPSIS).failed == 0

"""How a transformation was built: the optimizer function and its hyperparameters.

An optax transformation is a pair of closures; nothing in it says "this is Adam with
lr=1e-3". Interop with torch needs exactly that (to write torch's ``param_groups``, to check
that a torch ``state_dict`` comes from the same optimizer class and hyperparameters), so
constructors can leave a :class:`Description` on the transformation they return. It is kept
as an attribute of ``tx.update`` (a fresh closure for every transformation built), so the
transformation itself stays a plain ``optax.GradientTransformationExtraArgs``, and anything
derived from it (``optax.chain(tx, ...)``) rightly carries none.

Three ways a transformation gets one:

* :func:`described` wraps an optimizer function (``described(ju.adam)(lr=1e-3)``); applied
  once to every exported constructor, it makes all of them self-describing;
* :func:`jaxupdate.param_groups.param_groups` describes the grouped transformation it builds;
* :func:`attach` for hand-made cases.

Example::

    >>> from jaxupdate._described import described, description
    >>> from jaxupdate.optim.adam import adam
    >>> tx = described(adam)(lr=1e-2, amsgrad=True)
    >>> d = description(tx)
    >>> d.name, d.kwargs["lr"], d.kwargs["amsgrad"], d.kwargs["betas"]
    ('adam', 0.01, True, (0.9, 0.999))
"""

from __future__ import annotations

import functools
import inspect
from typing import Any, Callable, NamedTuple, Optional

_ATTR = "_jaxupdate_description"


class Description(NamedTuple):
    """An optimizer function (unwrapped) and every argument it was called with, defaults filled."""

    fn: Callable
    kwargs: dict

    @property
    def name(self) -> str:
        return self.fn.__name__

    @property
    def qualname(self) -> str:
        """``module.function``, the key of the interop tables."""
        return f"{self.fn.__module__}.{self.fn.__qualname__}"


def bind_kwargs(fn: Callable, args=(), kwargs=None) -> dict:
    """``fn``'s arguments as a dict by name, defaults filled in (raises torch-like TypeErrors)."""
    sig = inspect.signature(inspect.unwrap(fn))
    bound = sig.bind(*args, **(kwargs or {}))
    bound.apply_defaults()
    out = dict(bound.arguments)
    # ``fused`` (jaxupdate.step's kernel) is not the mathematics: descriptions, interop and
    # param groups see the fused=False optimizer (torch's RMSprop has no such argument)
    out.pop("fused", None)
    return out


def attach(tx, info: Any):
    """Leaves ``info`` (a :class:`Description` or another description) on ``tx``; returns ``tx``."""
    setattr(tx.update, _ATTR, info)
    return tx


def description(tx) -> Optional[Any]:
    """The description left on ``tx`` by :func:`described` / ``param_groups``, else ``None``."""
    return getattr(getattr(tx, "update", None), _ATTR, None)


def described(fn: Callable) -> Callable:
    """Wraps optimizer function ``fn`` so that what it returns carries a :class:`Description`.

    The wrapper has ``fn``'s signature and docstring (``inspect.signature`` follows
    ``__wrapped__``), and returns ``fn``'s transformation unchanged apart from the description.
    """
    base = inspect.unwrap(fn)

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        tx = fn(*args, **kwargs)
        return attach(tx, Description(base, bind_kwargs(base, args, kwargs)))

    return wrapper


__all__ = ["Description", "attach", "bind_kwargs", "described", "description"]

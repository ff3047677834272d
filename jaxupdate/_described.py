"""How a transformation was built: the optimizer function and its hyperparameters.

An optax transformation is a pair of closures; nothing in it says "this is Adam with
lr=1e-3". Interop with torch needs exactly that (to write torch's ``param_groups``, to check
that a torch ``state_dict`` comes from the same optimizer class and hyperparameters), so
constructors can leave a :class:`Description` on the transformation they return. It is kept
as an attribute of ``tx.update`` (a fresh closure for every transformation built), so the
transformation itself stays a plain ``optax.GradientTransformationExtraArgs``, and anything
derived from it (``optax.chain(tx, ...)``) rightly carries none.

Three ways a transformation gets one:

* :func:`described` wraps an optimizer function (``described(ju.adam)(lr=1e-3)``);
  :func:`torch_optimizer`, applied once to every exported constructor, does the same, so all
  of them are self-describing;
* :func:`jaxupdate.param_groups.param_groups` describes the grouped transformation it builds;
* :func:`attach` for hand-made cases.

Example::

    >>> from jaxupdate._described import described, description
    >>> from jaxupdate.optim.adam import adam
    >>> tx = described(adam)(lr=1e-2, amsgrad=True)
    >>> d = description(tx)
    >>> d.name, d.kwargs["lr"], d.kwargs["amsgrad"], d.kwargs["betas"]
    ('adam', 0.01, True, (0.9, 0.999))

Each optimizer module also declares its torch facts once, with :func:`torch_optimizer`
(torch class name, state type, state keys, constructor-only arguments, how the parity
harness runs it); every consumer (state_dict / from_torch / to_torch interop, param_groups,
the input checks' messages, the parity harness, the tests) reads them through
:func:`declaration` / :func:`declarations`, and :data:`TORCH_OPTIMIZERS` is a read-only view
of them. Adding an optimizer is one new ``jaxupdate/optim/<name>.py``.
"""

from __future__ import annotations

import functools
import inspect
from types import MappingProxyType
from typing import Any, Callable, NamedTuple, Optional

_ATTR = "_jaxupdate_description"


class Description(NamedTuple):
    """An optimizer function (unwrapped) and every argument it was called with, defaults filled."""

    fn: Callable
    kwargs: dict

    @property
    def name(self) -> str:
        return self.fn.__name__


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


# ---------------------------------------------------------------------------------------------
# One declaration per optimizer: its torch facts, next to its constructor.


class CustomState(NamedTuple):
    """Conversion of a state that is not a set of per-parameter buffers (LBFGS, SparseAdam).

    ``state_type``: the NamedTuple class of the optimizer's state, found in a group's state
    by ``isinstance`` and given to ``export(state, leaves, count) -> {container position:
    torch entry}`` and ``load(state, entries, leaves, step) -> state`` (one group,
    ``entries`` being torch's per-parameter dicts in the group's order). The converters live
    with their optimizers and are named by :func:`state_converters`.
    """

    export: Callable
    load: Callable
    state_type: type


class Parity(NamedTuple):
    """How ``python -m jaxupdate parity`` and the tests run the optimizer against torch.

    ``jit``: compile the update (faster for loops: L-BFGS's line search, Newton-Schulz);
    ``shapes``: the parameter shapes of the problem, ``None`` for the harness's default
    (:data:`jaxupdate.interop.parity.SHAPES`); ``closure``: the optimizer evaluates its own
    loss (torch's ``step(closure)``), so the harness drives it on a smooth real loss instead
    of a gradient sequence; ``sparse_grads``: it takes sparse gradients.
    """

    jit: bool = False
    shapes: Optional[tuple] = None
    closure: bool = False
    sparse_grads: bool = False


class TorchOptimizer(NamedTuple):
    """How one jaxupdate optimizer function corresponds to a ``torch.optim`` class.

    Made by :func:`torch_optimizer` (one declaration in the optimizer's module).
    ``state_keys``: torch's per-parameter state keys in torch's order; each one except
    ``step`` is the name of a field of a jaxupdate state NamedTuple. ``scalar_keys``: those
    that torch keeps as a 0-d tensor of its scalar dtype per parameter and jaxupdate once per
    group. ``eager``: torch creates the state at construction (Adagrad), so it is exported
    even before the first step. ``dummy_shape``: a parameter shape the torch class accepts
    (used to let torch build and validate a param group). ``state``: the state NamedTuple
    that identifies the optimizer (named in error messages as ``state_name``, by default the
    torch classes declaring it joined by ``/``). ``constructor_only``: arguments the torch
    class reads in its constructor only, never per param group. ``custom``: converters of a
    state that is not per-parameter buffers. ``fn``: the (public) optimizer function.
    """

    torch_class: str
    state_keys: tuple
    scalar_keys: tuple = ()
    eager: bool = False
    dummy_shape: tuple = (2, 2)
    custom: Optional[CustomState] = None
    state: Optional[type] = None
    state_name: Optional[str] = None
    constructor_only: tuple = ()
    parity: Parity = Parity()
    fn: Optional[Callable] = None

    @property
    def has_step(self) -> bool:
        return "step" in self.state_keys

    @property
    def qualname(self) -> str:
        """``module.function`` of the optimizer function, the key of ``TORCH_OPTIMIZERS``."""
        return fn_qualname(self.fn)


def fn_qualname(fn: Callable) -> str:
    """``module.qualname`` of ``fn`` (unwrapped)."""
    fn = inspect.unwrap(fn)
    return f"{fn.__module__}.{fn.__qualname__}"


_BY_FN: dict = {}  # unwrapped optimizer function -> TorchOptimizer
_BY_CLASS: dict = {}  # torch class name -> TorchOptimizer
_BY_QUALNAME: dict = {}  # "module.qualname" -> TorchOptimizer (TORCH_OPTIMIZERS' contents)

#: Every declared optimizer by its function's ``"module.qualname"`` (read-only view).
TORCH_OPTIMIZERS = MappingProxyType(_BY_QUALNAME)


def torch_optimizer(
    torch_class: str,
    state_keys: tuple,
    *,
    state: Optional[type] = None,
    scalar_keys: tuple = (),
    eager: bool = False,
    dummy_shape: tuple = (2, 2),
    constructor_only: tuple = (),
    parity: Optional[Parity] = None,
    state_name: Optional[str] = None,
) -> Callable:
    """Declares an optimizer function as ``torch.optim.<torch_class>``; applies :func:`described`.

    The one place an optimizer's torch facts are written (see :class:`TorchOptimizer` for
    each argument): ``state_dict`` / ``from_torch`` / ``to_torch`` interop, ``param_groups``,
    the input checks' messages and the parity harness read them through :func:`declaration`.

    Example::

        >>> from jaxupdate._described import declaration
        >>> import jaxupdate as ju
        >>> d = declaration(ju.nadam)
        >>> d.torch_class, d.scalar_keys, declaration("NAdam") is d
        ('NAdam', ('mu_product',), True)
    """

    def declare(fn: Callable) -> Callable:
        public = described(fn)
        decl = TorchOptimizer(
            torch_class, tuple(state_keys), tuple(scalar_keys), eager, tuple(dummy_shape),
            None, state, state_name, tuple(constructor_only), parity or Parity(), public,
        )
        _register(decl)
        return public

    return declare


def _register(decl: TorchOptimizer) -> None:
    base = inspect.unwrap(decl.fn)
    old = _BY_CLASS.get(decl.torch_class)
    if old is not None and fn_qualname(old.fn) != fn_qualname(base):
        raise ValueError(
            f"torch.optim.{decl.torch_class} is declared twice: {fn_qualname(old.fn)} and "
            f"{fn_qualname(base)}"
        )
    _BY_FN[base] = _BY_CLASS[decl.torch_class] = _BY_QUALNAME[fn_qualname(base)] = decl


def state_converters(fn: Callable, export: Callable, load: Callable) -> None:
    """Names the converters of ``fn``'s state (a :class:`CustomState` of its declared state).

    For optimizers whose state is not a set of per-parameter buffers (L-BFGS: flat history
    lists; SparseAdam: its own per-parameter step); called in the optimizer's module, after
    the converters are defined.
    """
    decl = declaration(fn)
    if decl is None or decl.state is None:
        raise ValueError(f"{fn_qualname(fn)} has no torch_optimizer declaration with a state type")
    _register(decl._replace(custom=CustomState(export, load, decl.state)))


def declaration(fn_or_class) -> Optional[TorchOptimizer]:
    """The :class:`TorchOptimizer` of an optimizer function, a torch class or its name; ``None``
    when there is none.

    Example::

        >>> import jaxupdate as ju
        >>> from jaxupdate._described import declaration
        >>> declaration("Adagrad").fn is ju.adagrad, declaration(ju.adagrad).constructor_only
        (True, ('initial_accumulator_value',))
        >>> declaration(lambda lr=0.1: None) is None
        True
    """
    if isinstance(fn_or_class, str):
        return _BY_CLASS.get(fn_or_class)
    if isinstance(fn_or_class, type):
        return _BY_CLASS.get(fn_or_class.__name__)
    return _BY_FN.get(inspect.unwrap(fn_or_class)) if callable(fn_or_class) else None


def declarations() -> tuple:
    """Every declared optimizer's :class:`TorchOptimizer`, in declaration order."""
    import jaxupdate.optim  # noqa: F401 - every optimizer module declares itself on import

    return tuple(_BY_CLASS.values())


def state_names() -> dict:
    """``{state NamedTuple class name: human name}`` of the declared states (for error
    messages about a state).

    Example::

        >>> from jaxupdate._described import state_names
        >>> names = state_names()
        >>> names["TorchAdamState"], names["TorchMomentumState"]
        ('Adam/AdamW', 'SGD with momentum')
    """
    names: dict = {}
    for d in declarations():
        if d.state is not None:
            names.setdefault(d.state.__name__, []).append(d.state_name or d.torch_class)
    return {k: "/".join(dict.fromkeys(v)) for k, v in names.items()}


__all__ = [
    "CustomState",
    "Description",
    "Parity",
    "TORCH_OPTIMIZERS",
    "TorchOptimizer",
    "attach",
    "bind_kwargs",
    "declaration",
    "declarations",
    "described",
    "description",
    "state_converters",
    "state_names",
    "torch_optimizer",
]

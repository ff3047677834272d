"""Checkpoints of parameters and optimizer state with orbax: atomic saves, bitwise resumption.

A jaxupdate optimizer state is a pytree of arrays (NamedTuples, dicts, ``None`` fields,
``optax.EmptyState``, schedules' and ReduceLROnPlateau's state inside
``inject_hyperparams``), so it saves as it is: no ``state_dict`` conversion, no pickling of
functions. Hyperparameters that are Python numbers or schedules live in the transformation
(the code), not in the state; rebuild the same ``tx`` when resuming.

Guarantees, each tested in ``tests/test_checkpoint.py``:

- *bitwise resumption*: every array is stored with its dtype and bits (float64, float32,
  bfloat16, complex, int32 counters), so ``restore`` then the remaining steps give exactly
  the arrays an uninterrupted run gives;
- *atomic saves*: orbax writes step ``N`` into ``N.orbax-checkpoint-tmp`` and renames it to
  ``N`` only once everything is written (with a ``commit_success.txt`` marker inside). A
  process killed halfway leaves the temporary directory only: :func:`latest_step` and
  :func:`restore` ignore it and give the last complete step, and the next manager removes it;
- *no silent mismatch*: restoring into a template of another structure (another optimizer,
  other parameters) or shapes raises orbax's ``ValueError`` naming the path; a dtype that
  differs from the stored one raises too (orbax would cast), unless ``cast=True``.

Layout on disk (``directory/<step>/``): ``params/``, ``opt_state/`` (OCDBT/zarr arrays, with
their shardings' metadata), and ``extra/`` (JSON, for what else a run needs: epoch, data
position, seeds).

Example::

    >>> import tempfile, jax, jax.numpy as jnp, jaxupdate as ju
    >>> from jaxupdate import checkpoint
    >>> tx = ju.adam(lr=1e-3)
    >>> params = {"w": jnp.ones(3)}
    >>> opt_state = tx.init(params)
    >>> directory = tempfile.mkdtemp()
    >>> _ = checkpoint.save(directory, params, opt_state, step=100, extra={"epoch": 3})
    >>> # later, in a fresh process: templates (arrays or jax.ShapeDtypeStruct) give the
    >>> # structure, dtypes and shardings to restore into
    >>> params_like = jax.eval_shape(lambda: params)
    >>> r = checkpoint.restore(directory, params_like, jax.eval_shape(tx.init, params_like))
    >>> r.step, r.extra
    (100, {'epoch': 3})
    >>> bool((r.params["w"] == params["w"]).all())
    True

For a training loop, :class:`CheckpointManager` keeps one orbax manager open (``max_to_keep``,
optional asynchronous saves).
"""

from __future__ import annotations

import os
from typing import Any, NamedTuple, Optional

import jax
import numpy as np

from jaxupdate.fused._flat import flatten_like, unflatten_state

__all__ = ["CheckpointManager", "Restored", "all_steps", "latest_step", "restore", "save"]


def _ocp():
    try:
        import orbax.checkpoint as ocp
    except ImportError as e:  # pragma: no cover - orbax is a test dependency
        raise ImportError(
            "jaxupdate.checkpoint needs orbax-checkpoint: pip install orbax-checkpoint"
        ) from e
    return ocp


class Restored(NamedTuple):
    """What :func:`restore` returns."""

    step: int
    params: Any
    opt_state: Any
    extra: Optional[dict]


def _abstract(tree):
    """Arrays -> ShapeDtypeStruct (keeping their sharding); ShapeDtypeStructs stay."""

    def one(x):
        if isinstance(x, jax.ShapeDtypeStruct):
            return x
        if isinstance(x, jax.Array):
            return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding)
        if isinstance(x, np.ndarray) or np.isscalar(x):
            x = np.asarray(x)
            return jax.ShapeDtypeStruct(x.shape, x.dtype)
        return x

    return jax.tree.map(one, tree)


def _key_name(k) -> str:
    for attr in ("key", "idx", "name"):
        if hasattr(k, attr):
            return str(getattr(k, attr))
    return str(k)


def _check_leaves(item: str, metadata, template, cast: bool) -> None:
    """Raises on the first leaf whose stored shape (or, unless ``cast``, dtype) differs.

    Checked here, before orbax starts reading: its own shape check fails midway through the
    reads, and it would cast a dtype silently.
    """
    stored = {}
    for leaf in jax.tree.leaves(metadata):
        name = getattr(leaf, "name", None)
        if name is not None and hasattr(leaf, "shape") and hasattr(leaf, "dtype"):
            stored[name] = leaf
    for path, x in jax.tree_util.tree_flatten_with_path(template)[0]:
        meta = stored.get(".".join(_key_name(k) for k in path))
        if meta is None or not hasattr(x, "shape"):
            continue
        where = f"{item}{jax.tree_util.keystr(path)}"
        if tuple(meta.shape) != tuple(x.shape):
            raise ValueError(
                f"{where}: the checkpoint holds shape {tuple(meta.shape)}, the template asks "
                f"for {tuple(x.shape)}"
            )
        if not cast and np.dtype(meta.dtype) != np.dtype(x.dtype):
            raise ValueError(
                f"{where}: the checkpoint holds {np.dtype(meta.dtype)}, the template asks for "
                f"{np.dtype(x.dtype)} (pass cast=True to convert)"
            )


class CheckpointManager:
    """Numbered checkpoints of ``(params, opt_state, extra)`` in one directory (orbax).

    Args:
      directory: where the steps live (created if missing); any path orbax's ``epath``
        supports.
      max_to_keep: keep only the newest ``max_to_keep`` steps (default: all).
      async_save: write in a background thread, ``save`` returning once the arrays are
        copied off the devices (orbax's asynchronous checkpointing); call :meth:`wait`
        before reading what was saved, and :meth:`close` at the end. Default ``False``.
      read_only: only read (no saves, nothing deleted, the directory not created).

    Leftovers of an interrupted save (``<step>.orbax-checkpoint-tmp``) are removed when a
    writing manager opens the directory (a read-only one leaves them, and ignores them).

    Example::

        >>> import tempfile, jax.numpy as jnp, jaxupdate as ju
        >>> from jaxupdate.checkpoint import CheckpointManager
        >>> tx = ju.sgd(lr=0.1, momentum=0.9)
        >>> params = {"w": jnp.ones(2)}
        >>> opt_state = tx.init(params)
        >>> with CheckpointManager(tempfile.mkdtemp(), max_to_keep=2) as mgr:
        ...     for step in (10, 20, 30):
        ...         _ = mgr.save(step, params, opt_state)
        ...     mgr.all_steps(), mgr.restore(params, opt_state).step
        ([20, 30], 30)
    """

    def __init__(
        self,
        directory,
        *,
        max_to_keep: Optional[int] = None,
        async_save: bool = False,
        read_only: bool = False,
    ):
        ocp = _ocp()
        self._ocp = ocp
        self.directory = directory
        if read_only and not os.path.isdir(os.fspath(directory)):
            raise FileNotFoundError(f"no checkpoint directory {directory}")
        options = ocp.CheckpointManagerOptions(
            max_to_keep=max_to_keep,
            enable_async_checkpointing=async_save,
            # a reader neither creates the directory nor removes an ongoing save's files
            cleanup_tmp_directories=not read_only,
            create=not read_only,
        )
        self.read_only = read_only
        registry = ocp.handlers.DefaultCheckpointHandlerRegistry()
        for item in ("params", "opt_state"):
            registry.add(item, ocp.args.StandardSave, ocp.StandardCheckpointHandler)
            registry.add(item, ocp.args.StandardRestore, ocp.StandardCheckpointHandler)
        registry.add("extra", ocp.args.JsonSave, ocp.JsonCheckpointHandler)
        registry.add("extra", ocp.args.JsonRestore, ocp.JsonCheckpointHandler)
        self._manager = ocp.CheckpointManager(
            os.fspath(directory) if isinstance(directory, os.PathLike) else directory,
            options=options,
            handler_registry=registry,
        )

    def save(self, step: int, params, opt_state, *, extra: Optional[dict] = None) -> bool:
        """Saves ``params``, ``opt_state`` (and the JSON-able dict ``extra``) as ``step``.

        Always writes (a step below the latest one too); raises if ``step`` already exists.
        With ``async_save`` the write finishes in the background.
        """
        if self.read_only:
            raise ValueError(f"this CheckpointManager of {self.directory} is read-only")
        ocp = self._ocp
        # a fused optimizer's flat state is saved per leaf, as fused=False holds it: the
        # checkpoint restores into either (and on a GPU, where the state is per leaf)
        items = {
            "params": ocp.args.StandardSave(params),
            "opt_state": ocp.args.StandardSave(unflatten_state(opt_state)),
            "extra": ocp.args.JsonSave(dict(extra or {})),
        }
        return self._manager.save(int(step), args=ocp.args.Composite(**items), force=True)

    def restore(self, params_like, opt_state_like, *, step: Optional[int] = None, cast=False):
        """Restores step ``step`` (default: the latest complete one) into the templates.

        Args:
          params_like, opt_state_like: pytrees of arrays or ``jax.ShapeDtypeStruct`` giving
            the structure, dtypes and shardings to restore into (e.g. ``jax.eval_shape(
            tx.init, params_like)``; ``ShapeDtypeStruct(..., sharding=NamedSharding(...))``
            restores each device's shards directly, in another layout than saved if wanted).
          step: which step; default the latest complete one.
          cast: allow dtypes that differ from the stored ones (orbax converts).

        Returns:
          :class:`Restored` ``(step, params, opt_state, extra)``.

        Raises:
          FileNotFoundError: no complete checkpoint in the directory.
          ValueError: structure, shape or (unless ``cast``) dtype mismatch, naming the path.
        """
        ocp = self._ocp
        self._manager.wait_until_finished()
        if step is None:
            step = self._manager.latest_step()
            if step is None:
                raise FileNotFoundError(f"no complete checkpoint in {self.directory}")
        step = int(step)
        if step not in self._manager.all_steps():
            raise FileNotFoundError(
                f"no checkpoint of step {step} in {self.directory} "
                f"(steps: {list(self._manager.all_steps())})"
            )
        p_like, s_like = _abstract(params_like), _abstract(unflatten_state(opt_state_like))
        meta = self._manager.item_metadata(step)
        _check_leaves("params", meta["params"], p_like, cast)
        _check_leaves("opt_state", meta["opt_state"], s_like, cast)
        items = {
            "params": ocp.args.StandardRestore(p_like),
            "opt_state": ocp.args.StandardRestore(s_like),
            "extra": ocp.args.JsonRestore(),
        }
        r = self._manager.restore(step, args=ocp.args.Composite(**items))
        opt_state = flatten_like(r["opt_state"], opt_state_like)  # the template's layout
        return Restored(step, r["params"], opt_state, r["extra"])

    def latest_step(self) -> Optional[int]:
        """The newest complete step, or None."""
        return self._manager.latest_step()

    def all_steps(self) -> list:
        """Complete steps, oldest first (interrupted saves are not steps)."""
        return sorted(self._manager.all_steps())

    def wait(self) -> None:
        """Blocks until an asynchronous save has finished (and been committed)."""
        self._manager.wait_until_finished()

    def close(self) -> None:
        """Waits for pending saves and releases orbax's resources."""
        self._manager.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def save(directory, params, opt_state, *, step: int, extra: Optional[dict] = None):
    """Saves ``params`` and ``opt_state`` as checkpoint ``step`` of ``directory``, atomically.

    Returns once the checkpoint is complete on disk. The previous steps stay untouched until
    then: a crash during the save leaves them all restorable.

    Args:
      directory: the checkpoint directory (created if missing), holding one subdirectory per
        step.
      params, opt_state: pytrees of arrays (sharded arrays too: each process writes its
        shards).
      step: the step number (e.g. ``opt_state``'s update count, or the epoch).
      extra: a JSON-serialisable dict saved alongside (epoch, data-loader position, ...).

    Returns:
      The path of the step's directory.

    Example::

        >>> import tempfile, jax.numpy as jnp, jaxupdate as ju
        >>> from jaxupdate import checkpoint
        >>> d = tempfile.mkdtemp()
        >>> path = checkpoint.save(d, {"w": jnp.ones(2)}, ju.adam().init({"w": jnp.ones(2)}),
        ...                        step=1)
        >>> path.name
        '1'
    """
    with CheckpointManager(directory) as mgr:
        mgr.save(step, params, opt_state, extra=extra)
        mgr.wait()
        return _step_path(mgr, step)


def _step_path(mgr: CheckpointManager, step: int):
    import pathlib

    return pathlib.Path(os.fspath(mgr._manager.directory)) / str(int(step))


def restore(directory, params_like, opt_state_like, *, step: Optional[int] = None, cast=False):
    """Restores a checkpoint of ``directory`` (default: its latest complete step).

    See :meth:`CheckpointManager.restore` for the templates, ``cast`` and the errors.

    Example::

        >>> import tempfile, jax, jax.numpy as jnp, jaxupdate as ju
        >>> from jaxupdate import checkpoint
        >>> tx, params = ju.adam(), {"w": jnp.arange(3.0)}
        >>> d = tempfile.mkdtemp()
        >>> _ = checkpoint.save(d, params, tx.init(params), step=7)
        >>> r = checkpoint.restore(d, params, jax.eval_shape(tx.init, params))
        >>> r.step, r.params["w"].tolist()
        (7, [0.0, 1.0, 2.0])
    """
    with CheckpointManager(directory, read_only=True) as mgr:
        return mgr.restore(params_like, opt_state_like, step=step, cast=cast)


def latest_step(directory) -> Optional[int]:
    """The newest complete step saved in ``directory`` (None if none); reads only."""
    if not os.path.isdir(os.fspath(directory)):
        return None
    with CheckpointManager(directory, read_only=True) as mgr:
        return mgr.latest_step()


def all_steps(directory) -> list:
    """The complete steps saved in ``directory``, oldest first; reads only."""
    if not os.path.isdir(os.fspath(directory)):
        return []
    with CheckpointManager(directory, read_only=True) as mgr:
        return mgr.all_steps()

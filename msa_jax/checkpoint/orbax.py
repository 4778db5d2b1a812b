"""Training checkpoints in the workdir: orbax CheckpointManager around (state, data state).

A checkpoint holds the training state pytree (step, params, optimizer state; restored with the
shardings of an abstract target, so a resumed run never builds an unsharded copy) and the data
iterator's state as JSON, so a rerun of the same command continues exactly where the last
saved step left off. Saves are atomic (orbax writes to a temporary directory and renames): a
process killed mid-save leaves a `<step>.orbax-checkpoint-tmp*` directory, which the next run
ignores (it resumes from the latest complete checkpoint) and deletes.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import jax
import orbax.checkpoint as ocp

STATE = "state"
DATA = "data"


class Checkpointer:
  """Save every `every` steps (and on demand), keep the last `keep`, resume from the latest.

  Args:
    directory: where checkpoints live (`<workdir>/checkpoints`).
    every: save when step % every == 0 (0 or None: only explicit `save(..., force=True)`).
    keep: how many recent checkpoints to keep.
  """

  def __init__(self, directory: str | os.PathLike, every: int | None = 1000, keep: int = 3):
    if keep < 1:
      raise ValueError(f"keep={keep} must be >= 1")
    if every is not None and every < 0:
      raise ValueError(f"every={every} must be >= 0")
    self.directory = Path(directory).absolute()
    options = ocp.CheckpointManagerOptions(
        max_to_keep=keep, save_interval_steps=every or 1, create=True,
        cleanup_tmp_directories=True)  # leftovers of a save that was killed
    self._every = every or 0
    self._manager = ocp.CheckpointManager(self.directory, options=options)

  @property
  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def all_steps(self) -> list[int]:
    return list(self._manager.all_steps())

  def save(self, step: int, state: Any, data_state: dict | None = None,
           force: bool = False) -> bool:
    """Saves at `step` if it is a save step (or `force`); returns whether it saved."""
    if not force and (not self._every or step % self._every):
      return False
    if step in self._manager.all_steps():
      return False
    args = {STATE: ocp.args.StandardSave(state)}
    if data_state is not None:
      args[DATA] = ocp.args.JsonSave(data_state)
    return self._manager.save(step, args=ocp.args.Composite(**args), force=True)

  def restore(self, target: Any, step: int | None = None) -> tuple[Any, dict | None]:
    """(state, data state) of `step` (default: the latest), laid out like `target`.

    `target` may be abstract (`jax.ShapeDtypeStruct`s with shardings, e.g. from
    `jax.eval_shape`); arrays are restored straight into those shardings.
    """
    step = self.latest_step if step is None else step
    if step is None:
      raise FileNotFoundError(f"no checkpoint in {self.directory}")
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, target)
    args = {STATE: ocp.args.StandardRestore(abstract)}
    has_data = (self.directory / str(step) / DATA).is_dir()
    if has_data:
      args[DATA] = ocp.args.JsonRestore()
    restored = self._manager.restore(step, args=ocp.args.Composite(**args))
    return restored[STATE], (restored[DATA] if has_data else None)

  def restore_params(self, abstract_params: Any, step: int | None = None) -> tuple[Any, int]:
    """(params, step) of checkpoint `step` (default: the latest), laid out like
    `abstract_params`; the optimiser state and the data state are not read."""
    step = self.latest_step if step is None else step
    if step is None:
      raise FileNotFoundError(f"no checkpoint in {self.directory}")
    target = jax.tree.map(ocp.utils.to_shape_dtype_struct,
                          {"params": abstract_params, "step": jax.ShapeDtypeStruct((), "int32")})
    restore = ocp.args.PyTreeRestore(
        target, restore_args=ocp.checkpoint_utils.construct_restore_args(target),
        partial_restore=True)
    restored = self._manager.restore(step, args=ocp.args.Composite(**{STATE: restore}))
    return restored[STATE]["params"], int(restored[STATE]["step"])

  def wait(self) -> None:
    """Blocks until pending (asynchronous) saves are on disk."""
    self._manager.wait_until_finished()

  def close(self) -> None:
    self._manager.wait_until_finished()
    self._manager.close()

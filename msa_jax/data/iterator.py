"""A checkpointable iterator over any random-access batch source (synthetic, retrieval)."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any, Protocol

from msa_jax.validation import int_at_least


class BatchSource(Protocol):
  """Random access to global batches: `source[k]` is batch k (epoch k // batches_per_epoch)."""

  batches_per_epoch: int

  def __getitem__(self, k: int) -> Any: ...


class IndexedBatchIterator:
  """Iterates over `source[0], source[1], ...` with a small JSON-able state.

  `get_state()` is `{"seed": s, "epoch": e, "index": i}` (the next batch is batch i of epoch e);
  `set_state` of a saved state continues exactly where it was saved. The seed is the source's
  shuffling seed, stored so a state is never restored into an iterator over other batches.

  Args:
    source: the batches.
    seed: the source's seed.
    num_epochs: stop after this many epochs; None: never stop.
  """

  def __init__(self, source: BatchSource, seed: int, num_epochs: int | None = None):
    self.source = source
    self.seed = int(seed)
    self.num_epochs = None if num_epochs is None else int_at_least("num_epochs", num_epochs)
    self._next = 0

  def __iter__(self) -> Iterator[Any]:
    return self

  def __next__(self) -> Any:
    if (self.num_epochs is not None
        and self._next >= self.num_epochs * self.source.batches_per_epoch):
      raise StopIteration
    batch = self.source[self._next]
    self._next += 1
    return batch

  def get_state(self) -> dict[str, int]:
    epoch, index = divmod(self._next, self.source.batches_per_epoch)
    return {"seed": self.seed, "epoch": epoch, "index": index}

  def set_state(self, state: Mapping[str, Any]) -> None:
    """Restores a `get_state()` result.

    Raises:
      ValueError: a state with other keys or of another seed, or an epoch/index out of range.
    """
    if set(state) != {"seed", "epoch", "index"}:
      raise ValueError(f"iterator state must have keys seed, epoch, index; got {sorted(state)}")
    if int(state["seed"]) != self.seed:
      raise ValueError(f"iterator state seed={state['seed']} differs from this iterator's "
                       f"seed={self.seed}")
    epoch = int_at_least("state epoch", int(state["epoch"]), minimum=0)
    index = int_at_least("state index", int(state["index"]), minimum=0)
    if index >= self.source.batches_per_epoch:
      raise ValueError(f"state index={index} >= batches_per_epoch="
                       f"{self.source.batches_per_epoch}")
    self._next = epoch * self.source.batches_per_epoch + index

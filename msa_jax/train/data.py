"""Training data from the config: `make_data(config) -> (tokenizer, iterator, eval batches)`.

`config.data.kind` picks the source: `_SOURCES[kind](config)` returns the same triple. Every
source follows this contract (the loop relies on it, on one process or many):

* B = `config.train.batch_size` is the global batch size. With P processes, each process's
  iterator and eval batches hold only its rows `process_rows(B)` = [p * B / P, (p + 1) * B / P)
  of every global batch (`sharding.shard_batch` assembles the global arrays). The global
  batches must not depend on P: all processes' rows, in process order, are the batch a single
  process would load. B % P != 0 is refused by `make_data` before the source is called.
  (A source that can only build whole batches may build them and keep `local_rows(batch)`.)
* The iterator yields `MSABatch`es of numpy arrays (the local rows) and has `get_state()` /
  `set_state(state)`: a JSON-able dict, saved (from process 0) with every checkpoint and given
  back on resume, after which the iterator yields exactly the batches that followed the save.
  The state must be the same on every process (e.g. a global batch counter).
* Eval batches: a list of `MSABatch`es (local rows, as above), the same on every run.

Data flow. Real-text data (`beir`, `nq320k`) always comes through its tfds builder
(`msa_jax.datasets`): the folder `data.path` is prepared once into ArrayRecord files under
`data.data_dir` (default `~/.cache/msa_jax/tfds`, or `$MSA_JAX_TFDS_DIR`), opened with
`tfds.data_source`, and its batches are a `grain.MapDataset` (element k = global batch k, this
process's rows) read by grain; grain's iterator state is what the checkpoints store. The synthetic
task is generated in memory, or with `data.source = "tfds"` read back from its prepared
`msa_synthetic` dataset (the same corpus, now on disk to inspect or share).

`config.data.loader`: "grain" (the default for beir / nq320k: the `grain.MapDataset` read by
grain with one background thread) or "python" (the default for the synthetic task: an
`IndexedBatchIterator` over the same batch source). Both yield the same batches.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import ml_collections
import numpy as np

from msa_jax.data import retrieval, synthetic
from msa_jax.datasets import retrieval as datasets_retrieval
from msa_jax.datasets import synthetic as datasets_synthetic
from msa_jax.loading import pretrained

LOADERS = ("python", "grain")
# Grain reads with one thread a few batches ahead: batch building overlaps the train step.
_GRAIN_READ_OPTIONS = dict(num_threads=1, prefetch_buffer_size=4)


def process_rows(batch_size: int) -> slice:
  """This process's rows of a global batch of `batch_size` rows (all of them on one process).

  Raises:
    ValueError: `batch_size` is not divisible by `jax.process_count()`.
  """
  return synthetic.process_rows(batch_size, jax.process_index(), jax.process_count())


def local_rows(batch: Any, batch_size: int) -> Any:
  """This process's rows (`process_rows`) of every array of a global batch pytree."""
  rows = process_rows(batch_size)
  return jax.tree.map(lambda x: x[rows], batch)


class GrainIterator:
  """A grain dataset's iterator with the loop's iterator interface (JSON-able state).

  Args:
    dataset: a `grain.MapDataset` (or `IterDataset`) of batches.
    read_options: keyword arguments of `grain.ReadOptions` (threads, prefetch buffer) for a
      `MapDataset`.
  """

  def __init__(self, dataset, read_options: Mapping[str, int] | None = None):
    import grain  # pylint: disable=import-outside-toplevel
    if isinstance(dataset, grain.MapDataset):
      dataset = dataset.to_iter_dataset(grain.ReadOptions(**(read_options or {})))
    self._iterator = iter(dataset)

  def __iter__(self):
    return self

  def __next__(self):
    return next(self._iterator)

  def get_state(self) -> dict:
    return dict(self._iterator.get_state())

  def set_state(self, state: Mapping[str, Any]) -> None:
    """Restores a `get_state()` result.

    Raises:
      ValueError: `state` is not a grain state like this iterator's (e.g. the checkpoint was
        written with another `data.loader`).
    """
    expected = set(self.get_state())
    if set(state) != expected:
      raise ValueError(f"data state {dict(state)} is not a grain iterator state (keys "
                       f"{sorted(expected)}); was the checkpoint written with another "
                       "data.loader?")
    self._iterator.set_state(dict(state))


ROPE_MODES = ("document", "global")


def _rope_is_global(d: ml_collections.ConfigDict) -> bool:
  """`data.rope`: "document" (MSA: every document at positions 0..G-1) or "global" (the
  ablation: documents and prompt on one running position axis)."""
  rope = d.get("rope", "document")
  if rope not in ROPE_MODES:
    raise ValueError(f"data.rope={rope!r} is not supported; known: {ROPE_MODES}")
  return rope == "global"


def _make_iterator(d: ml_collections.ConfigDict, default: str, python, grain_dataset):
  """The train iterator `data.loader` asks for (`default` when unset): `python()` or a
  `GrainIterator` over `grain_dataset()`."""
  loader = d.get("loader", default)
  if loader == "python":
    return python()
  if loader == "grain":
    return GrainIterator(grain_dataset(), _GRAIN_READ_OPTIONS)
  raise ValueError(f"data.loader={loader!r} is not supported; known: {LOADERS}")


SYNTHETIC_SOURCES = ("generate", "tfds")


def _synthetic_data(cfg: ml_collections.ConfigDict):
  """(tokenizer, train iterator, eval batches) for the synthetic memory task."""
  d = cfg.data
  tok = synthetic.SyntheticTokenizer(d.num_filler_words, d.num_key_words, d.num_value_words)
  source = d.get("source", "generate")
  if source not in SYNTHETIC_SOURCES:
    raise ValueError(f"data.source={source!r} is not supported; known: {SYNTHETIC_SOURCES}")
  if source == "tfds":  # materialised by the msa_synthetic builder, read back
    corpora = {k: datasets_synthetic.load_corpus(args, d.get("data_dir"))
               for k, args in datasets_synthetic.corpora(d).items()}
  else:
    corpora = {k: datasets_synthetic.generate(args) for k, args in datasets_synthetic.corpora(d).items()}
  corpus, held_out = corpora["train"], corpora["eval"]
  spec = synthetic.BatchSpec(
      batch_size=cfg.train.batch_size, docs_per_sample=d.docs_per_sample,
      position_offset=cfg.msa.top_k, include_value=d.include_value,
      include_identifier=d.get("include_identifier", True), seed=d.seed,
      global_positions=_rope_is_global(d), hard_negatives=d.get("hard_negatives", 0),
      hard_negatives_after=d.get("hard_negatives_after", 0))
  shard = dict(process_index=jax.process_index(), process_count=jax.process_count())
  iterator = _make_iterator(
      d, "python", lambda: synthetic.SyntheticBatchIterator(corpus, spec, **shard),
      lambda: synthetic.grain_dataset(corpus, spec, **shard))
  rng = np.random.default_rng(d.seed + 1)
  b = cfg.train.batch_size
  rows = process_rows(b)
  eval_batches = [synthetic.build_batch(held_out, np.arange(i, i + b), spec, rng, rows)
                  for i in range(0, held_out.num_questions - b + 1, b)][:cfg.train.eval_batches]
  return tok, iterator, eval_batches


def _retrieval_data(cfg: ml_collections.ConfigDict):
  """(tokenizer, train iterator, eval batches) for real-text retrieval (BEIR, NQ320k).

  The dataset comes through its tfds builder (`msa_jax.datasets.load_retrieval`). Trains on
  `data.train_split`; evaluates on `data.eval_split`, or (when that is empty) on
  `data.eval_holdout` training queries held out from training.
  """
  d = cfg.data
  checkpoint = cfg.model.get("checkpoint")
  if not checkpoint:
    raise ValueError(f"data.kind={d.kind!r} needs the tokenizer of a pretrained model: set "
                     "model.checkpoint (e.g. 'smollm2')")
  splits = sorted({d.train_split, d.eval_split} - {None, ""})
  data = datasets_retrieval.load_retrieval(d.kind, d.path, splits, d.get("data_dir"))
  tok = pretrained.checkpoint_tokenizer(checkpoint)
  spec = retrieval.RetrievalSpec(
      batch_size=cfg.train.batch_size, docs_per_sample=d.docs_per_sample,
      doc_tokens=d.doc_tokens, prompt_tokens=d.prompt_tokens, max_positives=d.max_positives,
      head=d.head, question_prefix=d.question_prefix, answer_marker=d.answer_marker,
      position_offset=cfg.msa.top_k, seed=d.seed)
  task = retrieval.RetrievalTask(data, tok, spec)
  rows = process_rows(cfg.train.batch_size)
  train_ids = eval_ids = None
  eval_split = d.eval_split or d.train_split
  if not d.eval_split:
    train_ids, eval_ids = retrieval.holdout_split(len(task.samples(d.train_split)),
                                                  d.eval_holdout, d.seed)
  source = retrieval.RetrievalBatchSource(task, d.train_split, train_ids, rows)
  iterator = _make_iterator(d, "grain", lambda: retrieval.RetrievalBatchIterator(source),
                            lambda: retrieval.grain_dataset(source))
  eval_batches = task.eval_batches(eval_split, cfg.train.eval_batches, eval_ids, rows)
  return tok, iterator, eval_batches


_SOURCES = {"synthetic": _synthetic_data, "beir": _retrieval_data, "nq320k": _retrieval_data}


def make_data(cfg: ml_collections.ConfigDict):
  """(tokenizer, train iterator, eval batches) for `cfg.data.kind` (see the module docstring).

  Raises:
    ValueError: an unknown kind, or a global batch size not divisible by the process count.
  """
  kind = cfg.data.kind
  if kind not in _SOURCES:
    raise ValueError(f"data.kind={kind!r} is not supported; known: {sorted(_SOURCES)}")
  try:
    process_rows(cfg.train.batch_size)
  except ValueError as e:
    raise ValueError(f"train.batch_size={cfg.train.batch_size}: {e}") from None
  return _SOURCES[kind](cfg)

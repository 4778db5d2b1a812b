"""Real-text generative retrieval, shared by the BEIR and NQ320k tasks (`tasks.beir`,
`tasks.nq320k`): question -> the identifier `[m]` of its relevant memory document.

The dataset comes through its tfds builder (`msa_jax.datasets.load_retrieval`); the texts are
written with the pretrained checkpoint's tokenizer (`model.checkpoint`); prompts follow the
config's template (`data.head`, `data.question_prefix`, `data.answer_marker`). Trains on
`data.train_split`; evaluates on `data.eval_split`, or (when that is empty) on
`data.eval_holdout` training queries held out from training. Evaluator: "retrieval"
(`python -m msa_jax.evaluate`: router and generative retrieval against BM25).
"""

from __future__ import annotations

from msa_jax import checkpoint
from msa_jax.data import retrieval
from msa_jax.datasets import retrieval as datasets_retrieval
from msa_jax.tasks import base

DEFAULT_TEMPLATE = base.Template()


class RetrievalTask(base.Task):
  """Generative retrieval over a dataset of kind `name` ("beir", "nq320k"); `eval_split` is the
  split evaluated when neither the evaluation nor the training config names one;
  `require_files(path, splits)` (optional) names a missing file of the dataset folder before it
  is read."""

  evaluators = ("retrieval",)

  def __init__(self, name: str, eval_split: str, require_files=None):
    self.name = name
    self.eval_split = eval_split
    self._require_files = require_files

  def check_files(self, path: str, splits) -> None:
    """Raises FileNotFoundError naming a file of `splits` missing in the dataset folder."""
    if self._require_files is not None:
      self._require_files(path, list(splits))

  def tokenizer(self, config):
    """The tokenizer of `model.checkpoint`.

    Raises:
      ValueError: no `model.checkpoint`.
    """
    name = config.model.get("checkpoint")
    if not name:
      raise ValueError(f"data.kind={self.name!r} needs the tokenizer of a pretrained model: "
                       "set model.checkpoint (e.g. 'smollm2')")
    return checkpoint.checkpoint_tokenizer(name)

  def template(self, data) -> base.Template:
    return base.Template(**{k: str(data.get(k, v)) for k, v in DEFAULT_TEMPLATE.to_dict().items()})

  def data(self, config):
    d = config.data
    if not config.model.get("checkpoint"):
      self.tokenizer(config)  # refuses before the data is read
    splits = sorted({d.train_split, d.eval_split} - {None, ""})
    data = datasets_retrieval.load_retrieval(self.name, d.path, splits, d.get("data_dir"))
    tok = self.tokenizer(config)
    t = self.template(d)
    spec = retrieval.RetrievalSpec(
        batch_size=config.train.batch_size, docs_per_sample=d.docs_per_sample,
        doc_tokens=d.doc_tokens, prompt_tokens=d.prompt_tokens, max_positives=d.max_positives,
        head=t.head, question_prefix=t.question_prefix, answer_marker=t.answer_marker,
        position_offset=config.msa.top_k, seed=d.seed)
    task = retrieval.RetrievalTask(data, tok, spec)
    rows = base.process_rows(config.train.batch_size)
    train_ids = eval_ids = None
    eval_split = d.eval_split or d.train_split
    if not d.eval_split:
      train_ids, eval_ids = retrieval.holdout_split(len(task.samples(d.train_split)),
                                                    d.eval_holdout, d.seed)
    source = retrieval.RetrievalBatchSource(task, d.train_split, train_ids, rows)
    iterator = base.make_iterator(d, "grain", lambda: retrieval.RetrievalBatchIterator(source),
                                  lambda: retrieval.grain_dataset(source))
    eval_batches = task.eval_batches(eval_split, config.train.eval_batches, eval_ids, rows)
    return tok, iterator, eval_batches

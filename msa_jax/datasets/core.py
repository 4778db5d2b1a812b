"""What every msa_jax tfds builder shares: configs named after their source, the data dir, and
`prepare` (build once into ArrayRecord files, then open them with `tfds.data_source`).

Nothing here imports TensorFlow: tensorflow-datasets builds and reads ArrayRecord datasets with
numpy alone.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import tensorflow_datasets as tfds

from msa_jax.runtime.cache import user_cache_dir

FILE_FORMAT = "array_record"  # random access for grain; no TensorFlow needed to read it
DATA_DIR_ENV = "MSA_JAX_TFDS_DIR"


def default_data_dir() -> Path:
  """Where builders are prepared unless a data dir is given: `$MSA_JAX_TFDS_DIR`, else
  `user_cache_dir("tfds")` (`$XDG_CACHE_HOME/msa_jax/tfds` or `~/.cache/msa_jax/tfds`)."""
  return Path(os.environ.get(DATA_DIR_ENV) or user_cache_dir("tfds"))


def data_dir_of(data_dir: str | os.PathLike | None) -> Path:
  """`data_dir`, or the default one when it is None or ""."""
  return Path(data_dir) if data_dir else default_data_dir()


@dataclasses.dataclass
class SourceConfig(tfds.core.BuilderConfig):
  """A builder config for one source: files on disk or the parameters of a generator.

  Attributes:
    source: what the examples are made from (a folder path, or the generator's parameters as
      JSON); recorded in the dataset's metadata.
  """
  source: str = ""


def fingerprint(parts: Iterable[Any]) -> str:
  """8 hex digits identifying `parts` (JSON-able values)."""
  text = json.dumps(list(parts), sort_keys=True, default=str)
  return hashlib.sha256(text.encode()).hexdigest()[:8]


def files_fingerprint(files: Sequence[Path]) -> str:
  """`fingerprint` of files' absolute paths, sizes and modification times: a changed source
  file gives another config name, so a stale prepared copy is never read."""
  parts = []
  for f in files:
    st = f.stat()
    parts.append((str(f.resolve()), st.st_size, st.st_mtime_ns))
  return fingerprint(parts)


def config_name(stem: str, digest: str) -> str:
  """A readable, valid config name: `stem` in lower case letters, digits and `_`, then
  `-digest`."""
  clean = re.sub(r"[^a-z0-9_]+", "_", stem.lower()).strip("_") or "data"
  return f"{clean}-{digest}"


def _is_prepared(builder: tfds.core.DatasetBuilder) -> bool:
  return (Path(builder.data_dir) / tfds.core.constants.DATASET_INFO_FILENAME).is_file()


def prepare(builder: tfds.core.DatasetBuilder) -> Mapping[str, Any]:
  """Builds `builder` into its data dir unless it is there, then opens every split with
  `tfds.data_source` (random-access `ArrayRecordDataSource`s, split name -> source).

  With several JAX processes, process 0 builds while the others wait at a barrier.
  """
  import jax  # pylint: disable=import-outside-toplevel
  if not _is_prepared(builder) and jax.process_index() == 0:
    try:
      builder.download_and_prepare(file_format=FILE_FORMAT)
    except OSError:
      if not _is_prepared(builder):  # not a concurrent writer that finished first
        raise
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils  # pylint: disable=import-outside-toplevel
    multihost_utils.sync_global_devices(f"tfds prepared {builder.info.full_name}")
  name = f"{builder.name}/{builder.builder_config.name}:{builder.version}"
  return tfds.data_source(name, data_dir=str(builder.data_dir_root))


def text(value: Any) -> str:
  """A tfds Text feature's value (bytes from a data source) as str."""
  return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def read_all(source: Any, chunk: int = 4096) -> Iterable[Mapping[str, Any]]:
  """Every record of a data source, in order, read `chunk` at a time."""
  for start in range(0, len(source), chunk):
    yield from source.__getitems__(list(range(start, min(start + chunk, len(source)))))


class OnDemand(Sequence):
  """A read-only sequence of str whose items are read when asked (`_read(i)`, 0 <= i < len);
  indexing from the end and slices (lists) as for a tuple."""

  def __len__(self) -> int:
    raise NotImplementedError

  def _read(self, i: int) -> str:
    raise NotImplementedError

  def __getitem__(self, i):
    if isinstance(i, slice):
      return [self[j] for j in range(*i.indices(len(self)))]
    if not -len(self) <= i < len(self):
      raise IndexError(f"{type(self).__name__} index {i} out of range ({len(self)} items)")
    return self._read(i % len(self))


class Column(OnDemand):
  """One Text feature of a data source as a read-only sequence of str, read on demand.

  Args:
    source: a random-access data source (`tfds.data_source(...)[split]`).
    feature: the feature's name.
  """

  def __init__(self, source: Any, feature: str):
    self.source = source
    self.feature = feature

  def __len__(self) -> int:
    return len(self.source)

  def _read(self, i: int) -> str:
    return text(self.source[i][self.feature])

  def __iter__(self):
    return (text(r[self.feature]) for r in read_all(self.source))

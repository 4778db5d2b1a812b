"""The persistent memory bank of Memory Sparse Attention (inference stage 1, paper section 3.4).

Stage 1 encodes every memory document once and keeps, for each router layer, three arrays over
all C chunks of all M documents: the pooled routing keys K̄^R (`keys`, L2-normalised), and the
pooled attention keys K̄ (`k`) and values V̄ (`v`), each [C, J, D]. Stage 2 scans every routing
key (`layer_arrays`); stage 3 reads the content blocks of the selected documents only (`gather`).
This module is storage only (numpy and the filesystem, through the shard store in store.py); the
encoder that fills it lives elsewhere.

On-disk format, version 1 (one directory):

  manifest.json               the only entry point; every mutation replaces it atomically
  manifest.next.json          a staged bank being built beside the published one (optional)
  .lock                       advisory lock taken by a writer (readers never lock)
  shard-000003-1f2e3d4c/      a shard: a run of whole documents, in bank order; never modified
    docs.json                 {"ids", "texts", "lengths", "num_chunks"} of its documents
    L{layer}.{keys,k,v}.npy   [c, J, D] per router layer; bfloat16 is stored as its <u2 bits

manifest.json holds the format name and version, a generation counter, the caller's fingerprint
and metadata, the dtype, layer ids, J, D, chunk size and shard_docs, the totals, and the shards in
bank order with the size in bytes and the sha256 of every file. Documents are numbered by their
position in shard order, and a document's chunks are contiguous, so chunk indices follow.

Commit protocol: new shards are written under fresh unique names and fsynced; then a temporary
manifest is written and fsynced, moved over manifest.json with `os.replace`, and the directory is
fsynced. `add` appends shards; `remove` rewrites only the shards that held removed documents. A
writer that dies at any point leaves the previous manifest, hence the previous bank, intact; what
it left behind (unreferenced shard directories, manifest.json.tmp-*) is ignored by readers and
deleted after the next successful commit. One writer at a time; a writer whose bank changed on
disk since it was opened is refused (reopen it).

Staging (`MemoryBank.create(..., staged=True)`): a new bank is built in the same directory under
manifest.next.json, committing increments exactly as above, while readers keep seeing the
published manifest.json and its shards (neither is touched; shards either manifest refers to are
never deleted). `publish` then makes the staged bank the bank with one `os.replace` of
manifest.next.json over manifest.json, and only after that deletes the old bank's shards. A
writer killed at any point leaves the old bank or the new one published, and a staged bank can be
reopened (`MemoryBank.open(path, staged=True)`) to continue it.
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
import shutil
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import ml_dtypes
import numpy as np

from msa_jax.memory import store
from msa_jax.validation import int_at_least, is_int, same_value


FORMAT = "msa_jax.memory_bank"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
STAGED_MANIFEST = "manifest.next.json"
LOCK_FILE = store.LOCK_FILE
DOCS_FILE = "docs.json"
ARRAY_NAMES = ("keys", "k", "v")
DTYPES = {"float32": np.dtype(np.float32), "bfloat16": np.dtype(ml_dtypes.bfloat16)}
STORAGE_DTYPES = {"float32": np.dtype("<f4"), "bfloat16": np.dtype("<u2")}
# How far from 1 the norm of a stored routing key may be (all-zero keys are allowed too).
KEY_NORM_TOLERANCE = {"float32": 1e-3, "bfloat16": 1e-2}

_MANIFEST_FIELDS = {
    "format": str, "format_version": int, "generation": int, "next_shard": int,
    "fingerprint": dict, "metadata": (dict, list, str, int, float, bool, type(None)),
    "dtype": str, "layer_ids": list, "num_kv_heads": int, "head_dim": int, "chunk_size": int,
    "shard_docs": (int, type(None)), "num_docs": int, "num_chunks": int, "shards": list,
}


class BankError(store.StoreError):
  """A memory bank on disk is corrupt, incompatible, or not what the caller expects."""


class FingerprintMismatchError(BankError):
  """The bank was encoded with another model, MSA config, parameters or geometry."""


# --- small pure helpers ---------------------------------------------------------------------------


def _preview(items: Sequence, limit: int = 5) -> str:
  items = list(items)
  more = f" and {len(items) - limit} more" if len(items) > limit else ""
  return ", ".join(repr(x) for x in items[:limit]) + more


def num_chunks_for(length: int, chunk_size: int) -> int:
  """Chunks of a document of `length` tokens: ceil(length / chunk_size)."""
  return -(-int(length) // int(chunk_size))


def array_file(layer_id: int, name: str) -> str:
  """File name of one stored array of a shard, e.g. `L12.keys.npy`."""
  return f"L{layer_id}.{name}.npy"


def shard_files(layer_ids: Iterable[int]) -> list[str]:
  """Every file a shard holds, docs file first."""
  return [DOCS_FILE] + [array_file(l, n) for l in layer_ids for n in ARRAY_NAMES]


def to_json(value: Any, what: str) -> Any:
  """`value` as it reads back from JSON (tuples become lists, keys strings); errors name `what`."""
  try:
    return json.loads(json.dumps(value, allow_nan=False))
  except (TypeError, ValueError) as e:
    raise ValueError(f"{what} must be JSON-serialisable (no NaN/inf), got {value!r}: {e}") from e


def fingerprint_diff(stored: Any, expected: Any, prefix: str = "") -> list[str]:
  """Where two JSON fingerprints differ, one `field.path: bank X, expected Y` line each."""
  where = prefix or "<fingerprint>"
  if isinstance(stored, dict) and isinstance(expected, dict):
    lines = []
    for key in sorted(set(stored) | set(expected), key=str):
      path = f"{prefix}.{key}" if prefix else str(key)
      if key not in stored:
        lines.append(f"{path}: absent from the bank, expected {expected[key]!r}")
      elif key not in expected:
        lines.append(f"{path}: bank has {stored[key]!r}, absent from the expected fingerprint")
      else:
        lines.extend(fingerprint_diff(stored[key], expected[key], path))
    return lines
  if isinstance(stored, list) and isinstance(expected, list) and len(stored) == len(expected):
    lines = []
    for i, (a, b) in enumerate(zip(stored, expected)):
      lines.extend(fingerprint_diff(a, b, f"{prefix}[{i}]"))
    return lines
  if same_value(stored, expected):
    return []
  return [f"{where}: bank has {stored!r}, expected {expected!r}"]


def dtype_name(dtype: Any) -> str:
  """'float32' or 'bfloat16' from a name, numpy dtype or scalar type; ValueError otherwise."""
  if isinstance(dtype, str):
    name = dtype
  else:
    try:
      name = np.dtype(dtype).name
    except TypeError:
      name = repr(dtype)
  if name not in DTYPES:
    raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
  return name


def _check_layer_ids(layer_ids) -> list[int]:
  if isinstance(layer_ids, (str, bytes)) or not isinstance(layer_ids, Iterable):
    raise ValueError(f"layer_ids must be a sequence of ints >= 0, got {layer_ids!r}")
  ids = list(layer_ids)
  if not ids or not all(is_int(l) and l >= 0 for l in ids):
    raise ValueError(f"layer_ids must be a non-empty sequence of ints >= 0, got {layer_ids!r}")
  ids = [int(l) for l in ids]
  if len(set(ids)) != len(ids):
    raise ValueError(f"layer_ids must be distinct, got {ids}")
  return ids


def _check_id_list(doc_ids, what: str = "doc_ids") -> list[str]:
  if isinstance(doc_ids, (str, bytes)) or not isinstance(doc_ids, Iterable):
    raise ValueError(f"{what} must be a sequence of str, got {doc_ids!r}")
  ids = list(doc_ids)
  bad = [i for i in ids if not isinstance(i, str) or not i]
  if bad:
    raise ValueError(f"{what} must be non-empty str, got {_preview(bad)}")
  seen, dups = set(), []
  for i in ids:
    if i in seen and i not in dups:
      dups.append(i)
    seen.add(i)
  if dups:
    raise ValueError(f"{what} lists the same id more than once: {_preview(dups)}")
  return ids


def _check_int_vector(values, n: int, what: str) -> np.ndarray:
  array = np.asarray(values)
  if array.shape != (n,) or (n and array.dtype.kind not in "iu"):
    raise ValueError(f"{what} must be {n} ints (one per document), got shape {array.shape} "
                     f"dtype {array.dtype}")
  return array.astype(np.int64)


def _check_doc_indices(doc_indices, num_docs: int) -> np.ndarray:
  array = np.asarray(doc_indices)
  if array.ndim != 1 or (array.size and array.dtype.kind not in "iu"):
    raise ValueError(f"doc_indices must be a 1-D sequence of ints, got shape {array.shape} "
                     f"dtype {array.dtype}")
  array = array.astype(np.int64)
  bad = array[(array < 0) | (array >= num_docs)]
  if bad.size:
    raise IndexError(f"doc_indices {_preview(bad.tolist())} out of range: the bank holds "
                     f"{num_docs} documents")
  return array


def _check_doc_batch(doc_ids, texts, lengths, num_chunks, chunk_size: int
                     ) -> tuple[list[str], list[str | None], np.ndarray, np.ndarray]:
  """The document table of an `add`, checked: (ids, texts, lengths, chunk counts)."""
  ids = _check_id_list(doc_ids)
  n = len(ids)
  if n == 0:
    raise ValueError("add() needs at least one document")
  if texts is None:
    texts = [None] * n
  if isinstance(texts, (str, bytes)) or not isinstance(texts, Iterable):
    raise ValueError(f"texts must be a sequence of str or None, got {type(texts).__name__}")
  texts = list(texts)
  bad_texts = [t for t in texts if t is not None and not isinstance(t, str)]
  if len(texts) != n or bad_texts:
    raise ValueError(f"texts must be {n} str or None (one per document), got {len(texts)} "
                     f"items{' including ' + _preview(bad_texts) if bad_texts else ''}")
  lengths = _check_int_vector(lengths, n, "lengths")
  counts = _check_int_vector(num_chunks, n, "num_chunks")
  if (lengths < 1).any():
    i = int(np.argmax(lengths < 1))
    raise ValueError(f"document {ids[i]!r} has length {lengths[i]}: documents need >= 1 token")
  want = -(-lengths // chunk_size)
  if (counts != want).any():
    i = int(np.argmax(counts != want))
    raise ValueError(f"document {ids[i]!r}: num_chunks {counts[i]} != ceil(length "
                     f"{lengths[i]} / chunk_size {chunk_size}) = {want[i]}")
  return ids, texts, lengths, counts


def _check_layer_batch(layers, layer_ids: list[int], num_chunks: int, num_kv_heads: int,
                       head_dim: int, dtype: str) -> dict[int, dict[str, np.ndarray]]:
  """The arrays of an `add`, checked and viewed in their storage dtype."""
  if not isinstance(layers, Mapping):
    raise ValueError(f"layers must map layer id -> {{'keys', 'k', 'v'}}, got {type(layers)}")
  given = {int(l) if is_int(l) else l: v for l, v in layers.items()}
  missing = [l for l in layer_ids if l not in given]
  extra = [l for l in given if l not in layer_ids]
  if missing or extra:
    raise ValueError(f"layers must hold exactly the bank's router layers {layer_ids}: missing "
                     f"{missing}, unknown {extra}")
  want_shape = (num_chunks, num_kv_heads, head_dim)
  out = {}
  for layer_id in layer_ids:
    arrays = given[layer_id]
    if not isinstance(arrays, Mapping) or set(arrays) != set(ARRAY_NAMES):
      names = sorted(arrays) if isinstance(arrays, Mapping) else type(arrays)
      raise ValueError(f"layers[{layer_id}] must map exactly {list(ARRAY_NAMES)} to arrays, "
                       f"got {names}")
    out[layer_id] = {}
    for name in ARRAY_NAMES:
      array = np.asarray(arrays[name])
      what = f"layers[{layer_id}][{name!r}]"
      if array.shape != want_shape:
        raise ValueError(f"{what} must have shape [C, J, D] = {want_shape} (C = sum(num_chunks)), "
                         f"got {array.shape}")
      if array.dtype != DTYPES[dtype]:
        raise ValueError(f"{what} has dtype {array.dtype}, the bank stores {dtype}: cast it "
                         f"first (the bank never converts silently)")
      if not np.isfinite(array).all():
        chunk = int(np.argwhere(~np.isfinite(array))[0][0])
        raise ValueError(f"{what} holds NaN or inf (first at chunk {chunk})")
      if name == "keys":
        _check_unit_norm(array, dtype, what)
      out[layer_id][name] = np.ascontiguousarray(array).view(STORAGE_DTYPES[dtype])
  return out


def _check_unit_norm(keys: np.ndarray, dtype: str, what: str) -> None:
  norms = np.linalg.norm(keys.astype(np.float32), axis=-1)
  bad = (np.abs(norms - 1) > KEY_NORM_TOLERANCE[dtype]) & (norms != 0)
  if bad.any():
    chunk, head = (int(x) for x in np.argwhere(bad)[0])
    raise ValueError(f"{what} must be L2-normalised routing keys: chunk {chunk} head {head} has "
                     f"norm {norms[chunk, head]:.6g}")


def _chunk_ranges(first: np.ndarray, counts: np.ndarray) -> list[tuple[int, int]]:
  """Chunk ranges [lo, hi) of documents, adjacent ranges merged."""
  ranges = []
  for lo, n in zip(first.tolist(), counts.tolist()):
    if ranges and ranges[-1][1] == lo:
      ranges[-1] = (ranges[-1][0], lo + n)
    else:
      ranges.append((lo, lo + n))
  return ranges


def _slice_segments(segments: Sequence[tuple[int, np.ndarray]],
                    ranges: Sequence[tuple[int, int]]) -> list[np.ndarray]:
  """The pieces of `segments` (first chunk, array) covering the chunk `ranges`, in order."""
  parts = []
  for lo, hi in ranges:
    for start, array in segments:
      a, b = max(lo, start), min(hi, start + len(array))
      if a < b:
        parts.append(array[a - start:b - start])
  return parts


def _check_manifest(manifest: Any, path: Path) -> None:
  if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
    raise BankError(f"{path} is not a memory bank manifest (format "
                    f"{manifest.get('format') if isinstance(manifest, dict) else None!r}, "
                    f"expected {FORMAT!r})")
  version = manifest.get("format_version")
  if version != FORMAT_VERSION:
    raise BankError(f"{path} has format version {version!r}; this msa_jax reads version "
                    f"{FORMAT_VERSION} only")
  for field, kind in _MANIFEST_FIELDS.items():
    if field not in manifest or not isinstance(manifest[field], kind):
      raise BankError(f"{path}: field {field!r} is missing or malformed "
                      f"({manifest.get(field)!r})")
  if manifest["dtype"] not in DTYPES:
    raise BankError(f"{path}: unknown dtype {manifest['dtype']!r}")
  sizes = [manifest[f] for f in ("num_kv_heads", "head_dim", "chunk_size")]
  layer_ids = manifest["layer_ids"]
  if not (all(x >= 1 for x in sizes) and layer_ids and all(is_int(l) for l in layer_ids)):
    raise BankError(f"{path}: malformed geometry (num_kv_heads, head_dim, chunk_size "
                    f"{sizes}, layer_ids {layer_ids!r})")
  for shard in manifest["shards"]:
    if not (isinstance(shard, dict) and isinstance(shard.get("name"), str)
            and store.is_shard_name(shard["name"]) and isinstance(shard.get("files"), dict)
            and is_int(shard.get("num_docs")) and is_int(shard.get("num_chunks"))):
      raise BankError(f"{path}: malformed shard entry {shard!r}")
    want = set(shard_files(manifest["layer_ids"]))
    if set(shard["files"]) != want:
      raise BankError(f"{path}: shard {shard['name']} lists files {sorted(shard['files'])}, "
                      f"expected {sorted(want)}")
    for name, entry in shard["files"].items():
      if not (isinstance(entry, dict) and is_int(entry.get("bytes"))
              and isinstance(entry.get("sha256"), str)):
        raise BankError(f"{path}: shard {shard['name']} file {name}: malformed entry {entry!r}")


def _check_docs(docs: Any, shard: Mapping, chunk_size: int, path: Path) -> None:
  fields = ("ids", "texts", "lengths", "num_chunks")
  if not isinstance(docs, dict) or not all(isinstance(docs.get(f), list) for f in fields):
    raise BankError(f"{path}: expected lists {list(fields)}")
  n = shard["num_docs"]
  if any(len(docs[f]) != n for f in fields):
    raise BankError(f"{path}: lists must each hold the shard's {n} documents")
  ok = (all(isinstance(i, str) for i in docs["ids"])
        and all(t is None or isinstance(t, str) for t in docs["texts"])
        and all(is_int(l) and l >= 1 for l in docs["lengths"])
        and docs["num_chunks"] == [num_chunks_for(l, chunk_size) for l in docs["lengths"]]
        and sum(docs["num_chunks"]) == shard["num_chunks"])
  if not ok:
    raise BankError(f"{path}: document table inconsistent with the manifest (ids, texts, "
                    f"lengths or chunk counts)")


def _read_manifest(bank_dir: Path, name: str = MANIFEST) -> tuple[dict, bytes]:
  path = bank_dir / name
  try:
    data = path.read_bytes()
  except FileNotFoundError:
    what = "no memory bank" if name == MANIFEST else "no staged memory bank"
    raise FileNotFoundError(f"{what} at {bank_dir}: {name} is missing") from None
  try:
    manifest = json.loads(data)
  except ValueError as e:
    raise BankError(f"{path} is not valid JSON: {e}") from e
  _check_manifest(manifest, path)
  return manifest, data


def check_bank_dir(path) -> None:
  """Raises FileExistsError if `path` exists and is not a directory a bank may be written in
  (a file, or a directory holding files that are not a memory bank's)."""
  path = Path(path)
  if path.exists() and not path.is_dir():
    raise FileExistsError(f"{path} exists and is not a directory")
  if path.is_dir():
    others = [n for n in os.listdir(path) if n != MANIFEST and not store.is_leftover(n, STAGED_MANIFEST)]
    if others:
      raise FileExistsError(f"{path} holds files that are not a memory bank's "
                            f"({_preview(sorted(others))}); refusing to write there")


def _check_create_target(path: Path, overwrite: bool, staged: bool) -> dict | None:
  """Refuses to create a bank over another (unless `overwrite`) or over foreign files.

  A staged bank is created beside a published one (never over it); `overwrite` then replaces
  an earlier staged bank.

  Returns:
    The manifest being replaced (or, when staging, the published one), if it is readable.
  """
  check_bank_dir(path)
  if not path.is_dir():
    return None
  names = os.listdir(path)
  target = STAGED_MANIFEST if staged else MANIFEST
  old_manifest = None
  if target in names and not overwrite:
    what = "a staged memory bank (an unfinished encoding)" if staged else "a memory bank"
    raise FileExistsError(f"{what} already exists at {path}; pass overwrite=True to replace it")
  for name in (target, MANIFEST):
    if old_manifest is None and name in names:
      with contextlib.suppress(ValueError, OSError):
        old_manifest, _ = _read_manifest(path, name)
  return old_manifest


# --- the bank -------------------------------------------------------------------------------------


class MemoryBank:
  """A memory bank on disk: routing keys and pooled K/V per router layer, plus a document table.

  Create one with `MemoryBank.create`, fill it with `add`, load it with `MemoryBank.open`. Each
  document i owns chunks first_chunk[i] .. first_chunk[i] + chunk_counts[i] - 1; documents are
  numbered 0..num_docs-1 in bank order (insertion order; `remove` closes the gaps).
  """

  def __init__(self, path: Path, manifest: dict, manifest_bytes: bytes, shard_docs: list[dict],
               *, mmap: bool, staged: bool = False):
    """Internal: use `MemoryBank.create` or `MemoryBank.open`."""
    self._path = path
    self._mmap = mmap
    self._staged = staged
    self._set_state(manifest, manifest_bytes, shard_docs)

  # --- construction ---

  @classmethod
  def create(cls, path, *, fingerprint: Mapping, layer_ids: Sequence[int], num_kv_heads: int,
             head_dim: int, chunk_size: int, dtype, shard_docs: int | None = None,
             metadata: Any = None, overwrite: bool = False,
             staged: bool = False) -> "MemoryBank":
    """Creates an empty bank in a new (or empty) directory, or a staged one beside a bank.

    Args:
      path: the bank's directory; created with its parents if needed.
      fingerprint: JSON-able dict identifying what encoded the bank (model config, MSA config,
        parameter digest, chunk size, J, D, layer ids); `open` can insist on it.
      layer_ids: the router layers whose arrays the bank holds.
      num_kv_heads: J. head_dim: D. chunk_size: P, tokens per chunk.
      dtype: 'float32' or 'bfloat16' (or the numpy / ml_dtypes type).
      shard_docs: at most this many documents per shard file (None: one shard per `add`).
        Smaller shards make `remove` cheaper; one shard makes `layer_arrays` copy-free.
      metadata: free-form JSON.
      overwrite: replace a bank already at `path` (atomically: until the new manifest is in
        place, the old bank stays readable; then it is empty). With `staged`, replace an
        unfinished staged bank instead. Never deletes a directory that is not a bank.
      staged: build the bank under manifest.next.json; the published bank at `path` (if any)
        stays as it is until `publish` swaps the new one in (see the module docstring).

    Returns:
      The empty bank.
    """
    path = Path(path)
    fingerprint = to_json(fingerprint, "fingerprint")
    if not isinstance(fingerprint, dict):
      raise ValueError(f"fingerprint must be a dict, got {type(fingerprint).__name__}")
    layer_ids = _check_layer_ids(layer_ids)
    num_kv_heads = int_at_least("num_kv_heads", num_kv_heads)
    head_dim = int_at_least("head_dim", head_dim)
    chunk_size = int_at_least("chunk_size", chunk_size)
    if shard_docs is not None:
      shard_docs = int_at_least("shard_docs", shard_docs)
    dtype = dtype_name(dtype)
    metadata = to_json(metadata, "metadata")
    old_manifest = _check_create_target(path, overwrite, staged)
    path.mkdir(parents=True, exist_ok=True)
    manifest = {
        "format": FORMAT, "format_version": FORMAT_VERSION,
        "generation": old_manifest["generation"] + 1 if old_manifest else 0,
        "next_shard": old_manifest["next_shard"] if old_manifest else 0,
        "fingerprint": fingerprint, "metadata": metadata, "dtype": dtype, "layer_ids": layer_ids,
        "num_kv_heads": num_kv_heads, "head_dim": head_dim, "chunk_size": chunk_size,
        "shard_docs": shard_docs, "num_docs": 0, "num_chunks": 0, "shards": [],
    }
    bank = cls(path, manifest, b"", [], mmap=True, staged=staged)
    with bank._writer(check_stale=False):
      bank._commit(manifest, [])
    return bank

  @staticmethod
  def has_staged(path) -> bool:
    """Whether `path` holds a staged (unpublished) bank."""
    return (Path(path) / STAGED_MANIFEST).is_file()

  @classmethod
  def open(cls, path, *, expect_fingerprint: Mapping | None = None, verify: bool = True,
           mmap: bool = True, staged: bool = False) -> "MemoryBank":
    """Opens a bank, checking its format, fingerprint and files.

    Args:
      path: the bank's directory.
      staged: open the staged bank (manifest.next.json) instead of the published one.
      expect_fingerprint: if given, the bank's fingerprint must equal it (as JSON); otherwise
        FingerprintMismatchError lists the fields that differ.
      verify: check every file's sha256 (reads the whole bank once); sizes are always checked.
      mmap: memory-map the arrays (read lazily, shared with the page cache) instead of reading
        them into RAM on first use.

    Returns:
      The bank. Raises FileNotFoundError without a manifest, BankError for an unknown format
      version, or a missing, truncated or corrupt file (named).
    """
    path = Path(path)
    manifest, data = _read_manifest(path, STAGED_MANIFEST if staged else MANIFEST)
    if expect_fingerprint is not None:
      expected = to_json(expect_fingerprint, "expect_fingerprint")
      diff = fingerprint_diff(manifest["fingerprint"], expected)
      if diff:
        raise FingerprintMismatchError(
            f"memory bank {path} was encoded with a different fingerprint; differing fields:\n  "
            + "\n  ".join(diff[:20]) + ("\n  ..." if len(diff) > 20 else ""))
    shard_docs = []
    for shard in manifest["shards"]:
      shard_dir = path / shard["name"]
      for name, entry in shard["files"].items():
        store.check_file(shard_dir / name, entry, verify, "memory bank file", BankError)
      docs_path = shard_dir / DOCS_FILE
      try:
        docs = json.loads(docs_path.read_bytes())
      except ValueError as e:
        raise BankError(f"{docs_path} is not valid JSON: {e}") from e
      _check_docs(docs, shard, manifest["chunk_size"], docs_path)
      shard_docs.append(docs)
    return cls(path, manifest, data, shard_docs, mmap=mmap, staged=staged)

  def _set_state(self, manifest: dict, manifest_bytes: bytes, shard_docs: list[dict]) -> None:
    """Adopts a manifest and its shards' document tables. When `shard_docs` extends the current
    tables (an `add`), only the new shards' documents are indexed, so a commit costs the size
    of what it adds, not of the whole bank."""
    old = getattr(self, "_shard_docs", None)
    appended = (old is not None and len(shard_docs) >= len(old)
                and all(a is b for a, b in zip(old, shard_docs)))
    new = shard_docs[len(old):] if appended else shard_docs
    ids = [i for docs in new for i in docs["ids"]]
    texts = [t for docs in new for t in docs["texts"]]
    lengths = np.asarray([l for d in new for l in d["lengths"]], np.int64)
    counts = np.asarray([c for d in new for c in d["num_chunks"]], np.int64)
    sizes = np.asarray([len(d["ids"]) for d in new], np.int64)
    if appended:
      base, index = len(self._ids), self._index
      ids, texts = self._ids + ids, self._texts + texts
      lengths = np.concatenate([self._lengths, lengths])
      counts = np.concatenate([self._counts, counts])
      sizes = np.concatenate([np.diff(np.append(self._shard_first_doc, base)), sizes])
    else:
      base, index = 0, {}
    added = {doc_id: i for i, doc_id in enumerate(ids[base:], base)}
    if len(added) != len(ids) - base or any(doc_id in index for doc_id in added):
      dups = sorted({d for d in ids if ids.count(d) > 1})
      raise BankError(f"memory bank {self._path} holds duplicate document ids {_preview(dups)}")
    index.update(added)
    self._manifest = manifest
    self._manifest_bytes = manifest_bytes
    self._shard_docs = shard_docs
    self._ids, self._texts, self._index = ids, texts, index
    self._lengths, self._counts = lengths, counts
    self._first = np.cumsum(counts) - counts
    self._doc_shard = np.repeat(np.arange(len(shard_docs)), sizes)
    self._shard_first_doc = np.cumsum(sizes) - sizes
    shard_chunks = np.asarray([s["num_chunks"] for s in manifest["shards"]], np.int64)
    self._shard_first_chunk = np.cumsum(shard_chunks) - shard_chunks
    total = int(counts.sum())
    if (len(ids), total) != (manifest["num_docs"], manifest["num_chunks"]):
      raise BankError(f"memory bank {self._path}: manifest totals ({manifest['num_docs']} docs, "
                      f"{manifest['num_chunks']} chunks) differ from its shards "
                      f"({len(ids)}, {total})")
    self._layers: dict[int, list[dict[str, np.ndarray]]] = {}

  # --- properties ---

  @property
  def path(self) -> Path:
    return self._path

  @property
  def staged(self) -> bool:
    """True while the bank is staged (not yet published)."""
    return self._staged

  @property
  def _manifest_name(self) -> str:
    return STAGED_MANIFEST if self._staged else MANIFEST

  @property
  def fingerprint(self) -> dict:
    return copy.deepcopy(self._manifest["fingerprint"])

  @property
  def metadata(self) -> Any:
    return copy.deepcopy(self._manifest["metadata"])

  @property
  def dtype(self) -> np.dtype:
    """float32 or ml_dtypes.bfloat16: the dtype of every array the bank returns."""
    return DTYPES[self._manifest["dtype"]]

  @property
  def layer_ids(self) -> tuple[int, ...]:
    return tuple(self._manifest["layer_ids"])

  @property
  def num_kv_heads(self) -> int:
    return self._manifest["num_kv_heads"]

  @property
  def head_dim(self) -> int:
    return self._manifest["head_dim"]

  @property
  def chunk_size(self) -> int:
    return self._manifest["chunk_size"]

  @property
  def shard_docs(self) -> int | None:
    return self._manifest["shard_docs"]

  @property
  def generation(self) -> int:
    """Incremented by every commit."""
    return self._manifest["generation"]

  @property
  def num_shards(self) -> int:
    return len(self._manifest["shards"])

  @property
  def num_docs(self) -> int:
    return len(self._ids)

  @property
  def num_chunks(self) -> int:
    return self._manifest["num_chunks"]

  @property
  def doc_ids(self) -> list[str]:
    return list(self._ids)

  @property
  def first_chunk(self) -> np.ndarray:
    """[M] int64: index of each document's first chunk."""
    return self._first.copy()

  @property
  def chunk_counts(self) -> np.ndarray:
    """[M] int64: chunks per document, ceil(length / chunk_size)."""
    return self._counts.copy()

  @property
  def lengths(self) -> np.ndarray:
    """[M] int64: tokens per document."""
    return self._lengths.copy()

  def __len__(self) -> int:
    return self.num_docs

  def __repr__(self) -> str:
    return (f"MemoryBank({str(self._path)!r}, docs={self.num_docs}, chunks={self.num_chunks}, "
            f"layers={list(self.layer_ids)}, J={self.num_kv_heads}, D={self.head_dim}, "
            f"P={self.chunk_size}, dtype={self._manifest['dtype']}, shards={self.num_shards})")

  # --- lookups ---

  def doc_index(self, doc_id: str) -> int:
    """Position of `doc_id` in bank order; KeyError if the bank does not hold it."""
    try:
      return self._index[doc_id]
    except (KeyError, TypeError):
      raise KeyError(f"memory bank {self._path} holds no document {doc_id!r} "
                     f"({self.num_docs} documents)") from None

  def doc_indices(self, doc_ids: Iterable[str]) -> np.ndarray:
    """[n] int64 positions of several ids; KeyError names the unknown ones."""
    ids = list(doc_ids)
    unknown = [i for i in ids if not isinstance(i, str) or i not in self._index]
    if unknown:
      raise KeyError(f"memory bank {self._path} holds no document(s) {_preview(unknown)}")
    return np.asarray([self._index[i] for i in ids], np.int64)

  def texts(self, indices: Iterable[int]) -> list[str | None]:
    """Original texts (None where none was stored) of the documents at `indices`."""
    return [self._texts[i] for i in _check_doc_indices(list(indices), self.num_docs).tolist()]

  def chunk_doc(self) -> np.ndarray:
    """[C] int32: the document index of every chunk."""
    return np.repeat(np.arange(self.num_docs, dtype=np.int32), self._counts)

  # --- arrays ---

  def _check_layer(self, layer_id) -> int:
    if not (is_int(layer_id) and int(layer_id) in self._manifest["layer_ids"]):
      raise KeyError(f"layer {layer_id!r} is not a router layer of memory bank {self._path} "
                     f"(it holds layers {self._manifest['layer_ids']})")
    return int(layer_id)

  def _load_array(self, shard: Mapping, layer_id: int, name: str,
                  mmap: bool) -> np.ndarray:
    path = self._path / shard["name"] / array_file(layer_id, name)
    storage = STORAGE_DTYPES[self._manifest["dtype"]]
    shape = (shard["num_chunks"], self.num_kv_heads, self.head_dim)
    try:
      array = np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
    except (OSError, ValueError) as e:
      raise BankError(f"memory bank file {path} cannot be read: {e}") from e
    if array.dtype != storage or array.shape != shape:
      raise BankError(f"memory bank file {path} holds {array.dtype} {array.shape}, expected "
                      f"{storage} {shape}")
    array.flags.writeable = False
    return array

  def _layer(self, layer_id) -> list[dict[str, np.ndarray]]:
    """Per shard, the layer's arrays in their storage dtype (loaded once, then cached)."""
    layer_id = self._check_layer(layer_id)
    if layer_id not in self._layers:
      self._layers[layer_id] = [
          {name: self._load_array(shard, layer_id, name, self._mmap) for name in ARRAY_NAMES}
          for shard in self._manifest["shards"]]
    return self._layers[layer_id]

  def layer_shards(self, layer_id: int) -> list[tuple[int, np.ndarray, np.ndarray, np.ndarray]]:
    """Per shard (first chunk, keys, k, v), each [c, J, D]: memory-mapped, never copied."""
    return [(int(first), *(s[name].view(self.dtype) for name in ARRAY_NAMES))
            for first, s in zip(self._shard_first_chunk, self._layer(layer_id))]

  def layer_arrays(self, layer_id: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(keys, k, v) of one router layer over all chunks, each [C, J, D] in the bank's dtype.

    Read-only memory maps (no copy) when the bank has one shard; with several shards the arrays
    are concatenated in RAM (use `layer_shards` or `gather` to avoid that, or `compact`).
    """
    shards = self._layer(layer_id)
    if len(shards) == 1:
      return tuple(shards[0][name].view(self.dtype) for name in ARRAY_NAMES)
    shape = (0, self.num_kv_heads, self.head_dim)
    return tuple(np.concatenate([s[name] for s in shards]).view(self.dtype) if shards
                 else np.zeros(shape, self.dtype) for name in ARRAY_NAMES)

  def gather(self, layer_id: int, doc_indices: Sequence[int], max_chunks: int | None = None
             ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pooled K/V of the selected documents only, zero-padded to a common chunk count.

    Args:
      layer_id: a router layer.
      doc_indices: [n] document indices (repeats allowed).
      max_chunks: pad to this many chunks (a static shape for jit); default the largest count
        among the selected documents. A document with more chunks is an error, never truncated.

    Returns:
      k [n, Cmax, J, D], v [n, Cmax, J, D] in the bank's dtype, valid [n, Cmax] bool.
    """
    shards = self._layer(layer_id)
    indices = _check_doc_indices(doc_indices, self.num_docs)
    counts = self._counts[indices]
    if max_chunks is None:
      max_chunks = int(counts.max(initial=0))
    elif not (is_int(max_chunks) and max_chunks >= 0):
      raise ValueError(f"max_chunks must be an int >= 0 or None, got {max_chunks!r}")
    too_long = [self._ids[i] for i, c in zip(indices, counts) if c > max_chunks]
    if too_long:
      raise ValueError(f"documents {_preview(too_long)} have more than max_chunks={max_chunks} "
                       f"chunks (up to {int(counts.max())})")
    shape = (len(indices), max_chunks, self.num_kv_heads, self.head_dim)
    k, v = np.zeros(shape, self.dtype), np.zeros(shape, self.dtype)
    for row, (doc, count) in enumerate(zip(indices.tolist(), counts.tolist())):
      shard = self._doc_shard[doc]
      lo = int(self._first[doc] - self._shard_first_chunk[shard])
      k[row, :count] = shards[shard]["k"][lo:lo + count].view(self.dtype)
      v[row, :count] = shards[shard]["v"][lo:lo + count].view(self.dtype)
    valid = np.arange(max_chunks)[None, :] < counts[:, None]
    return k, v, valid

  # --- mutations ---

  @contextlib.contextmanager
  def _writer(self, check_stale: bool = True):
    """Holds the bank's writer lock; refuses if the manifest changed since this bank read it."""
    with store.exclusive_lock(self._path, f"memory bank {self._path}", BankError):
      if check_stale:
        try:
          on_disk = (self._path / self._manifest_name).read_bytes()
        except FileNotFoundError:
          raise BankError(f"memory bank {self._path} lost its {self._manifest_name}") from None
        if on_disk != self._manifest_bytes:
          raise BankError(f"memory bank {self._path} changed on disk since it was opened; "
                          f"open it again before changing it")
      yield

  def _commit(self, manifest: dict, shard_docs: list[dict]) -> None:
    """Makes `manifest` the bank's (atomically), adopts it, then deletes unreferenced files."""
    manifest = dict(manifest, generation=manifest["generation"] + 1,
                    num_docs=sum(s["num_docs"] for s in manifest["shards"]),
                    num_chunks=sum(s["num_chunks"] for s in manifest["shards"]))
    data = json.dumps(manifest, indent=1).encode("ascii")
    store.replace_file(self._path / self._manifest_name, data)
    self._set_state(manifest, data, shard_docs)
    other = MANIFEST if self._staged else STAGED_MANIFEST
    store.remove_orphans(self._path, store.live_shards(self._path, manifest, other))

  def publish(self) -> None:
    """Makes this staged bank the published bank at its path: one atomic `os.replace` of its
    manifest over manifest.json, then the previous bank's shards are deleted."""
    if not self._staged:
      raise BankError(f"memory bank {self._path} is already published")
    with self._writer():
      os.replace(self._path / STAGED_MANIFEST, self._path / MANIFEST)
      store.fsync_dir(self._path)
      self._staged = False
      store.remove_orphans(self._path, store.live_shards(self._path, self._manifest, STAGED_MANIFEST))

  def _write_shards(self, groups: Sequence[tuple[dict, list[tuple[int, int]]]],
                    segments: Callable[[int, str], Sequence[tuple[int, np.ndarray]]]
                    ) -> tuple[list[dict], int]:
    """Writes new shards; returns their manifest entries and the next shard number.

    Args:
      groups: per new shard, its docs table and the chunk ranges holding its content.
      segments: (layer id, array name) -> (first chunk, storage array) pieces the ranges index.
    """
    seq = self._manifest["next_shard"]
    entries, written = [], []
    storage = STORAGE_DTYPES[self._manifest["dtype"]]
    try:
      for docs, ranges in groups:
        name = store.new_shard_name(seq)
        seq += 1
        shard_dir = self._path / name
        shard_dir.mkdir()
        written.append(shard_dir)
        num_chunks = sum(hi - lo for lo, hi in ranges)
        files = {DOCS_FILE: store.write_json_file(shard_dir / DOCS_FILE, docs)}
        for layer_id in self._manifest["layer_ids"]:
          for array_name in ARRAY_NAMES:
            parts = _slice_segments(segments(layer_id, array_name), ranges)
            files[array_file(layer_id, array_name)] = store.write_npy(
                shard_dir / array_file(layer_id, array_name), parts,
                (num_chunks, self.num_kv_heads, self.head_dim), storage)
        store.fsync_dir(shard_dir)
        entries.append({"name": name, "num_docs": len(docs["ids"]), "num_chunks": num_chunks,
                        "files": files})
      store.fsync_dir(self._path)
    except BaseException:
      for shard_dir in written:
        shutil.rmtree(shard_dir, ignore_errors=True)
      raise
    return entries, seq

  def _stored_segments(self, shards: Iterable[int]
                       ) -> Callable[[int, str], list[tuple[int, np.ndarray]]]:
    """Reads these stored shards (memory-mapped) as segments for `_write_shards`."""
    entries = [(int(self._shard_first_chunk[s]), self._manifest["shards"][s]) for s in shards]

    def segments(layer_id, name):
      return [(first, self._load_array(shard, layer_id, name, mmap=True))
              for first, shard in entries]

    return segments

  def _docs_table(self, indices: Sequence[int]) -> dict:
    return {"ids": [self._ids[i] for i in indices], "texts": [self._texts[i] for i in indices],
            "lengths": self._lengths[indices].tolist(),
            "num_chunks": self._counts[indices].tolist()}

  def _groups(self, indices: np.ndarray, shard_docs: int | None) -> list[tuple[dict, list]]:
    """Stored documents `indices` split into new shards of at most `shard_docs` documents."""
    step = shard_docs or max(1, len(indices))
    return [(self._docs_table(part), _chunk_ranges(self._first[part], self._counts[part]))
            for part in (indices[i:i + step] for i in range(0, len(indices), step))]

  def add(self, doc_ids: Sequence[str], texts: Sequence[str | None] | None,
          lengths: Sequence[int], num_chunks: Sequence[int],
          layers: Mapping[int, Mapping[str, np.ndarray]]) -> None:
    """Appends documents as new shards (existing shards are not touched), then commits.

    Everything is validated before anything is written.

    Args:
      doc_ids: [n] new unique ids (str).
      texts: [n] original texts (str or None), or None for no texts.
      lengths: [n] token counts (>= 1).
      num_chunks: [n] chunk counts, each ceil(length / chunk_size).
      layers: {layer_id: {"keys", "k", "v"}} for every router layer of the bank, each
        [sum(num_chunks), J, D] in the bank's dtype, these documents' chunks in order; the
        routing keys L2-normalised (or all zero).
    """
    ids, texts, lengths, counts = _check_doc_batch(doc_ids, texts, lengths, num_chunks,
                                                   self.chunk_size)
    arrays = _check_layer_batch(layers, self._manifest["layer_ids"], int(counts.sum()),
                                self.num_kv_heads, self.head_dim, self._manifest["dtype"])
    with self._writer():
      present = [i for i in ids if i in self._index]
      if present:
        raise ValueError(f"documents {_preview(present)} are already in memory bank "
                         f"{self._path}; remove them first to replace them")
      step = self.shard_docs or len(ids)
      first = np.cumsum(counts) - counts
      groups = [({"ids": ids[a:b], "texts": texts[a:b], "lengths": lengths[a:b].tolist(),
                  "num_chunks": counts[a:b].tolist()}, _chunk_ranges(first[a:b], counts[a:b]))
                for a, b in ((a, a + step) for a in range(0, len(ids), step))]
      entries, seq = self._write_shards(groups, lambda l, name: [(0, arrays[l][name])])
      manifest = dict(self._manifest, shards=self._manifest["shards"] + entries, next_shard=seq)
      self._commit(manifest, self._shard_docs + [docs for docs, _ in groups])

  def remove(self, doc_ids: Iterable[str]) -> None:
    """Removes documents; rewrites only the shards that held them. Unknown ids: KeyError.

    The other documents keep their content and order; their indices and first chunks close up.
    """
    ids = _check_id_list(doc_ids)
    with self._writer():
      unknown = [i for i in ids if i not in self._index]
      if unknown:
        raise KeyError(f"memory bank {self._path} holds no document(s) {_preview(unknown)}; "
                       f"nothing removed")
      if not ids:
        return
      drop = np.zeros(self.num_docs, bool)
      drop[[self._index[i] for i in ids]] = True
      shards, docs_tables, plan, rewritten = [], [], [], []
      for s, shard in enumerate(self._manifest["shards"]):
        local = np.arange(self._shard_first_doc[s], self._shard_first_doc[s] + shard["num_docs"])
        if not drop[local].any():
          shards.append(shard)
          docs_tables.append(self._shard_docs[s])
        elif not drop[local].all():
          shards.append(None)  # Filled in once written.
          rewritten.append(s)
          plan.append(self._groups(local[~drop[local]], None)[0])
          docs_tables.append(plan[-1][0])
      entries, seq = self._write_shards(plan, self._stored_segments(rewritten))
      new = iter(entries)
      shards = [shard if shard is not None else next(new) for shard in shards]
      self._commit(dict(self._manifest, shards=shards, next_shard=seq), docs_tables)

  def compact(self, shard_docs: int | None = None) -> None:
    """Rewrites the whole bank into shards of at most `shard_docs` documents (None: one shard).

    One shard makes `layer_arrays` a copy-free memory map. The content is unchanged.
    """
    if shard_docs is not None:
      shard_docs = int_at_least("shard_docs", shard_docs)
    with self._writer():
      if not self.num_docs:
        return
      plan = self._groups(np.arange(self.num_docs), shard_docs)
      entries, seq = self._write_shards(plan, self._stored_segments(range(self.num_shards)))
      self._commit(dict(self._manifest, shards=entries, next_shard=seq),
                   [docs for docs, _ in plan])

  def set_metadata(self, metadata: Any) -> None:
    """Replaces the free-form JSON metadata (a commit of the manifest alone)."""
    metadata = to_json(metadata, "metadata")
    with self._writer():
      self._commit(dict(self._manifest, metadata=metadata), self._shard_docs)

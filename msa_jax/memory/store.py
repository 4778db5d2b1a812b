"""A directory of immutable, checksummed shards behind one atomically replaced manifest.

The storage mechanism under the memory bank (bank.py), independent of what the shards hold:
files are created once (never overwritten), hashed while written and fsynced; a manifest is
replaced with temp file + fsync + `os.replace` + directory fsync; a reader checks each file's
size (and sha256) against its manifest entry; shard directories no manifest refers to, and
leftover temp manifests, are deleted after a commit; one writer at a time holds an advisory
lock. numpy and the filesystem only.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

try:
  import fcntl
except ImportError:  # Not POSIX: writers are not locked against each other.
  fcntl = None

LOCK_FILE = ".lock"
TMP_SUFFIX = ".tmp-"  # temp manifests are `<manifest>.tmp-<hex>`
_SHARD_RE = re.compile(r"^shard-\d{6,}-[0-9a-f]{8}$")
_BLOCK_BYTES = 16 << 20


class StoreError(ValueError):
  """A stored file is missing, truncated or corrupt, or the store is locked by a writer."""


class _HashingWriter:
  """A write-only file wrapper that counts and hashes what goes through it."""

  def __init__(self, file):
    self._file = file
    self.sha256 = hashlib.sha256()
    self.size = 0

  def write(self, data) -> int:
    self._file.write(data)
    self.sha256.update(data)
    self.size += len(data)
    return len(data)

  def entry(self) -> dict:
    return {"bytes": self.size, "sha256": self.sha256.hexdigest()}


def new_shard_name(seq: int) -> str:
  """`shard-000003-1f2e3d4c`: the sequence number and a random suffix (never reused)."""
  return f"shard-{seq:06d}-{uuid.uuid4().hex[:8]}"


def is_shard_name(name: str) -> bool:
  return bool(_SHARD_RE.match(name))


def is_leftover(name: str, *manifests: str) -> bool:
  """Names a writer leaves (lock, temp manifests, shards, the extra `manifests`): a directory
  made only of them is safe to (re)create a store in."""
  return (name == LOCK_FILE or name in manifests or TMP_SUFFIX in name
          or is_shard_name(name))


def fsync_dir(path: Path) -> None:
  fd = os.open(path, os.O_RDONLY)
  try:
    os.fsync(fd)
  finally:
    os.close(fd)


def write_new_file(path: Path, write: Callable[[_HashingWriter], None]) -> dict:
  """Creates `path` (never overwrites), fills it, fsyncs; returns {'bytes', 'sha256'}."""
  with open(path, "xb") as f:
    writer = _HashingWriter(f)
    write(writer)
    f.flush()
    os.fsync(f.fileno())
  return writer.entry()


def write_npy(path: Path, parts: Sequence[np.ndarray], shape: tuple[int, ...],
              storage: np.dtype) -> dict:
  """Writes the concatenation of `parts` as one .npy file, streaming (no concatenated copy)."""
  if sum(len(p) for p in parts) != shape[0]:
    raise AssertionError(f"parts hold {sum(len(p) for p in parts)} rows, expected {shape[0]}")

  def write(f):
    header = {"descr": np.lib.format.dtype_to_descr(storage), "fortran_order": False,
              "shape": tuple(shape)}
    np.lib.format.write_array_header_1_0(f, header)
    for part in parts:
      rows = max(1, _BLOCK_BYTES // max(1, part[:1].nbytes))
      for i in range(0, len(part), rows):
        f.write(np.ascontiguousarray(part[i:i + rows], dtype=storage).tobytes())

  return write_new_file(path, write)


def write_json_file(path: Path, value: Any) -> dict:
  data = json.dumps(value).encode("ascii")  # ensure_ascii: any str round-trips exactly.
  return write_new_file(path, lambda f: f.write(data))


def replace_file(path: Path, data: bytes) -> None:
  """Atomically makes `data` the content of `path`: temp file, fsync, os.replace, dir fsync."""
  tmp = path.with_name(f"{path.name}{TMP_SUFFIX}{uuid.uuid4().hex[:8]}")
  write_new_file(tmp, lambda f: f.write(data))
  os.replace(tmp, path)
  fsync_dir(path.parent)


def sha256_file(path: Path) -> str:
  digest = hashlib.sha256()
  with open(path, "rb") as f:
    for block in iter(lambda: f.read(_BLOCK_BYTES), b""):
      digest.update(block)
  return digest.hexdigest()


def check_file(path: Path, entry: Mapping, verify: bool, what: str = "stored file",
               error: type[Exception] = StoreError) -> None:
  """Raises `error` naming `path` if it is missing, of the wrong size, or (verify) corrupt."""
  try:
    size = path.stat().st_size
  except FileNotFoundError:
    raise error(f"{what} {path} is missing") from None
  if size != entry["bytes"]:
    raise error(f"{what} {path} has {size} bytes, the manifest says "
                f"{entry['bytes']} (truncated or overwritten)")
  if verify and sha256_file(path) != entry["sha256"]:
    raise error(f"{what} {path} is corrupt: its sha256 differs from the manifest's")


def live_shards(directory: Path, manifest: Mapping, other: str) -> set[str] | None:
  """Shards `manifest` and the manifest file `other` (e.g. the published or the staged one)
  refer to; None when `other` exists but cannot be read (then nothing may be deleted)."""
  live = {shard["name"] for shard in manifest["shards"]}
  try:
    data = json.loads((directory / other).read_bytes())
    live |= {shard["name"] for shard in data["shards"]}
  except FileNotFoundError:
    pass
  except (OSError, ValueError, KeyError, TypeError):
    return None
  return live


def remove_orphans(directory: Path, live: set[str] | None) -> None:
  """Best effort: deletes shard directories not in `live` and temp manifests (nothing when
  `live` is None)."""
  if live is None:
    return
  for entry in os.scandir(directory):
    if is_shard_name(entry.name) and entry.name not in live:
      shutil.rmtree(entry.path, ignore_errors=True)
    elif TMP_SUFFIX in entry.name:
      with contextlib.suppress(OSError):
        os.unlink(entry.path)


@contextlib.contextmanager
def exclusive_lock(directory: Path, what: str, error: type[Exception] = StoreError
                   ) -> Iterator[None]:
  """Holds the directory's writer lock (created if needed); `error` if another process has it."""
  directory.mkdir(parents=True, exist_ok=True)
  fd = os.open(directory / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
  try:
    if fcntl is not None:
      try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
      except BlockingIOError:
        raise error(f"{what} is being written by another process") from None
    yield
  finally:
    os.close(fd)

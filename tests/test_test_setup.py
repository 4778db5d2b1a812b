"""The test session's own setup (tests/conftest.py): temporary files on tmpfs."""

import os
import subprocess
import sys
from pathlib import Path

from tests import conftest


def test_memory_basetemp_is_fresh_and_removes_dead_sessions_folders(tmp_path):
  dead = subprocess.Popen([sys.executable, "-c", "pass"])
  dead.wait()
  stale = tmp_path / f"{conftest.TMPFS_PREFIX}{dead.pid}"
  live = tmp_path / f"{conftest.TMPFS_PREFIX}{os.getppid()}"
  other = tmp_path / "someone_elses"
  for folder in (stale, live, other):
    (folder / "x").mkdir(parents=True)
  base = conftest.memory_basetemp(tmp_path, min_free=0)
  assert base == tmp_path / f"{conftest.TMPFS_PREFIX}{os.getpid()}"
  assert base.is_dir() and not any(base.iterdir())
  assert not stale.exists() and live.is_dir() and other.is_dir()


def test_memory_basetemp_declines_without_room_or_root(tmp_path):
  assert conftest.memory_basetemp(tmp_path, min_free=2**62) is None
  assert conftest.memory_basetemp(tmp_path / "missing", min_free=0) is None
  assert not any(tmp_path.iterdir())


def test_this_session_keeps_its_temporary_files_in_one_place(tmp_path):
  """On tmpfs (when /dev/shm had room and nothing chose another place) pytest's folders and
  TMPDIR, which the tests' commands inherit, are the same session folder; else neither is."""
  tmpdir = Path(os.environ.get("TMPDIR", "/tmp"))
  if tmpdir.parent == conftest.TMPFS and tmpdir.name.startswith(conftest.TMPFS_PREFIX):
    assert tmpdir in tmp_path.parents
  else:
    assert conftest.TMPFS not in tmp_path.parents

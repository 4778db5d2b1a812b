"""The persistent memory bank: round trips, incremental adds, removal, refusals, crash safety."""

import fcntl
import json
import os
import pickle
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import ml_dtypes
import numpy as np
import pytest

from msa_jax.memory import bank as bank_lib
from msa_jax.memory.bank import BankError, FingerprintMismatchError, MemoryBank

LAYERS = (3, 5)
J, D, P = 2, 4, 4
FINGERPRINT = {"model": {"name": "tiny", "num_layers": 6}, "msa": {"router_layers": [3, 5]},
               "params_sha256": "ab" * 32, "chunk_size": P, "J": J, "D": D,
               "layer_ids": list(LAYERS)}
DTYPES = {"float32": np.float32, "bfloat16": ml_dtypes.bfloat16}


def make_docs(n, seed, dtype="float32", prefix="d", layers=LAYERS):
  """n random documents: (ids, texts, lengths, num_chunks, layers) as `add` takes them."""
  rng = np.random.default_rng(seed)
  lengths = rng.integers(1, 4 * P, size=n)
  counts = -(-lengths // P)
  c = int(counts.sum())
  ids = [f"{prefix}{seed}-{i}" for i in range(n)]
  texts = [None if i % 3 == 1 else f"text of {ids[i]} \u00e9\u4e2d" for i in range(n)]

  def arrays():
    keys = rng.normal(size=(c, J, D)).astype(np.float32)
    keys /= np.linalg.norm(keys, axis=-1, keepdims=True)
    k, v = (rng.normal(size=(c, J, D)).astype(np.float32) for _ in range(2))
    return {name: x.astype(DTYPES[dtype]) for name, x in zip(("keys", "k", "v"), (keys, k, v))}

  return ids, texts, lengths.tolist(), counts.tolist(), {l: arrays() for l in layers}


def new_bank(path, dtype="float32", shard_docs=None, **kw):
  return MemoryBank.create(path, fingerprint=FINGERPRINT, layer_ids=LAYERS, num_kv_heads=J,
                           head_dim=D, chunk_size=P, dtype=dtype, shard_docs=shard_docs, **kw)


def snapshot(path):
  """Every file under `path` with its bytes: equal snapshots mean nothing changed on disk."""
  return {str(p.relative_to(path)): (p.read_bytes() if p.is_file() else None)
          for p in sorted(Path(path).rglob("*"))}


def bits(x):
  """Exact comparison for float32 and bfloat16 alike."""
  x = np.asarray(x)
  return x.view(np.uint8).reshape(x.shape + (-1,))


def assert_bank_equal(a, b):
  assert (a.num_docs, a.num_chunks, a.doc_ids) == (b.num_docs, b.num_chunks, b.doc_ids)
  assert a.texts(range(a.num_docs)) == b.texts(range(b.num_docs))
  for name in ("first_chunk", "chunk_counts", "lengths"):
    np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
  np.testing.assert_array_equal(a.chunk_doc(), b.chunk_doc())
  for layer in LAYERS:
    for x, y in zip(a.layer_arrays(layer), b.layer_arrays(layer)):
      np.testing.assert_array_equal(bits(x), bits(y))


def expected_content(docs):
  """Per document id, its (lengths, chunks of every layer array) from `make_docs` output."""
  ids, texts, lengths, counts, layers = docs
  first = np.cumsum(counts) - np.asarray(counts)
  return {doc_id: (text, length, {(l, name): layers[l][name][f:f + c]
                                  for l in LAYERS for name in ("keys", "k", "v")})
          for doc_id, text, length, f, c in zip(ids, texts, lengths, first, counts)}


def check_against(bank, content):
  """The bank holds exactly `content` (from `expected_content`), in its own order."""
  assert sorted(bank.doc_ids) == sorted(content)
  chunk_doc = bank.chunk_doc()
  assert chunk_doc.dtype == np.int32 and chunk_doc.shape == (bank.num_chunks,)
  for layer in LAYERS:
    keys, k, v = bank.layer_arrays(layer)
    assert keys.dtype == bank.dtype and keys.shape == (bank.num_chunks, J, D)
    stored = dict(zip(("keys", "k", "v"), (keys, k, v)))
    gk, gv, valid = bank.gather(layer, np.arange(bank.num_docs))
    for i, doc_id in enumerate(bank.doc_ids):
      text, length, arrays = content[doc_id]
      f, c = bank.first_chunk[i], bank.chunk_counts[i]
      assert bank.texts([i]) == [text] and bank.lengths[i] == length
      assert c == -(-length // P) and (chunk_doc[f:f + c] == i).all()
      for name in ("keys", "k", "v"):
        np.testing.assert_array_equal(bits(stored[name][f:f + c]), bits(arrays[layer, name]))
      np.testing.assert_array_equal(bits(gk[i, :c]), bits(arrays[layer, "k"]))
      np.testing.assert_array_equal(bits(gv[i, :c]), bits(arrays[layer, "v"]))
      assert valid[i, :c].all() and not valid[i, c:].any()
      assert not gk[i, c:].astype(np.float32).any() and not gv[i, c:].astype(np.float32).any()


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("mmap", [True, False])
def test_round_trip(tmp_path, dtype, mmap):
  docs = make_docs(7, seed=1, dtype=dtype)
  bank = new_bank(tmp_path / "bank", dtype=dtype, shard_docs=3, metadata={"corpus": "x"})
  bank.add(*docs)
  assert bank.num_shards == 3
  opened = MemoryBank.open(tmp_path / "bank", expect_fingerprint=FINGERPRINT, mmap=mmap)
  assert opened.dtype == np.dtype(DTYPES[dtype])
  assert opened.fingerprint == FINGERPRINT and opened.metadata == {"corpus": "x"}
  assert (opened.layer_ids, opened.num_kv_heads, opened.head_dim, opened.chunk_size) == (
      LAYERS, J, D, P)
  assert opened.doc_ids == docs[0] and opened.doc_index(docs[0][4]) == 4
  check_against(opened, expected_content(docs))
  assert_bank_equal(bank, opened)
  keys = opened.layer_shards(LAYERS[0])[0][1]
  assert isinstance(keys, np.memmap) == mmap and not keys.flags.writeable


def test_bfloat16_stored_as_raw_bits(tmp_path):
  docs = make_docs(2, seed=2, dtype="bfloat16")
  new_bank(tmp_path, dtype="bfloat16").add(*docs)
  bank = MemoryBank.open(tmp_path)
  shard = bank._manifest["shards"][0]["name"]
  raw = np.load(tmp_path / shard / f"L{LAYERS[1]}.v.npy")
  assert raw.dtype == np.dtype("<u2")
  np.testing.assert_array_equal(raw, docs[4][LAYERS[1]]["v"].view(np.uint16))


def test_batches_equal_one_add_and_compact(tmp_path):
  batches = [make_docs(n, seed=s) for n, s in ((3, 10), (1, 11), (5, 12))]
  whole = tuple(sum((list(b[i]) for b in batches), []) for i in range(4)) + (
      {l: {name: np.concatenate([b[4][l][name] for b in batches]) for name in ("keys", "k", "v")}
       for l in LAYERS},)
  one = new_bank(tmp_path / "one")
  one.add(*whole)
  many = new_bank(tmp_path / "many", shard_docs=2)
  for b in batches:
    many.add(*b)
  assert many.num_shards == 2 + 1 + 3 and one.num_shards == 1
  assert_bank_equal(MemoryBank.open(tmp_path / "one"), MemoryBank.open(tmp_path / "many"))
  # One shard: layer_arrays maps the file, no copy. compact() gets there from many shards.
  assert isinstance(MemoryBank.open(tmp_path / "one").layer_arrays(LAYERS[0])[1], np.memmap)
  many.compact()
  assert many.num_shards == 1 and isinstance(many.layer_arrays(LAYERS[0])[0], np.memmap)
  assert_bank_equal(MemoryBank.open(tmp_path / "one"), MemoryBank.open(tmp_path / "many"))
  assert sorted(os.listdir(tmp_path / "many")) == sorted(
      [".lock", "manifest.json", many._manifest["shards"][0]["name"]])


def test_remove_keeps_other_documents_consistent(tmp_path):
  docs = make_docs(10, seed=3)
  bank = new_bank(tmp_path, shard_docs=4)  # Shards: docs 0-3, 4-7, 8-9.
  bank.add(*docs)
  names = [s["name"] for s in bank._manifest["shards"]]
  untouched = snapshot(tmp_path / names[2])
  ids = docs[0]
  removed = [ids[1], ids[2], ids[4], ids[5], ids[6], ids[7]]  # Shard 1 goes entirely.
  bank.remove(removed)
  content = {i: c for i, c in expected_content(docs).items() if i not in removed}
  assert bank.doc_ids == [i for i in ids if i not in removed]
  check_against(bank, content)
  # Only the shard that kept some documents was rewritten; the untouched one is the same file.
  new_names = [s["name"] for s in bank._manifest["shards"]]
  assert len(new_names) == 2 and new_names[1] == names[2] and new_names[0] not in names
  assert snapshot(tmp_path / names[2]) == untouched
  assert sorted(os.listdir(tmp_path)) == sorted([".lock", "manifest.json"] + new_names)
  reopened = MemoryBank.open(tmp_path, expect_fingerprint=FINGERPRINT)
  check_against(reopened, content)
  with pytest.raises(KeyError, match="holds no document"):
    reopened.doc_index(ids[1])
  reopened.remove(reopened.doc_ids)
  assert reopened.num_docs == 0 and reopened.num_chunks == 0
  assert MemoryBank.open(tmp_path).num_docs == 0


def test_empty_bank(tmp_path):
  new_bank(tmp_path / "b", dtype="bfloat16")
  bank = MemoryBank.open(tmp_path / "b", expect_fingerprint=FINGERPRINT)
  assert (bank.num_docs, bank.num_chunks, bank.doc_ids, len(bank)) == (0, 0, [], 0)
  assert bank.chunk_doc().shape == (0,) and bank.first_chunk.shape == (0,)
  for x in bank.layer_arrays(LAYERS[0]):
    assert x.shape == (0, J, D) and x.dtype == np.dtype(ml_dtypes.bfloat16)
  k, v, valid = bank.gather(LAYERS[1], [])
  assert k.shape == v.shape == (0, 0, J, D) and valid.shape == (0, 0)
  assert bank.texts([]) == []
  bank.compact()
  bank.remove([])
  assert MemoryBank.open(tmp_path / "b").num_docs == 0


def test_gather_pads_and_refuses(tmp_path):
  docs = make_docs(4, seed=4)
  bank = new_bank(tmp_path, shard_docs=3)
  bank.add(*docs)
  k, v, valid = bank.gather(LAYERS[0], [3, 0, 3], max_chunks=6)
  assert k.shape == v.shape == (3, 6, J, D) and valid.shape == (3, 6)
  np.testing.assert_array_equal(valid.sum(1), bank.chunk_counts[[3, 0, 3]])
  np.testing.assert_array_equal(k[0], k[2])
  with pytest.raises(ValueError, match="more than max_chunks=1"):
    bank.gather(LAYERS[0], [0, 1, 2, 3], max_chunks=1)
  with pytest.raises(IndexError, match="out of range"):
    bank.gather(LAYERS[0], [4])
  with pytest.raises(IndexError, match="out of range"):
    bank.texts([-1])
  with pytest.raises(KeyError, match="not a router layer"):
    bank.gather(4, [0])
  with pytest.raises(KeyError, match="'nope'"):
    bank.doc_indices(["nope", docs[0][0]])


def _refused(path, call, error, match):
  """`call` raises `error` matching `match` and leaves every file under `path` as it was."""
  before = snapshot(path)
  with pytest.raises(error, match=match):
    call()
  assert snapshot(path) == before


def test_add_refusals_change_nothing(tmp_path):
  bank = new_bank(tmp_path)
  first = make_docs(3, seed=5)
  bank.add(*first)
  ids, texts, lengths, counts, layers = make_docs(3, seed=6)
  bad_counts = list(counts)
  bad_counts[1] += 1
  bad_layers = {l: dict(v) for l, v in layers.items()}
  cases = [
      ((["x", "y", "x"], texts, lengths, counts, layers), ValueError, "more than once: 'x'"),
      (([ids[0], first[0][2], ids[2]], texts, lengths, counts, layers), ValueError,
       "already in memory bank"),
      ((ids, texts, lengths, bad_counts, layers), ValueError,
       rf"{ids[1]}'?: num_chunks {bad_counts[1]} != ceil"),
      ((ids, texts, [0] + lengths[1:], counts, layers), ValueError, "length 0"),
      ((ids, texts[:2], lengths, counts, layers), ValueError, "texts must be 3"),
      ((ids, texts, lengths[:2], counts, layers), ValueError, "lengths must be 3 ints"),
      ((ids, texts, lengths, counts, {LAYERS[0]: layers[LAYERS[0]]}), ValueError,
       rf"missing \[{LAYERS[1]}\]"),
      ((ids, texts, lengths, counts, {**layers, 9: layers[LAYERS[0]]}), ValueError,
       r"unknown \[9\]"),
      ((ids, texts, lengths, counts,
        {**layers, LAYERS[1]: {"keys": layers[LAYERS[1]]["keys"], "k": layers[LAYERS[1]]["k"]}}),
       ValueError, rf"layers\[{LAYERS[1]}\] must map exactly"),
      ([], ValueError, "at least one document"),
  ]
  for args, error, match in cases:
    call = (lambda a=args: bank.add(*a)) if args else (lambda: bank.add([], [], [], [], layers))
    _refused(tmp_path, call, error, match)
  # Array-level problems, one at a time on the last layer.
  arrays = layers[LAYERS[1]]
  c = sum(counts)
  nan_v = arrays["v"].copy()
  nan_v[2, 1, 0] = np.nan
  for name, value, match in [
      ("k", arrays["k"][:-1], rf"shape \[C, J, D\] = \({c}, {J}, {D}\)"),
      ("k", arrays["k"].astype(ml_dtypes.bfloat16), "has dtype bfloat16, the bank stores float32"),
      ("keys", arrays["keys"] * 2, "must be L2-normalised routing keys: chunk 0 head 0"),
      ("v", nan_v, "NaN or inf .first at chunk 2."),
  ]:
    bad_layers[LAYERS[1]] = dict(arrays, **{name: value})
    _refused(tmp_path, lambda: bank.add(ids, texts, lengths, counts, bad_layers), ValueError,
             match)
  zero_keys = dict(arrays, keys=np.zeros_like(arrays["keys"]))  # Allowed: normalize(0) = 0.
  bank.add(ids, texts, lengths, counts, {**layers, LAYERS[1]: zero_keys})
  assert MemoryBank.open(tmp_path).num_docs == 6


def test_remove_and_create_refusals_change_nothing(tmp_path):
  bank = new_bank(tmp_path / "bank")
  docs = make_docs(3, seed=7)
  bank.add(*docs)
  path = tmp_path / "bank"
  _refused(path, lambda: bank.remove([docs[0][0], "ghost"]), KeyError, "'ghost'.*nothing removed")
  _refused(path, lambda: bank.remove([docs[0][0], docs[0][0]]), ValueError, "more than once")
  _refused(path, lambda: new_bank(path), FileExistsError, "overwrite=True")
  (tmp_path / "other").mkdir()
  (tmp_path / "other" / "notes.txt").write_text("mine")
  _refused(tmp_path / "other", lambda: new_bank(tmp_path / "other", overwrite=True),
           FileExistsError, "'notes.txt'")
  for kw, match in [({"dtype": "float16"}, "dtype must be one of"),
                    ({"layer_ids": [3, 3]}, "distinct"), ({"chunk_size": 0}, "chunk_size"),
                    ({"fingerprint": {"x": float("nan")}}, "JSON")]:
    args = dict(fingerprint=FINGERPRINT, layer_ids=LAYERS, num_kv_heads=J, head_dim=D,
                chunk_size=P, dtype="float32")
    args.update(kw)
    _refused(tmp_path, lambda a=args: MemoryBank.create(tmp_path / "new", **a), ValueError, match)
  assert not (tmp_path / "new").exists()
  # A second handle whose bank changed on disk is refused instead of losing the other's write.
  stale = MemoryBank.open(path)
  bank.remove([docs[0][1]])
  _refused(path, lambda: stale.add(*make_docs(1, seed=8)), BankError, "changed on disk")
  # Another writer holding the lock: refused, not blocked.
  fresh = MemoryBank.open(path)
  fd = os.open(path / ".lock", os.O_RDWR)
  try:
    fcntl.flock(fd, fcntl.LOCK_EX)
    _refused(path, lambda: fresh.remove([docs[0][0]]), BankError, "written by another process")
  finally:
    os.close(fd)
  # overwrite=True replaces the bank with an empty one and drops its shards.
  new_bank(path, overwrite=True)
  assert MemoryBank.open(path).num_docs == 0
  assert sorted(os.listdir(path)) == [".lock", "manifest.json"]


def test_open_refuses_bad_banks(tmp_path):
  path = tmp_path / "bank"
  new_bank(path, shard_docs=2).add(*make_docs(3, seed=9))
  manifest = json.loads((path / "manifest.json").read_text())
  shard = path / manifest["shards"][1]["name"]
  npy = shard / f"L{LAYERS[0]}.k.npy"

  # Fingerprint: the differing fields are named (tuples and lists are the same JSON).
  MemoryBank.open(path, expect_fingerprint=dict(FINGERPRINT, layer_ids=tuple(LAYERS)))
  other = json.loads(json.dumps(FINGERPRINT))
  other["params_sha256"] = "cd" * 32
  other["msa"]["router_layers"] = [3, 4]
  with pytest.raises(FingerprintMismatchError) as e:
    MemoryBank.open(path, expect_fingerprint=other)
  assert "params_sha256" in str(e.value) and "msa.router_layers[1]: bank has 5, expected 4" in str(
      e.value) and "chunk_size" not in str(e.value)

  original = npy.read_bytes()
  npy.write_bytes(original[:-8])
  with pytest.raises(BankError, match=f"{npy}.*bytes.*truncated"):
    MemoryBank.open(path, verify=False)
  flipped = bytearray(original)
  flipped[-1] ^= 1
  npy.write_bytes(bytes(flipped))
  with pytest.raises(BankError, match=f"{npy} is corrupt"):
    MemoryBank.open(path)
  MemoryBank.open(path, verify=False)  # Same size: only the checksum sees it.
  npy.unlink()
  with pytest.raises(BankError, match=f"{npy} is missing"):
    MemoryBank.open(path, verify=False)
  npy.write_bytes(original)
  MemoryBank.open(path)
  docs = shard / "docs.json"
  docs_bytes = docs.read_bytes()
  docs.write_bytes(docs_bytes.replace(b'"d9-2"', b'"d9-X"'))
  with pytest.raises(BankError, match=f"{docs} is corrupt"):
    MemoryBank.open(path)
  docs.write_bytes(docs_bytes)

  manifest_bytes = (path / "manifest.json").read_bytes()
  for edit, match in [(dict(manifest, format_version=2), "format version 2; this msa_jax reads "
                       "version 1"),
                      (dict(manifest, format="something"), "not a memory bank manifest"),
                      ({k: v for k, v in manifest.items() if k != "shards"}, "'shards'")]:
    (path / "manifest.json").write_text(json.dumps(edit))
    with pytest.raises(BankError, match=match):
      MemoryBank.open(path)
  (path / "manifest.json").write_bytes(manifest_bytes[:-10])
  with pytest.raises(BankError, match="not valid JSON"):
    MemoryBank.open(path)
  (path / "manifest.json").unlink()
  with pytest.raises(FileNotFoundError, match="manifest.json is missing"):
    MemoryBank.open(path)
  with pytest.raises(FileNotFoundError, match="manifest.json is missing"):
    MemoryBank.open(tmp_path / "nowhere")


def test_failed_commit_keeps_previous_bank(tmp_path, monkeypatch):
  bank = new_bank(tmp_path, shard_docs=2)
  docs = make_docs(3, seed=12)
  bank.add(*docs)
  before = snapshot(tmp_path)
  manifest = (tmp_path / "manifest.json").read_bytes()

  def fail(*args, **kwargs):
    raise OSError("disk full (simulated)")

  # The manifest swap fails after the new shards were written: they are orphans.
  monkeypatch.setattr(bank_lib.os, "replace", fail)
  with pytest.raises(OSError, match="simulated"):
    bank.add(*make_docs(2, seed=13))
  with pytest.raises(OSError, match="simulated"):
    bank.remove([docs[0][0]])
  monkeypatch.undo()
  assert (tmp_path / "manifest.json").read_bytes() == manifest
  leftovers = set(snapshot(tmp_path)) - set(before)
  assert any(name.startswith("shard-") for name in leftovers)
  assert any(name.startswith("manifest.json.tmp-") for name in leftovers)
  reopened = MemoryBank.open(tmp_path)
  check_against(reopened, expected_content(docs))
  # The in-memory handle is unchanged too, and its next commit deletes the orphans.
  check_against(bank, expected_content(docs))
  # A failure while writing shards removes what it wrote at once.
  monkeypatch.setattr(bank_lib.store, "write_json_file", fail)
  with pytest.raises(OSError, match="simulated"):
    bank.add(*make_docs(1, seed=14))
  monkeypatch.undo()
  bank.add(*make_docs(1, seed=15))
  assert sorted(os.listdir(tmp_path)) == sorted(
      [".lock", "manifest.json"] + [s["name"] for s in bank._manifest["shards"]])


_CHILD = textwrap.dedent("""
    import importlib.util, os, pickle, signal, sys
    spec = importlib.util.spec_from_file_location("bank", sys.argv[1])
    bank_lib = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bank_lib)
    mode, path, docs_file = sys.argv[2:5]
    with open(docs_file, "rb") as f:
      docs = pickle.load(f)
    kill = lambda *a, **k: os.kill(os.getpid(), signal.SIGKILL)
    if mode == "mid_shards":  # Killed after a few array files of the new shards.
      write, calls = bank_lib.store.write_npy, []
      def write_then_die(*args):
        calls.append(1)
        if len(calls) == 4:
          kill()
        return write(*args)
      bank_lib.store.write_npy = write_then_die
    else:  # Killed with the new manifest written to its temp file, before os.replace.
      bank_lib.os.replace = kill
    bank = bank_lib.MemoryBank.open(path)
    if mode == "remove":
      bank.remove([bank.doc_ids[0]])
    else:
      bank.add(*docs)
    print("not killed")
""")


@pytest.mark.parametrize("mode", ["mid_shards", "before_replace", "remove"])
def test_killed_writer_keeps_previous_bank(tmp_path, mode):
  """A writer process killed with SIGKILL mid-add/remove leaves the previous bank valid."""
  path = tmp_path / "bank"
  docs = make_docs(4, seed=20)
  new_bank(path, shard_docs=2).add(*docs)
  manifest = (path / "manifest.json").read_bytes()
  with open(tmp_path / "docs.pkl", "wb") as f:
    pickle.dump(make_docs(3, seed=21), f)
  # The child loads the bank module by path: no JAX import, a quick start.
  result = subprocess.run([sys.executable, "-c", _CHILD, bank_lib.__file__, mode, str(path),
                           str(tmp_path / "docs.pkl")], capture_output=True, text=True,
                          timeout=120)
  assert result.returncode == -9, result.stdout + result.stderr
  assert (path / "manifest.json").read_bytes() == manifest
  names = os.listdir(path)
  assert any(n.startswith("shard-") and n not in manifest.decode() for n in names)
  bank = MemoryBank.open(path, verify=True)
  check_against(bank, expected_content(docs))
  more = make_docs(1, seed=22)
  bank.add(*more)
  assert sorted(os.listdir(path)) == sorted(
      [".lock", "manifest.json"] + [s["name"] for s in bank._manifest["shards"]])
  check_against(MemoryBank.open(path), {**expected_content(docs), **expected_content(more)})


def test_metadata_and_fingerprint_are_json(tmp_path):
  bank = new_bank(tmp_path, metadata={"built": [1, 2]})
  bank.set_metadata({"built": "again", "n": 3})
  assert MemoryBank.open(tmp_path).metadata == {"built": "again", "n": 3}
  assert bank_lib.fingerprint_diff({"a": True}, {"a": 1}) == ["a: bank has True, expected 1"]
  assert bank_lib.fingerprint_diff({"a": [1, 2]}, {"a": [1]}) == [
      "a: bank has [1, 2], expected [1]"]
  with pytest.raises(ValueError, match="metadata must be JSON"):
    bank.set_metadata({"x": object()})


def test_million_chunk_bank_memory_maps(tmp_path):
  """~1M chunks x J=1 x D=8: open maps the files; nothing is copied until gathered (timed)."""
  num_docs, chunks_per_doc = 2 ** 14, 64
  c = num_docs * chunks_per_doc
  rng = np.random.default_rng(0)
  keys = rng.normal(size=(c, 1, 8)).astype(np.float32)
  keys /= np.linalg.norm(keys, axis=-1, keepdims=True)
  k = rng.normal(size=(c, 1, 8)).astype(np.float32)
  bank = MemoryBank.create(tmp_path, fingerprint={"test": "1M"}, layer_ids=[0], num_kv_heads=1,
                           head_dim=8, chunk_size=64, dtype="float32")
  start = time.perf_counter()
  bank.add([f"doc{i}" for i in range(num_docs)], None, [64 * chunks_per_doc] * num_docs,
           [chunks_per_doc] * num_docs, {0: {"keys": keys, "k": k, "v": -k}})
  times = {"add": time.perf_counter() - start}
  for verify in (True, False):
    start = time.perf_counter()
    opened = MemoryBank.open(tmp_path, verify=verify)
    times[f"open(verify={verify})"] = time.perf_counter() - start
  start = time.perf_counter()
  stored_keys, stored_k, stored_v = opened.layer_arrays(0)
  times["layer_arrays"] = time.perf_counter() - start
  assert isinstance(stored_keys, np.memmap) and stored_keys.shape == (c, 1, 8)
  start = time.perf_counter()
  gk, gv, valid = opened.gather(0, np.arange(0, num_docs, num_docs // 16))
  times["gather 16 docs"] = time.perf_counter() - start
  assert gk.shape == (16, chunks_per_doc, 1, 8) and valid.all()
  np.testing.assert_array_equal(gv[5], -k[5 * c // 16:5 * c // 16 + chunks_per_doc])
  np.testing.assert_array_equal(stored_k[-3:], k[-3:])
  print(f"\n{c} chunks, {3 * keys.nbytes / 2 ** 20:.0f} MiB: "
        + ", ".join(f"{name} {t * 1e3:.1f} ms" for name, t in times.items()))


def test_random_mutations_match_a_dict(tmp_path):
  """Seeded random adds, removes and compactions agree with a plain dict of the contents."""
  rng = np.random.default_rng(30)
  bank = new_bank(tmp_path, dtype="bfloat16", shard_docs=3)
  content = {}
  for step in range(12):
    op = rng.choice(["add", "add", "remove", "compact"])
    if op == "add":
      docs = make_docs(int(rng.integers(1, 6)), seed=100 + step, dtype="bfloat16")
      bank.add(*docs)
      content.update(expected_content(docs))
    elif op == "remove" and content:
      ids = list(rng.choice(sorted(content), size=int(rng.integers(1, len(content) + 1)),
                            replace=False))
      bank.remove(ids)
      for i in ids:
        del content[i]
    else:
      bank.compact(int(rng.integers(1, 5)))
    check_against(bank, content)
  check_against(MemoryBank.open(tmp_path, expect_fingerprint=FINGERPRINT), content)
  assert sorted(os.listdir(tmp_path)) == sorted(
      [".lock", "manifest.json"] + [s["name"] for s in bank._manifest["shards"]])


def test_staged_bank_is_published_atomically_beside_the_old_one(tmp_path):
  path = tmp_path / "bank"
  old_docs = make_docs(3, seed=21)
  new_bank(path).add(*old_docs)
  before = snapshot(path)
  staged = new_bank(path, staged=True, shard_docs=2)
  assert staged.staged and MemoryBank.has_staged(path)
  new_docs = make_docs(5, seed=22)
  staged.add(*new_docs)
  # Readers still see the old bank, untouched (a commit of the published bank keeps the
  # staged bank's shards, and a staged commit keeps the published bank's).
  old = MemoryBank.open(path)
  assert old.doc_ids == old_docs[0]
  assert {k: v for k, v in snapshot(path).items() if k in before} == before
  reopened = MemoryBank.open(path, staged=True)
  assert reopened.doc_ids == new_docs[0] and reopened.num_shards == 3
  extra = make_docs(1, seed=23)
  reopened.add(*extra)  # continuing the staged bank from another handle
  _refused(path, lambda: new_bank(path, staged=True), FileExistsError, "staged memory bank")
  reopened.publish()
  assert not MemoryBank.has_staged(path) and not reopened.staged
  published = MemoryBank.open(path)
  assert published.doc_ids == new_docs[0] + extra[0]
  expected = expected_content(new_docs) | expected_content(extra)
  for i, doc_id in enumerate(published.doc_ids):
    text, length, arrays = expected[doc_id]
    assert published.texts([i]) == [text] and published.lengths[i] == length
    first, count = published.first_chunk[i], published.chunk_counts[i]
    for (layer, name), want in arrays.items():
      got = published.layer_arrays(layer)[("keys", "k", "v").index(name)][first:first + count]
      np.testing.assert_array_equal(bits(got), bits(want))
  live = {s["name"] for s in json.loads((path / "manifest.json").read_text())["shards"]}
  assert {p.name for p in path.glob("shard-*")} == live  # the old bank's shards are deleted
  with pytest.raises(BankError, match="already published"):
    reopened.publish()
  # overwrite=True with staged=True discards an unfinished staged bank, not the published one.
  discarded = new_bank(path, staged=True)
  discarded.add(*make_docs(2, seed=24))
  new_bank(path, staged=True, overwrite=True)
  assert MemoryBank.open(path, staged=True).num_docs == 0
  assert_bank_equal(MemoryBank.open(path), published)

"""msa_jax.checkpoint.gguf_file against the `gguf` package's reader (the oracle): the same
metadata values and types, the same tensor names, types, shapes and bytes, on the real SmolLM2
file and on a written file with every value type and several tensor types; clear errors on files
it cannot read."""

import os

import gguf
import numpy as np
import pytest

from msa_jax.checkpoint import gguf_file
from msa_jax.checkpoint.gguf_file import GGUFError, GGUFFile, open_gguf, read_gguf_metadata

T = gguf.GGMLQuantizationType
V = gguf.GGUFValueType


def assert_same_as_reference(path):
  ref = gguf.GGUFReader(path, "r")
  ours = GGUFFile(path)
  want = {name: field.contents() for name, field in ref.fields.items()}
  assert list(ours.metadata) == list(want)
  for name, value in want.items():
    assert ours.metadata[name] == value and type(ours.metadata[name]) is type(value), name
    if isinstance(value, list) and value:
      assert {type(x) for x in ours.metadata[name]} == {type(x) for x in value}, name
  assert [t.name for t in ours.tensors] == [t.name for t in ref.tensors]
  for a, b in zip(ref.tensors, ours.tensors):
    assert b.tensor_type == a.tensor_type and b.shape == tuple(a.shape.tolist()), a.name
    assert b.data.dtype == a.data.dtype and b.data.shape == a.data.shape, a.name
    assert np.array_equal(b.data, a.data), a.name
    assert not b.data.flags.writeable
  return ours


@pytest.mark.slow
def test_smollm2_file_equals_the_gguf_package(smollm2_gguf):
  ours = assert_same_as_reference(smollm2_gguf)
  assert len(ours.metadata["tokenizer.ggml.tokens"]) == 49152
  assert {t.tensor_type for t in ours.tensors} == {T.F32, T.Q4_1, T.Q8_0}


def write(path, *, alignment=None):
  writer = gguf.GGUFWriter(str(path), "llama")
  if alignment:
    writer.add_custom_alignment(alignment)
  for i, vtype in enumerate([V.UINT8, V.INT8, V.UINT16, V.INT16, V.UINT32, V.INT32, V.UINT64,
                             V.INT64]):
    writer.add_key_value(f"test.int{i}", 7 + i, vtype)
  writer.add_key_value("test.f32", 1e-5, V.FLOAT32)  # float32 rounding, as the reference
  writer.add_key_value("test.f64", 0.1, V.FLOAT64)
  writer.add_key_value("test.bool", True, V.BOOL)
  writer.add_key_value("test.text", "héllo wörld", V.STRING)
  writer.add_array("test.ints", [3, -1, 4])
  writer.add_array("test.floats", [0.5, 2.25])
  writer.add_array("test.words", ["a", "", "ünïcode", "a b"])
  writer.add_array("test.empty", [])
  rng = np.random.default_rng(0)
  x = rng.normal(size=(4, 64)).astype(np.float32)
  writer.add_tensor("a.f32", x)
  writer.add_tensor("b.f16", x[:3, :5].astype(np.float16))
  writer.add_tensor("c.i32", np.arange(6, dtype=np.int32).reshape(2, 3))
  q = gguf.quants.quantize(x, T.Q8_0)
  writer.add_tensor("d.q8", q, raw_shape=q.shape, raw_dtype=T.Q8_0)
  writer.add_tensor("e.vec", x[0])
  writer.write_header_to_file()
  writer.write_kv_data_to_file()
  writer.write_tensors_to_file()
  writer.close()
  return x


@pytest.mark.parametrize("alignment", [None, 64])
def test_every_value_type_and_tensor_type_equals_the_gguf_package(tmp_path, alignment):
  x = write(tmp_path / "t.gguf", alignment=alignment)
  ours = assert_same_as_reference(tmp_path / "t.gguf")
  assert ours.metadata["test.words"] == ["a", "", "ünïcode", "a b"]
  tensors = {t.name: t for t in ours.tensors}
  np.testing.assert_array_equal(tensors["a.f32"].data, x)
  assert tensors["a.f32"].shape == (64, 4)  # innermost first, as the file
  dequantised = gguf.quants.dequantize(tensors["d.q8"].data, tensors["d.q8"].tensor_type)
  np.testing.assert_allclose(dequantised.reshape(x.shape), x, atol=0.02)


def test_metadata_prefix_and_memoised_open(tmp_path):
  path = tmp_path / "t.gguf"
  write(path)
  assert open_gguf(path) is open_gguf(str(path))
  assert read_gguf_metadata(path, prefix="test.f") == {"test.f32": pytest.approx(1e-5),
                                                       "test.f64": 0.1, "test.floats": [0.5, 2.25]}
  first = open_gguf(path)
  write(path, alignment=64)  # a rewritten file (new size) is read afresh
  os.utime(path, ns=(1, 1))
  assert open_gguf(path) is not first and open_gguf(path).metadata["general.alignment"] == 64


def test_files_it_cannot_read_are_named(tmp_path):
  not_gguf = tmp_path / "model.bin"
  not_gguf.write_bytes(b"PK\x03\x04" + bytes(40))
  with pytest.raises(GGUFError, match=r"model.bin is not a GGUF file"):
    GGUFFile(not_gguf)
  path = tmp_path / "t.gguf"
  write(path)
  data = bytearray(path.read_bytes())
  (tmp_path / "v9.gguf").write_bytes(bytes(data[:4]) + (9).to_bytes(4, "little") + data[8:])
  with pytest.raises(GGUFError, match=r"v9.gguf: GGUF version 9 is not supported"):
    GGUFFile(tmp_path / "v9.gguf")
  (tmp_path / "cut.gguf").write_bytes(bytes(data[:-100]))
  with pytest.raises(GGUFError, match=r"cut.gguf: tensor 'e.vec' runs past the end"):
    GGUFFile(tmp_path / "cut.gguf")
  assert gguf_file.GGUFError.__mro__[1] is ValueError

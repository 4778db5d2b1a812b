"""Workdir checkpoints: save cadence, retention, exact restore of state and data position."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from msa_jax.checkpoint.orbax import Checkpointer


def state_at(step):
  return {"step": jnp.int32(step),
          "params": {"w": jnp.arange(6, dtype=jnp.float32).reshape(2, 3) + step,
                     "b": jnp.full((4,), step, jnp.bfloat16)}}


def test_saves_on_schedule_keeps_the_last_and_restores_exactly(tmp_path):
  ckpt = Checkpointer(tmp_path / "ckpt", every=2, keep=2)
  assert ckpt.latest_step is None
  saved = [s for s in range(1, 8) if ckpt.save(s, state_at(s), {"epoch": 1, "index": s})]
  assert saved == [2, 4, 6]
  assert ckpt.save(7, state_at(7), {"epoch": 1, "index": 7}, force=True)  # the final step
  ckpt.wait()
  assert ckpt.all_steps() == [6, 7] and ckpt.latest_step == 7
  state, data = ckpt.restore(jax.eval_shape(lambda: state_at(0)))
  jax.tree.map(np.testing.assert_array_equal, state, state_at(7))
  assert state["params"]["b"].dtype == jnp.bfloat16
  assert data == {"epoch": 1, "index": 7}
  older, _ = ckpt.restore(state_at(0), step=6)
  np.testing.assert_array_equal(older["params"]["w"], state_at(6)["params"]["w"])
  ckpt.close()
  # A new manager on the same directory (a rerun of the command) sees the same checkpoints.
  again = Checkpointer(tmp_path / "ckpt", every=2, keep=2)
  assert again.latest_step == 7
  again.close()


def test_empty_directory_and_bad_arguments(tmp_path):
  ckpt = Checkpointer(tmp_path / "none")
  with pytest.raises(FileNotFoundError, match="no checkpoint in"):
    ckpt.restore(state_at(0))
  ckpt.close()
  with pytest.raises(ValueError, match="keep=0 must be >= 1"):
    Checkpointer(tmp_path / "x", keep=0)


def test_unfinished_save_is_ignored_and_deleted(tmp_path):
  ckpt = Checkpointer(tmp_path, every=2, keep=3)
  ckpt.save(2, state_at(2), {"index": 2})
  ckpt.close()
  # What a process killed while saving step 4 leaves behind.
  partial = tmp_path / "4.orbax-checkpoint-tmp-1763712000000000"
  (partial / "state").mkdir(parents=True)
  (partial / "state" / "_METADATA").write_text("{trunc")
  again = Checkpointer(tmp_path, every=2, keep=3)
  assert again.latest_step == 2 and again.all_steps() == [2]
  state, data = again.restore(state_at(0))
  assert int(state["step"]) == 2 and data == {"index": 2}
  assert again.save(4, state_at(4), {"index": 4})
  again.close()
  assert sorted(p.name for p in tmp_path.iterdir()) == ["2", "4"]


def test_grain_iterator_state_round_trips(tmp_path):
  pytest.importorskip("grain")
  from configs import demo
  from msa_jax.train import data as data_lib
  config = demo.get_config("smoke")
  config.data.loader = "grain"
  _, reference, _ = data_lib.make_data(config)
  expected = [next(reference) for _ in range(11)]  # 8 batches per epoch: crosses one
  _, iterator, _ = data_lib.make_data(config)
  for _ in range(6):
    next(iterator)
  ckpt = Checkpointer(tmp_path, every=6)
  assert ckpt.save(6, state_at(6), iterator.get_state())
  ckpt.close()
  _, resumed, _ = data_lib.make_data(config)
  _, data_state = Checkpointer(tmp_path).restore(state_at(0))
  assert data_state == {"next_index": 6}
  resumed.set_state(data_state)
  for k in range(6, 11):
    for x, y in zip(jax.tree.leaves(next(resumed)), jax.tree.leaves(expected[k])):
      np.testing.assert_array_equal(x, y)
  with pytest.raises(ValueError, match="another data.loader"):
    resumed.set_state({"seed": 0, "epoch": 0, "index": 6})
  config.data.loader = "python"  # the same batches
  _, python, _ = data_lib.make_data(config)
  for k in range(3):
    for x, y in zip(jax.tree.leaves(next(python)), jax.tree.leaves(expected[k])):
      np.testing.assert_array_equal(x, y)


"""Workdir checkpoints: save cadence, retention, exact restore of state and data position."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from msa_jax.train.checkpoints import Checkpointer


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

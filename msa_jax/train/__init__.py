"""Training: optimiser and schedules, meshes and shardings, the train state and steps."""

from msa_jax.train.optimizer import (make_loss_weights, make_lr_schedule, make_optimizer,
                                     weight_decay_mask)
from msa_jax.runtime.sharding import (DEFAULT_RULES, logical_to_shardings, make_mesh, make_rules,
                                    shard_batch)
from msa_jax.train.step import (TrainState, init_train_state, make_eval_step, make_train_step,
                                state_shardings)

__all__ = [
    "DEFAULT_RULES", "TrainState", "init_train_state", "logical_to_shardings",
    "make_eval_step", "make_loss_weights", "make_lr_schedule", "make_mesh", "make_optimizer",
    "make_rules", "make_train_step", "shard_batch", "state_shardings", "weight_decay_mask",
]

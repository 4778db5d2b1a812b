"""`python -m msa_jax.evaluate`: the entry point of `msa_jax.evaluation.run.evaluate`."""

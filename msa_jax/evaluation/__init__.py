"""Evaluation: retrieval metrics (`metrics`), the train-short/infer-long table
(`extrapolation`), the `python -m msa_jax.evaluate` runner (`run`), the NIAH runner
(`niah_eval`) and the tables and memory-size figures they and `msa_jax.scale` share
(`report`)."""

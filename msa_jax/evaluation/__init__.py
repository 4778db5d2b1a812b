"""Evaluation: retrieval metrics (`metrics`), the train-short/infer-long table
(`extrapolation`), the `python -m msa_jax.evaluate` runner (`run`) and the NIAH runner
(`niah_eval`)."""

"""Evaluation: retrieval metrics (`metrics`), the train-short/infer-long table
(`extrapolation`), the evaluations a training config declares (`evaluators`: `config.evals`),
the `python -m msa_jax.evaluate` runner (`run`) and the NIAH runner (`niah_eval`)."""

"""Model loading, shared by training, evaluation and inference: the MSA model a config
describes (`build`), a pretrained backbone under fresh routers (`pretrained`) and the trained
model of a `python -m msa_jax.train` workdir (`restore`)."""

"""NQ320k generative retrieval (`data.kind = "nq320k"`, configs/nq320k.py): the NQ320k folder
(not shipped), evaluated on its "dev" split unless a config names another. See
`msa_jax.tasks.retrieval`."""

from msa_jax.tasks import retrieval

TASK = retrieval.RetrievalTask("nq320k", eval_split="dev")

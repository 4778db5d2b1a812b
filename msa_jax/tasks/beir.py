"""BEIR generative retrieval (`data.kind = "beir"`, configs/beir.py): a BEIR dataset folder
(corpus.jsonl, queries.jsonl, qrels/<split>.tsv; NFCorpus by default), evaluated on its "test"
split unless a config names another. See `msa_jax.tasks.retrieval`."""

from msa_jax.data.retrieval import beir_files
from msa_jax.tasks import retrieval

TASK = retrieval.RetrievalTask("beir", eval_split="test", require_files=beir_files)

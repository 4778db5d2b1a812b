"""The memory: a persistent bank of compressed document states on disk (`bank`: atomic,
checksummed shards, staged re-encodes), stage-1 encoding of documents into it (`encode`) and
stage-2 routing over it (`routing`: top-k documents per question, one GEMM per tile of routing
keys)."""

"""Pallas GPU kernels for Memory Sparse Attention, each next to a pure-jnp reference.

Empty so far: the routing-score and top-k block-sparse attention kernels (DESIGN.md section 5)
land here, one package per kernel, with interpret-mode tests on CPU and `gpu`-marked compiled
tests.
"""

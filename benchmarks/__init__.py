"""The asv benchmark suite of the embedding kernels: one file per subject, shared parts in common.py."""

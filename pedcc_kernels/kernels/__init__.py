"""Triton kernels and their custom-op wrappers, one module per kernel family."""

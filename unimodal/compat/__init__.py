"""Compatibility with other codebases' checkpoints (the official ACDiT code)."""

"""The attention rule and its backends."""

from .backends import (
    BACKENDS,
    AttentionPlan,
    Fields,
    dense_mask,
    resolve_backend,
    xformers_available,
    xformers_problem,
)
from .rule import allowed

__all__ = [
    "BACKENDS",
    "AttentionPlan",
    "Fields",
    "allowed",
    "dense_mask",
    "resolve_backend",
    "xformers_available",
    "xformers_problem",
]

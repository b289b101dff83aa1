"""The one attention rule (ARCHITECTURE.md §2), as a single predicate over layout fields.

    allowed(q, k) = doc[q] == doc[k] >= 0 and (
        (stream[k] == 0 and unit[k] < unit[q])                # any earlier clean unit
        or (unit[k] == unit[q] and stream[k] == stream[q]) )  # inside the same unit and stream
    or (doc[q] < 0 and q == k)                                # padding sees itself only

`stream` is 0 for clean tokens and c >= 1 for a block's c-th noisy copy (a boolean `noisy` is the
one-copy case): copies of one block never see each other, and each sees the same clean context.

The same function serves the dense mask (broadcast tensors), FlexAttention's `mask_mod`
(scalar index tensors) and the KV-cached inference path (cache slots carry doc and unit too).
"""

from __future__ import annotations

import torch


def allowed(
    doc_q: torch.Tensor,
    unit_q: torch.Tensor,
    stream_q: torch.Tensor,
    idx_q: torch.Tensor,
    doc_k: torch.Tensor,
    unit_k: torch.Tensor,
    stream_k: torch.Tensor,
    idx_k: torch.Tensor,
) -> torch.Tensor:
    """Whether query q may attend to key k; all arguments broadcast against each other."""
    earlier_clean = (stream_k == 0) & (unit_k < unit_q)
    same_unit = (unit_k == unit_q) & (stream_k == stream_q)
    real = (doc_q == doc_k) & (doc_q >= 0)
    return (real & (earlier_clean | same_unit)) | ((doc_q < 0) & (idx_q == idx_k))

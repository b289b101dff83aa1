"""Which float type a device should compute in: bf16 where the hardware has it, fp32 where it has not.

bf16 autocast is the fast path only on hardware with native bf16 products: CUDA GPUs from Ampere
on, and CPUs with AVX512-BF16 or AMX. Elsewhere PyTorch emulates it, and on a CPU without those
instructions a bf16 matrix product runs about 70x slower than fp32 (measured on an AVX2 AMD EPYC:
1.2 against 87 GFLOP/s at 512x512, see docs/benchmarks.md). `precision: auto`, the recipes'
default, picks bf16 only where it is native, so the same recipe is fast on every machine.
"""

from __future__ import annotations

import torch

PRECISIONS = ("auto", "bf16", "fp32")


def native_bf16(device: torch.device | str) -> bool:
    """True where bf16 matrix products run in hardware on `device` (CUDA: `is_bf16_supported`;
    CPU: AVX512-BF16 or AMX tiles, as PyTorch's own CPU capability checks report them)."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        return torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()
    return False


def resolve_precision(precision: str, device: torch.device | str) -> str:
    """`precision` ("auto", "bf16" or "fp32") as the one to run on `device`: "auto" becomes "bf16"
    where `native_bf16(device)`, else "fp32"; the others stay as they are."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if precision == "auto":
        return "bf16" if native_bf16(device) else "fp32"
    return precision


def autocast_dtype(precision: str, device: torch.device | str) -> torch.dtype:
    """The autocast dtype of `precision` on `device` (float32 means: no autocast)."""
    return torch.bfloat16 if resolve_precision(precision, device) == "bf16" else torch.float32

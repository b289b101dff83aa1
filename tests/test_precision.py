"""`precision: auto`: bf16 autocast only where the hardware has bf16, checked against the CPU's own flags."""

from pathlib import Path

import pytest
import torch

from unimodal.precision import autocast_dtype, native_bf16, resolve_precision
from unimodal.train.config import load_config

CPUINFO = Path("/proc/cpuinfo")


@pytest.mark.skipif(not CPUINFO.exists(), reason="needs Linux's /proc/cpuinfo as the reference")
def test_auto_follows_the_cpu_flags():
    flags = set()
    for line in CPUINFO.read_text().splitlines():
        if line.startswith("flags"):
            flags |= set(line.split(":", 1)[1].split())
    native = "avx512_bf16" in flags or "amx_bf16" in flags
    assert native_bf16("cpu") == native
    assert resolve_precision("auto", "cpu") == ("bf16" if native else "fp32")
    assert autocast_dtype("auto", "cpu") == (torch.bfloat16 if native else torch.float32)


def test_explicit_precisions_are_kept_and_bad_ones_named():
    assert resolve_precision("bf16", "cpu") == "bf16" and autocast_dtype("bf16", "cpu") == torch.bfloat16
    assert resolve_precision("fp32", "cpu") == "fp32" and autocast_dtype("fp32", "cpu") == torch.float32
    with pytest.raises(ValueError, match="'fp16'"):
        resolve_precision("fp16", "cpu")


def test_the_cpu_recipes_ask_for_auto():
    for recipe in ("shapes-tiny", "digits-tiny", "shapes-story-tiny", "shapes-video-tiny"):
        assert load_config(recipe).train.precision == "auto", recipe

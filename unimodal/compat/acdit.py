"""Load official ACDiT checkpoints (thunlp/ACDiT @135ff06) into a `UnifiedModel`.

The official model is our model in class-conditional mode with no text: the same module tree
(we kept its parameter names), AdaLN on noisy tokens only, GELU-tanh MLP, qkv bias, QK-norm,
head_dim 64, and its RoPE quirk (``rope="official"``). Only the label table is renamed.
"""

from __future__ import annotations

import json
import math
from typing import Any

import torch

from ..config import ModelConfig
from ..model import UnifiedModel
from ..rope import official_base

RENAMES = {"y_embedder.embedding_table.weight": "y_embedder.weight"}
REQUIRED = ("latent_size", "block_size", "hidden_size", "depth", "num_heads", "num_classes", "spatial_len")


def official_to_config(official: dict[str, Any] | str) -> ModelConfig:
    """Translate the official `ACDiT(...)` constructor arguments (dict or JSON) into a ModelConfig."""
    cfg = json.loads(official) if isinstance(official, str) else dict(official)
    missing = [k for k in REQUIRED if k not in cfg]
    if missing:
        raise KeyError(f"official ACDiT config lacks {missing}")
    hidden, heads = cfg["hidden_size"], cfg["num_heads"]
    if hidden // heads != 64:
        raise ValueError(f"official ACDiT needs head_dim 64, got hidden_size {hidden} / num_heads {heads}")
    channels = cfg.get("in_channels", 4)
    patch = math.isqrt(cfg["latent_size"] // channels)
    if patch * patch * channels != cfg["latent_size"]:
        raise ValueError(f"latent_size {cfg['latent_size']} is not in_channels {channels} x a square patch")
    side = math.isqrt(cfg["spatial_len"])
    if side * side != cfg["spatial_len"]:
        raise ValueError(f"spatial_len {cfg['spatial_len']} is not a square token grid")
    frames = cfg.get("temporal_len", 1)
    video = frames > 1
    if cfg.get("square_block", True):
        tile = math.isqrt(cfg["block_size"])
        if tile * tile != cfg["block_size"]:
            raise ValueError(f"square_block needs a square block_size, got {cfg['block_size']}")
        block_kind, block_size = "tiles", tile
    else:
        if cfg["block_size"] % cfg["spatial_len"]:
            raise ValueError(f"block_size {cfg['block_size']} is not whole frames of {cfg['spatial_len']} tokens")
        block_kind, block_size = "frames", cfg["block_size"] // cfg["spatial_len"]
    # The official RopeND: 2-D (h, w) split 1:1 for images, 3-D (t, h, w) split 2:3:3 for video.
    sections = [16, 24, 24] if video else [0, 32, 32]
    theta = [official_base(frames) if video else 10000.0, official_base(side), official_base(side)]
    return ModelConfig(
        dim=hidden,
        depth=cfg["depth"],
        heads=heads,
        mlp="gelu_tanh",
        mlp_ratio=float(cfg.get("mlp_ratio", 4.0)),
        qkv_bias=True,
        qk_norm=True,
        norm_eps=1e-6,
        vocab_size=0,
        num_classes=cfg["num_classes"],
        channels=channels,
        patch_size=patch,
        image_size=side * patch,
        frames=frames,
        block_kind=block_kind,
        block_size=block_size,
        diffusion="ddpm_eps",
        rope="official",
        rope_sections=sections,
        rope_theta=theta,
        timestep_freq_dim=256,
    )


def convert_state_dict(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Official parameter names -> ours (an optional 'module.' prefix from DDP is stripped)."""
    out = {}
    for k, v in state_dict.items():
        k = k.removeprefix("module.")
        out[RENAMES.get(k, k)] = v
    return out


def from_official(state_dict: dict[str, torch.Tensor], official_config: dict[str, Any] | str) -> UnifiedModel:
    """A UnifiedModel (compat configuration) holding the official weights, strictly checked."""
    model = UnifiedModel(official_to_config(official_config))
    missing, unexpected = model.load_state_dict(convert_state_dict(state_dict), strict=False)
    if missing or unexpected:
        raise KeyError(f"official state dict does not match: missing {missing}, unexpected {unexpected}")
    return model

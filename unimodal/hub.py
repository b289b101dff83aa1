"""Saving and loading models: safetensors weights, config.json and the tokenizer, in one folder.

    model.safetensors     the weights (never pickle)
    config.json           the ModelConfig
    tokenizer/            the tokenizer the model was trained with (see unimodal.tokenizer)

Pickle checkpoints (`.pt`, `.pth`, `.bin`, `.ckpt`) can execute code when loaded, so they are
refused unless the caller passes `allow_pickle=True`, and even then are read with
`torch.load(weights_only=True)`.
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from .config import ModelConfig
from .model import UnifiedModel

WEIGHTS = "model.safetensors"
CONFIG = "config.json"
TOKENIZER = "tokenizer"
PICKLE_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt")


def save_pretrained(model: UnifiedModel, directory: str | Path, tokenizer=None) -> Path:
    """Write the model (and its tokenizer) to `directory`; returns the directory."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    tmp = d / (WEIGHTS + ".tmp")
    save_file(state, str(tmp), metadata={"format": "pt", "library": "unimodal"})
    tmp.replace(d / WEIGHTS)  # atomic: a crash never leaves a half-written model.safetensors
    model.cfg.save(d / CONFIG)
    if tokenizer is not None:
        tokenizer.save(d / TOKENIZER)
    return d


def _state_dict(d: Path, allow_pickle: bool) -> dict[str, torch.Tensor]:
    if (d / WEIGHTS).is_file():
        return load_file(str(d / WEIGHTS))
    pickles = sorted(p for p in d.iterdir() if p.suffix in PICKLE_SUFFIXES) if d.is_dir() else []
    if not pickles:
        raise FileNotFoundError(f"{d}: no {WEIGHTS} found")
    if not allow_pickle:
        raise ValueError(
            f"{d}: only a pickle checkpoint ({pickles[0].name}) was found; pickle can run arbitrary code, so it is "
            "refused. Pass allow_pickle=True to load it with torch.load(weights_only=True), or convert it to "
            "safetensors."
        )
    state = torch.load(pickles[0], map_location="cpu", weights_only=True)
    if isinstance(state, dict) and "model" in state and isinstance(state["model"], dict):
        state = state["model"]
    return state


def load_pretrained(
    directory: str | Path, allow_pickle: bool = False, device: str | torch.device = "cpu"
) -> tuple[UnifiedModel, object | None]:
    """Load (model, tokenizer or None) from a folder written by `save_pretrained`; strict weights."""
    d = Path(directory)
    if not (d / CONFIG).is_file():
        raise FileNotFoundError(f"{d}: no {CONFIG} found (not a saved unimodal model)")
    cfg = ModelConfig.load(d / CONFIG)
    with torch.device("meta"):
        model = UnifiedModel(cfg)
    state = _state_dict(d, allow_pickle)
    missing, unexpected = model.load_state_dict(state, strict=False, assign=True)
    if missing or unexpected:
        raise KeyError(f"{d}: weights do not match the config: missing {missing}, unexpected {unexpected}")
    model = model.to(device)
    tokenizer = None
    if (d / TOKENIZER).is_dir():
        from .tokenizer import Tokenizer

        tokenizer = Tokenizer.load(d / TOKENIZER)
    return model, tokenizer

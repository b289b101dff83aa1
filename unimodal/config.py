"""ModelConfig: every architectural choice of a `UnifiedModel`, validated on construction.

Presets give the paper's sizes (ACDiT-B/L/XL/H in the class-conditional ImageNet setting:
4-channel latents, patch 1, 1000 classes, blocks of 16x16 latent tokens on a 32x32 grid) and small
CPU models. Configs round-trip through JSON (`to_dict` / `from_dict`), and unknown or ill-typed
keys are errors that name the key.
"""

from __future__ import annotations

import dataclasses
import json
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .configtools import check_value
from .patches import BlockSpec
from .rope import default_sections

MLP_KINDS = ("gelu_tanh", "gelu", "swiglu")
DIFFUSIONS = ("ddpm_eps", "flow")
PREDICTIONS = ("target", "sample", "preconditioned")
ATTENTION_BACKENDS = ("auto", "dense", "flex", "xformers")
ROPE_MODES = ("axial", "official")
ABS_POS = ("none", "sincos")
RESIDUAL_INITS = ("xavier", "zero")
BLOCK_KINDS = ("tiles", "rows", "frames")


@dataclass
class ModelConfig:
    """Architecture of a UnifiedModel. `vocab_size=0` means no text; `num_classes=0` means no labels.

    `prediction` says what the diffusion head outputs: "target" the diffusion's regression target
    itself (ε, or the flow velocity), "sample" the clean patch x̂0 (flow only), which the model
    turns into the velocity (x_t - x̂0) / max(t, 0.05) before returning it: x-prediction trained
    with the velocity loss ("Back to Basics: Let Denoising Generative Models Denoise", 2025), with
    the losses, samplers, guidance and caches unchanged.

    `self_condition` (flow only) gives noisy tokens a second input: the model's own previous clean
    estimate x̂0 of the block, through a zero-initialised projection (zero when there is none).
    The sampler feeds each call the x̂0 of the call before it; training feeds the estimate of a
    first forward without gradients on some micro-batches and zero on the others (`loss.self_cond_every`;
    "Analog Bits", Chen et al. 2022): later steps refine what earlier steps decided instead of
    deciding it again.
    """

    dim: int = 256
    depth: int = 6
    heads: int = 4
    mlp: str = "gelu_tanh"
    mlp_ratio: float = 4.0
    qkv_bias: bool = True
    qk_norm: bool = True
    norm_eps: float = 1e-6
    vocab_size: int = 0
    tie_embeddings: bool = True
    num_classes: int = 0
    channels: int = 3
    patch_size: int = 2
    image_size: int = 16
    frames: int = 1
    block_kind: str = "tiles"
    block_size: int = 4
    diffusion: str = "flow"
    prediction: str = "target"
    sigma_data: float = 0.5
    rope: str = "axial"
    rope_sections: list[int] = field(default_factory=list)
    rope_theta: list[float] = field(default_factory=lambda: [10000.0, 10000.0, 10000.0])
    abs_pos: str = "none"
    residual_init: str = "xavier"
    align_layer: int = 0
    self_condition: bool = False
    timestep_freq_dim: int = 256
    attention: str = "auto"
    grad_checkpointing: bool = False

    def __post_init__(self) -> None:
        self._check_types()
        choices = {
            "mlp": MLP_KINDS,
            "diffusion": DIFFUSIONS,
            "prediction": PREDICTIONS,
            "attention": ATTENTION_BACKENDS,
            "rope": ROPE_MODES,
            "abs_pos": ABS_POS,
            "residual_init": RESIDUAL_INITS,
            "block_kind": BLOCK_KINDS,
        }
        for key, allowed in choices.items():
            if getattr(self, key) not in allowed:
                raise ValueError(f"ModelConfig.{key} must be one of {allowed}, got {getattr(self, key)!r}")
        for key in ("dim", "depth", "heads", "channels", "patch_size", "image_size", "frames", "block_size"):
            if getattr(self, key) < 1:
                raise ValueError(f"ModelConfig.{key} must be >= 1, got {getattr(self, key)}")
        if self.residual_init == "zero" and not self.vocab_size:
            raise ValueError(
                "ModelConfig.residual_init 'zero' needs a text vocabulary (vocab_size > 0): the text loss is what "
                "moves the zeroed projections off zero; without it they and the zero AdaLN gates stay zero together"
            )
        if not 0 <= self.align_layer <= self.depth or self.align_layer and self.depth < 2:
            raise ValueError(
                f"ModelConfig.align_layer must be 0 (off) or a layer in 1..depth ({self.depth}) of a model with "
                f"at least 2 layers, got {self.align_layer}"
            )
        if self.prediction != "target" and self.diffusion != "flow":
            raise ValueError(
                f"ModelConfig.prediction {self.prediction!r} needs diffusion 'flow', got {self.diffusion!r}"
            )
        if self.self_condition and self.diffusion != "flow":
            raise ValueError(f"ModelConfig.self_condition needs diffusion 'flow', got {self.diffusion!r}")
        if not self.sigma_data > 0:
            raise ValueError(f"ModelConfig.sigma_data must be > 0, got {self.sigma_data}")
        if self.dim % self.heads:
            raise ValueError(f"ModelConfig.dim ({self.dim}) must be divisible by heads ({self.heads})")
        if not self.rope_sections:
            self.rope_sections = list(default_sections(self.head_dim))
        sections = self.rope_sections
        if len(sections) != 3 or sum(sections) != self.head_dim or any(s < 0 or s % 2 for s in sections):
            raise ValueError(
                f"ModelConfig.rope_sections must be 3 even sizes summing to head_dim {self.head_dim}, "
                f"got {self.rope_sections}"
            )
        if len(self.rope_theta) != 3:
            raise ValueError(f"ModelConfig.rope_theta must have 3 values (t, h, w), got {self.rope_theta}")
        if self.image_size % self.patch_size:
            raise ValueError(f"ModelConfig.patch_size ({self.patch_size}) must divide image_size ({self.image_size})")
        self.block_spec.block_len(self.grid)  # raises if the blocks do not tile the grid

    def _check_types(self) -> None:
        """Every field against its annotation (ints become floats where a float is due), with the
        rules every config in this library follows (`configtools.check_value`)."""
        hints = typing.get_type_hints(type(self))
        for f in dataclasses.fields(self):
            setattr(self, f.name, check_value(getattr(self, f.name), hints[f.name], f"ModelConfig.{f.name}"))

    @property
    def head_dim(self) -> int:
        return self.dim // self.heads

    @property
    def patch_dim(self) -> int:
        """Features per visual token: channels * patch_size**2."""
        return self.channels * self.patch_size**2

    @property
    def grid(self) -> tuple[int, int, int]:
        """Default (frames, rows, cols) patch grid of a generated image or clip."""
        n = self.image_size // self.patch_size
        return (self.frames, n, n)

    @property
    def block_spec(self) -> BlockSpec:
        return BlockSpec(self.block_kind, self.block_size)

    @property
    def mlp_hidden(self) -> int:
        h = self.mlp_ratio * self.dim
        if self.mlp == "swiglu":
            return int(round(2 * h / 3 / 32)) * 32
        return int(round(h))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any], source: str = "config") -> ModelConfig:
        """Build from a dict; an unknown key is an error naming it and `source`."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise KeyError(f"{source}: unknown ModelConfig key(s) {unknown}; known keys are {sorted(known)}")
        return cls(**d)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> ModelConfig:
        path = Path(path)
        try:
            d = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: not valid JSON ({e})") from e
        return cls.from_dict(d, source=str(path))

    @classmethod
    def from_preset(cls, name: str, **overrides: Any) -> ModelConfig:
        """A named preset, with keyword overrides. `PRESETS` lists the names."""
        if name not in PRESETS:
            raise KeyError(f"unknown preset {name!r}; presets are {sorted(PRESETS)}")
        return cls.from_dict({**PRESETS[name], **overrides}, source=f"preset {name!r}")


def _acdit(depth: int, dim: int, heads: int) -> dict[str, Any]:
    """The paper's class-conditional ImageNet setting: SD-VAE latents 32x32x4, patch 1, 16x16 blocks."""
    return dict(
        dim=dim,
        depth=depth,
        heads=heads,
        mlp="gelu_tanh",
        mlp_ratio=4.0,
        qkv_bias=True,
        vocab_size=0,
        num_classes=1000,
        channels=4,
        patch_size=1,
        image_size=32,
        block_kind="tiles",
        block_size=16,
        diffusion="ddpm_eps",
        # images only: the paper's 2-D split (h, w) = (32, 32) with its per-axis base for a
        # 32-wide grid (100), as proper axial RoPE; a t section would stay at position 0.
        rope_sections=[0, 32, 32],
        rope_theta=[10000.0, 100.0, 100.0],
    )


PRESETS: dict[str, dict[str, Any]] = {
    "acdit-b": _acdit(12, 768, 12),
    "acdit-l": _acdit(24, 1024, 16),
    "acdit-xl": _acdit(28, 1152, 18),
    "acdit-h": _acdit(32, 1280, 20),
    # Small models for this kind of machine (CPU, bf16 autocast). `vocab_size` follows the tokenizer.
    "tiny": dict(dim=256, depth=6, heads=4, mlp="gelu", vocab_size=512, image_size=16, patch_size=2, block_size=4),
    "micro": dict(dim=64, depth=2, heads=2, mlp="gelu", vocab_size=64, image_size=8, patch_size=2, block_size=2),
}

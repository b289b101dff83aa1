"""The training recipe: one YAML file, validated on load, with dotted overrides.

    unimodal train --config training/configs/shapes-tiny.yaml train.max_steps=200 optim.lr=1e-3

Sections: `model` (a preset plus ModelConfig overrides), `tokenizer`, `data` and `eval_data`
(unimodal.data.pipeline.DataConfig), `optim`, `schedule`, `loss`, `train`, `ema`, `deepspeed`,
`sample` and `eval`. Every key is checked on load; an unknown or ill-typed key is an error that
names it (e.g. `train.max_stepz`). The resolved config is saved in the run directory.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ..configtools import apply_overrides, build
from ..data.pipeline import DataConfig
from ..precision import PRECISIONS

ROOT = Path(__file__).resolve().parents[2]  # the project checkout: training/, tokenizers_cfg/
CONFIG_DIR = ROOT / "training" / "configs"
DEFAULT_RECIPE = "shapes-tiny"


@dataclass
class OptimConfig:
    """AdamW, or Muon for the transformer's hidden matrices and AdamW for the rest
    (unimodal/train/optim.py). `lr`, `betas` and `eps` are AdamW's; `muon_lr` (in spectral norm
    per update) and `muon_momentum` are Muon's; both take `weight_decay` and the schedule."""

    kind: str = "adamw"
    lr: float = 3e-4
    betas: list[float] = field(default_factory=lambda: [0.9, 0.95])
    weight_decay: float = 0.0
    eps: float = 1e-8
    grad_clip: float = 1.0
    muon_lr: float = 0.02
    muon_momentum: float = 0.95

    def __post_init__(self) -> None:
        if self.kind not in ("adamw", "muon"):
            raise ValueError(f"optim.kind must be adamw or muon, got {self.kind!r}")
        if self.lr <= 0 or len(self.betas) != 2 or self.grad_clip < 0:
            raise ValueError(f"optim: need lr > 0, two betas and grad_clip >= 0, got {self}")
        if self.muon_lr <= 0:
            raise ValueError(f"optim.muon_lr must be > 0, got {self.muon_lr}")
        if not 0 <= self.muon_momentum < 1:
            raise ValueError(f"optim.muon_momentum must be in [0, 1), got {self.muon_momentum}")


@dataclass
class ScheduleConfig:
    """Learning-rate schedule: `wsd` (warmup, stable, decay over the last `decay_fraction`),
    `cosine` (warmup then cosine to `min_lr_ratio`), or `constant` (after warmup)."""

    kind: str = "wsd"
    warmup_steps: int = 0
    decay_fraction: float = 0.15
    min_lr_ratio: float = 0.0

    def __post_init__(self) -> None:
        if self.kind not in ("wsd", "cosine", "constant"):
            raise ValueError(f"schedule.kind must be wsd, cosine or constant, got {self.kind!r}")
        if not 0 <= self.decay_fraction <= 1 or not 0 <= self.min_lr_ratio <= 1 or self.warmup_steps < 0:
            raise ValueError(f"schedule: decay_fraction and min_lr_ratio in [0, 1], warmup_steps >= 0: {self}")


@dataclass
class LossConfig:
    text_weight: float = 1.0
    image_weight: float = 1.0
    # flow models: t = sigmoid(z), z ~ N(time_mean, time_std) (SD3's logit-normal); a positive mean
    # trains more at high noise, where a block's content is decided (ddpm_eps: t uniform, unused)
    time_mean: float = 0.0
    time_std: float = 1.0
    # when set, the mean moves linearly from time_mean at the first step to this at the last:
    # placement (high noise) first, then the details decided at lower noise
    time_mean_end: float | None = None
    # the share of blocks whose time is uniform on (0, 1) instead: some training at low noise,
    # where x-prediction draws the details, without moving the mean away from placement
    time_uniform: float = 0.0
    # self-alignment (REPA with the clean stream as encoder; needs model.align_layer): its weight
    align_weight: float = 0.0
    # "sample" (flow): each block's velocity error weighed by t², the error of its clean estimate,
    # so that low-noise blocks (velocity error = x̂0 error / t) do not outweigh the rest
    weighting: str = "none"
    # flow: the clean copies of diffusion blocks noised to a time drawn from [0, context_noise] per
    # block, so that later blocks learn to continue imperfect context (their own samples at inference)
    context_noise: float = 0.0
    # what those clean copies become: "noise", the noised copies themselves, or "model", the model's
    # own clean estimates of them (a first forward without gradients): context as soft as its samples
    context: str = "noise"
    # ...on every k-th micro-batch only (the others keep clean context): "model" costs a forward
    context_every: int = 1
    # ...from this fraction of max_steps on (before it, clean context), as scheduled sampling starts
    # once the model's own outputs resemble the data
    context_from: float = 0.0
    # pixel models: each value's error weighed by 1 + edge_weight x the contrast of its pixel with
    # its neighbours in the clean patch, so the few pixels where a shape's outline runs count more
    edge_weight: float = 0.0
    # a model with model.self_condition trains reading its own first estimate (an extra forward
    # without gradients) on every k-th micro-batch, and reading zero on the others, as a sampler's
    # first call does: 2 is the usual half
    self_cond_every: int = 2

    def __post_init__(self) -> None:
        if not self.time_std > 0:
            raise ValueError(f"loss.time_std must be > 0, got {self.time_std}")
        if not 0.0 <= self.time_uniform <= 1.0:
            raise ValueError(f"loss.time_uniform must be in [0, 1], got {self.time_uniform}")
        if self.align_weight < 0:
            raise ValueError(f"loss.align_weight must be >= 0, got {self.align_weight}")
        if not 0.0 <= self.context_noise <= 1.0:
            raise ValueError(f"loss.context_noise must be in [0, 1], got {self.context_noise}")
        for key in ("context_every", "self_cond_every"):
            if getattr(self, key) < 1:
                raise ValueError(f"loss.{key} must be >= 1, got {getattr(self, key)}")
        if not 0.0 <= self.context_from < 1.0:
            raise ValueError(f"loss.context_from must be in [0, 1), got {self.context_from}")
        if self.context not in ("noise", "model"):
            raise ValueError(f"loss.context must be 'noise' or 'model', got {self.context!r}")
        if self.weighting not in ("none", "sample"):
            raise ValueError(f"loss.weighting must be 'none' or 'sample', got {self.weighting!r}")
        if self.edge_weight < 0:
            raise ValueError(f"loss.edge_weight must be >= 0, got {self.edge_weight}")

    def time_mean_at(self, step: int, max_steps: int) -> float:
        """The logit-normal mean of the training times at `step` of a `max_steps` run."""
        if self.time_mean_end is None:
            return self.time_mean
        frac = min(max(step / max(max_steps - 1, 1), 0.0), 1.0)
        return self.time_mean + frac * (self.time_mean_end - self.time_mean)


@dataclass
class LoopConfig:
    """The run: length, checkpoints, precision, faults."""

    max_steps: int = 1000
    checkpoint_every: int = 500
    keep_checkpoints: int = 2
    seed: int = 0
    grad_accum: int = 1
    precision: str = "auto"
    max_nonfinite: int = 20
    num_threads: int = 0
    # fault drills: micro-batches whose loss is made NaN, numbered from 0 over the run with skipped ones
    # included (while nothing was skipped and grad_accum is 1, micro-batch k is step k's)
    inject_nonfinite: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.max_steps < 1 or self.checkpoint_every < 1 or self.keep_checkpoints < 1 or self.grad_accum < 1:
            raise ValueError(
                "train: max_steps, checkpoint_every, keep_checkpoints and grad_accum must be >= 1, "
                f"got {self.max_steps}, {self.checkpoint_every}, {self.keep_checkpoints}, {self.grad_accum}"
            )
        if self.precision not in PRECISIONS:
            raise ValueError(f"train.precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")


@dataclass
class EMAConfig:
    """Exponential moving average of the weights; `export` picks what the exported model holds.
    `warmup`: the decay ramps up as min(decay, (1 + step) / (10 + step)) (see train/ema.py)."""

    enabled: bool = True
    decay: float = 0.999
    warmup: bool = True
    export: str = "ema"

    def __post_init__(self) -> None:
        if not 0 < self.decay < 1 or self.export not in ("ema", "raw"):
            raise ValueError(f"ema: decay in (0, 1) and export ema|raw, got {self.decay}, {self.export!r}")


@dataclass
class SampleConfig:
    """What the run leaves to look at: a grid for fixed prompts (or classes) and captions of
    held-out images, drawn with the exported model at the end of the run."""

    prompts: list[str] = field(default_factory=list)
    classes: list[int] = field(default_factory=list)
    per_prompt: int = 4
    num_steps: int = 10
    guidance: float = 1.0
    sampler: str | None = None
    captions: int = 8

    def __post_init__(self) -> None:
        for key in ("per_prompt", "captions"):  # 0: no grid, no captions
            if getattr(self, key) < 0:
                raise ValueError(f"sample.{key} must be >= 0, got {getattr(self, key)}")
        if self.num_steps < 1:
            raise ValueError(f"sample.num_steps must be >= 1, got {self.num_steps}")


@dataclass
class EvalConfig:
    """The final evaluation written to metrics.json (`unimodal eval` task names)."""

    tasks: list[str] = field(default_factory=lambda: ["val-loss"])
    samples: int = 64
    num_steps: int = 10
    guidance: float = 1.0


@dataclass
class TrainConfig:
    model: dict[str, Any] = field(default_factory=lambda: {"preset": "tiny"})
    tokenizer: str | None = None
    data: DataConfig = field(default_factory=lambda: DataConfig(builtin="shapes"))
    eval_data: DataConfig | None = None
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    train: LoopConfig = field(default_factory=LoopConfig)
    ema: EMAConfig = field(default_factory=EMAConfig)
    deepspeed: str = "training/deepspeed/zero0.json"
    sample: SampleConfig = field(default_factory=SampleConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(yaml.safe_dump(self.to_dict(), sort_keys=False))


def resolve_path(p: str | Path) -> Path:
    """A path from a recipe: as given if it exists (relative to the working directory), else
    relative to the project checkout, so recipes run from any directory."""
    p = Path(p)
    return p if p.is_absolute() or p.exists() else ROOT / p


def recipe_path(name_or_path: str | None) -> Path:
    """A recipe file: a path, or a name in training/configs/ (default: the main job's)."""
    if name_or_path is None:
        return CONFIG_DIR / f"{DEFAULT_RECIPE}.yaml"
    p = Path(name_or_path)
    if p.suffix in (".yaml", ".yml") or p.is_file():  # a folder named like a recipe (a run) is not one
        return p
    return CONFIG_DIR / f"{name_or_path}.yaml"


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> TrainConfig:
    """The recipe at `path` (default: the main job) with dotted overrides, validated."""
    p = recipe_path(str(path) if path is not None else None)
    if not p.is_file():
        raise FileNotFoundError(f"training recipe not found: {p}")
    try:
        data = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as e:
        raise ValueError(f"{p}: not valid YAML ({e})") from e
    data = apply_overrides(data, overrides or [])
    try:
        cfg = build(TrainConfig, data, "config")
        check_references(cfg)
    except (KeyError, TypeError, ValueError) as e:
        raise type(e)(f"{p}: {e.args[0] if e.args else e}") from e
    return cfg


def check_references(cfg: TrainConfig) -> None:
    """What the dataclasses cannot check alone, checked on load rather than after the engine
    starts: the model preset and its overrides, and the DeepSpeed JSON file."""
    from ..config import PRESETS, ModelConfig

    m = dict(cfg.model)
    preset = m.pop("preset", None)
    if preset is not None and preset not in PRESETS:
        raise KeyError(f"config.model.preset: unknown preset {preset!r}; presets are {sorted(PRESETS)}")
    try:
        mc = ModelConfig.from_preset(preset, **m) if preset else ModelConfig.from_dict(m, source="config.model")
    except (KeyError, TypeError, ValueError) as e:
        raise type(e)(f"config.model: {e.args[0] if e.args else e}") from e
    if cfg.loss.align_weight and not mc.align_layer:
        raise ValueError("config.loss.align_weight: self-alignment needs model.align_layer (a layer, 1..depth)")
    if cfg.loss.edge_weight and (cfg.data.source or {}).get("format") == "latents":
        raise ValueError("config.loss.edge_weight: edges are found in pixels; this run trains on latents")
    path = resolve_path(cfg.deepspeed)
    try:
        ds = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"config.deepspeed: cannot read {path}: {e}") from e
    if not isinstance(ds, dict):
        raise ValueError(f"config.deepspeed: {path} must hold a JSON object, got {type(ds).__name__}")
    if cfg.optim.kind == "muon":
        check_muon(cfg, ds.get("zero_optimization", {}))


def check_muon(cfg: TrainConfig, zero: dict[str, Any]) -> None:
    """Refuse Muon where DeepSpeed 0.19 would train it differently from one process (measured
    in tests/test_train.py; docs/training.md, "Muon")."""
    stage = zero.get("stage", 0)
    if zero.get("offload_optimizer", {}).get("device") == "cpu":
        raise ValueError("config.optim.kind: muon has no offloaded form; drop offload_optimizer or use adamw")
    if stage == 3:
        raise ValueError(
            "config.deepspeed: muon under ZeRO-3 is not supported: DeepSpeed runs it on every micro-batch "
            "(deepspeedai/DeepSpeed#8443) and only without a reduce-scatter; use ZeRO stage 0-2"
        )
    if stage and cfg.optim.grad_clip:
        raise ValueError(
            f"config.optim.grad_clip: under ZeRO stage {stage} DeepSpeed clips Muon's orthogonalised update "
            "rather than the gradient, which shrinks every step (deepspeedai/DeepSpeed#8439); "
            "set optim.grad_clip=0, or use ZeRO stage 0"
        )

"""The trainer: one DeepSpeed engine for every run, from one CPU process to many GPUs.

    unimodal train [--config YAML] [--out DIR] [--resume auto|PATH] [section.key=value ...]

World size 1 needs no launcher; `deepspeed` or `torchrun` start more processes (gloo on CPU,
NCCL on GPUs). The step: for each micro-batch, per-document-seeded noise, bf16 autocast forward
(weights and optimizer in float32), losses normalised by the global target counts, DeepSpeed's
backward/step (accumulation, clipping, ZeRO); then the EMA. A non-finite loss skips that
micro-batch on every rank and is counted; too many in a row stop the run with the last good
checkpoint intact. SIGINT/SIGTERM write a checkpoint before exiting.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import time
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from ..config import ModelConfig
from ..data.pipeline import DataConfig, batch_stream
from ..data.prefetch import Prefetcher
from ..diffusion import Diffusion, losses, target_counts
from ..hub import save_pretrained
from ..model import UnifiedModel
from ..precision import autocast_dtype
from . import checkpoint
from .config import TrainConfig, resolve_path
from .ema import EMA
from .optim import build_optimizer
from .schedule import lr_factor


class NonFiniteLossError(RuntimeError):
    """Raised when too many consecutive steps had a non-finite loss."""


def init_distributed() -> tuple[int, int, torch.device]:
    """(rank, world size, device): from the launcher's environment, or a single local process."""
    import deepspeed

    if "WORLD_SIZE" not in os.environ:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    cuda = torch.cuda.is_available()
    if not dist.is_initialized():
        deepspeed.init_distributed(dist_backend="nccl" if cuda else "gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0))) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    return rank, world, device


def load_tokenizer(spec: str | None, rank: int):
    """A tokenizer folder, or a spec YAML whose output folder is used (trained first if missing)."""
    if spec is None:
        return None
    from ..tokenizer import Tokenizer, TokenizerSpec, train_from_config

    p = resolve_path(spec)
    if p.suffix in (".yaml", ".yml"):
        out = TokenizerSpec.from_yaml(p).output
        if not (out / "unimodal_tokenizer.json").is_file():
            if rank == 0:
                train_from_config(p)
            if dist.is_initialized():
                dist.barrier()
        p = out
    return Tokenizer.load(p)


def build_model_config(cfg: TrainConfig, tokenizer) -> ModelConfig:
    m = dict(cfg.model)
    preset = m.pop("preset", None)
    if tokenizer is not None:
        m["vocab_size"] = tokenizer.vocab_size
    try:
        return ModelConfig.from_preset(preset, **m) if preset else ModelConfig.from_dict(m, source="config.model")
    except (KeyError, TypeError, ValueError) as e:
        raise type(e)(f"config.model: {e.args[0] if e.args else e}") from e


def deepspeed_config(cfg: TrainConfig, world: int) -> dict[str, Any]:
    """The recipe's DeepSpeed JSON with the batch, accumulation and clipping of the recipe."""
    path = resolve_path(cfg.deepspeed)
    try:
        ds = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"config.deepspeed: cannot read {path}: {e}") from e
    ds.update(
        train_micro_batch_size_per_gpu=cfg.data.batch_size,
        gradient_accumulation_steps=cfg.train.grad_accum,
        train_batch_size=cfg.data.batch_size * cfg.train.grad_accum * world,
        gradient_clipping=cfg.optim.grad_clip,
        steps_per_print=10**9,
        zero_allow_untested_optimizer=True,
    )
    return ds


class Trainer:
    def __init__(self, cfg: TrainConfig, out: str | Path) -> None:
        import deepspeed

        self.cfg = cfg
        self.out = Path(out)
        self.rank, self.world, self.device = init_distributed()
        if cfg.train.num_threads:
            torch.set_num_threads(cfg.train.num_threads)
        torch.manual_seed(cfg.train.seed)
        # "auto": bf16 autocast only where the hardware computes bf16 natively (unimodal/precision.py)
        self.compute_dtype = autocast_dtype(cfg.train.precision, self.device)
        computes = "bf16 autocast" if self.compute_dtype == torch.bfloat16 else "fp32"
        self.log(f"precision {cfg.train.precision}: {computes}")
        self.tokenizer = load_tokenizer(cfg.tokenizer, self.rank)
        self.model_cfg = build_model_config(cfg, self.tokenizer)
        model = UnifiedModel(self.model_cfg)
        self.stream = batch_stream(cfg.data, self.tokenizer, self.model_cfg, self.rank, self.world)
        if cfg.data.prefetch:  # build batches in a thread (docs/training.md, "Building batches ahead")
            self.stream = Prefetcher(self.stream, cfg.data.prefetch)
        ds = deepspeed_config(cfg, self.world)
        offload = ds.get("zero_optimization", {}).get("offload_optimizer", {}).get("device") == "cpu"
        opt = build_optimizer(model, cfg.optim, offload)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_factor(cfg.schedule, cfg.train.max_steps))
        self.engine, self.optimizer, _, self.scheduler = deepspeed.initialize(
            model=model, optimizer=opt, lr_scheduler=sched, config=ds
        )
        self.model = self.engine.module
        # ZeRO-3: every rank tracks its own partition. Stages 0-2: every rank holds the same whole
        # weights, so rank 0 alone keeps the EMA (one copy in memory and in each checkpoint)
        self.sharded = ds.get("zero_optimization", {}).get("stage", 0) == 3
        keep_ema = cfg.ema.enabled and (self.sharded or self.rank == 0)
        self.ema = EMA(self.model, cfg.ema.decay, cfg.ema.warmup) if keep_ema else None
        loss = cfg.loss
        if loss.context_noise and self.model_cfg.diffusion != "flow":
            raise ValueError(f"loss.context_noise needs a flow model, got diffusion {self.model_cfg.diffusion!r}")
        self.diffusion = Diffusion(
            self.model_cfg.diffusion, loss.time_mean, loss.time_std, loss.time_uniform, loss.context_noise, loss.context
        )
        if loss.weighting == "sample" and self.model_cfg.diffusion != "flow":
            raise ValueError(f"loss.weighting 'sample' needs a flow model, got diffusion {self.model_cfg.diffusion!r}")
        self.step = 0
        self.nonfinite = 0
        self.nonfinite_run = 0
        self.stop_signal: int | None = None
        self.ckpt_root = self.out / "checkpoints"

    # ---------------------------------------------------------------------------- state

    def extra_state(self) -> dict[str, Any]:
        return {
            "step": self.step,
            "nonfinite": self.nonfinite,
            "ema": self.ema.state_dict() if self.ema else None,
            "data": self.stream.state_dict(),
            "rng": checkpoint.rng_state(),
        }

    def save(self) -> Path:
        return checkpoint.save(
            self.engine, self.ckpt_root, self.step, self.extra_state(), self.tokenizer, self.cfg.train.keep_checkpoints
        )

    def resume(self, resume: str) -> bool:
        path = checkpoint.find_resume(self.ckpt_root, resume)
        if path is None:
            return False
        extra = checkpoint.load(self.engine, path)
        self.step, self.nonfinite = int(extra["step"]), int(extra["nonfinite"])
        if self.ema is not None and extra["ema"] is not None:
            self.ema.load_state_dict(extra["ema"])
        self.stream.load_state_dict(extra["data"])
        checkpoint.set_rng_state(extra["rng"])
        self.log(f"resumed from {path} at step {self.step}")
        return True

    def log(self, msg: str) -> None:
        if self.rank == 0:
            print(msg, flush=True)

    # ----------------------------------------------------------------------------- step

    def micro_step(self) -> tuple[dict[str, float], float] | None:
        """Forward and backward of one micro-batch: (global stats, global tokens), or None when
        its loss was not finite on some rank (then no rank calls backward: skipped)."""
        index = self.stream.batches  # this micro-batch's number in the run, skipped ones included
        batch = self.stream.__next__().to(self.device)
        counts = torch.tensor(target_counts(batch), dtype=torch.float64)
        if self.world > 1:
            dist.all_reduce(counts)
        denominators = (float(counts[0]) / self.world, float(counts[1]) / self.world)
        loss_cfg = self.cfg.loss
        self.diffusion.logit_mean = loss_cfg.time_mean_at(self.step, self.cfg.train.max_steps)
        corrupt = index % loss_cfg.context_every == 0 and self.step >= loss_cfg.context_from * self.cfg.train.max_steps
        self.diffusion.context_noise = loss_cfg.context_noise if corrupt else 0.0
        self_cond = self.model_cfg.self_condition and index % loss_cfg.self_cond_every == 0
        autocast = self.compute_dtype != torch.float32
        with torch.autocast(self.device.type, dtype=self.compute_dtype, enabled=autocast):
            out = losses(
                self.engine,
                batch,
                self.diffusion,
                text_weight=self.cfg.loss.text_weight,
                image_weight=self.cfg.loss.image_weight,
                denominators=denominators,
                align_weight=self.cfg.loss.align_weight,
                weighting=self.cfg.loss.weighting,
                edge_weight=self.cfg.loss.edge_weight,
                patch_shape=(self.model_cfg.channels, self.model_cfg.patch_size),
                self_cond=self_cond,
            )
        loss = out["loss"]
        if index in self.cfg.train.inject_nonfinite:
            loss = loss * float("nan")
        tc, ic = out["text_count"].double(), out["image_count"].double()
        # one all-reduce: finite flags, the loss shares, and the sums behind the global means
        parts = [
            torch.isfinite(loss),
            loss.detach(),
            out["text"].double() * tc,
            tc,
            out["image"].double() * ic,
            ic,
            (batch.layout.doc >= 0).sum(),
            out["align"].double() * ic,
        ]
        g = torch.stack([p.to(loss.device, torch.float64) for p in parts])
        if self.world > 1:
            dist.all_reduce(g)
        if g[0].item() < self.world:
            return None
        self.engine.backward(loss)
        self.engine.step()
        stats = {
            "loss": g[1].item() / self.world,  # each rank holds world x its part of the global mean
            "text": (g[2] / g[3].clamp(min=1)).item(),
            "image": (g[4] / g[5].clamp(min=1)).item(),
        }
        if self.cfg.loss.align_weight:
            stats["align"] = (g[7] / g[5].clamp(min=1)).item()
        return stats, g[6].item()

    def train_step(self, on_skip=None) -> dict[str, float]:
        """One optimizer step of grad_accum good micro-batches. A micro-batch with a non-finite
        loss is skipped, counted (`on_skip(count)`) and replaced by the next one, so DeepSpeed's
        accumulation window stays aligned. Raises after max_nonfinite skips in a row."""
        stats, tokens = [], 0.0
        while len(stats) < self.cfg.train.grad_accum:
            r = self.micro_step()
            if r is None:
                self.nonfinite += 1
                self.nonfinite_run += 1
                if on_skip is not None:
                    on_skip(self.nonfinite)
                if self.nonfinite_run >= self.cfg.train.max_nonfinite:
                    raise NonFiniteLossError(
                        f"{self.nonfinite_run} non-finite losses in a row at step {self.step}; stopping. The last "
                        f"good checkpoint is intact under {self.ckpt_root} (resume with --resume auto after fixing "
                        "the cause: lower the learning rate, check the data)"
                    )
                continue
            self.nonfinite_run = 0
            stats.append(r[0])
            tokens += r[1]
        if self.ema is not None:
            self.ema.update(self.model, self.step)
        self.step += 1
        mean = {k: sum(x[k] for x in stats) / len(stats) for k in stats[0]}
        mean["tokens"] = tokens
        return mean

    # ------------------------------------------------------------------------------ run

    def _log_skip(self, metrics, n: int) -> None:
        if metrics:
            metrics.write(json.dumps({"step": self.step, "skipped": "nonfinite", "nonfinite": n}) + "\n")
            metrics.flush()

    def _on_signal(self, signum, frame) -> None:
        self.stop_signal = signum

    def fit(self) -> int:
        """Train to max_steps; returns the exit status (0, or 128+signal after a checkpoint)."""
        from tqdm import tqdm

        cfg = self.cfg.train
        previous = {s: signal.signal(s, self._on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
        metrics = open(self.out / "metrics.jsonl", "a") if self.rank == 0 else None
        bar = tqdm(total=cfg.max_steps, initial=self.step, disable=self.rank != 0, dynamic_ncols=True)
        t_last, tok_last = time.perf_counter(), 0
        try:
            while self.step < cfg.max_steps:
                lr = self.scheduler.get_last_lr()[0]  # the rate this step uses
                stats = self.train_step(on_skip=lambda n: self._log_skip(metrics, n))
                tok_last += stats.pop("tokens")
                now = time.perf_counter()
                tps = tok_last / max(now - t_last, 1e-9)
                t_last, tok_last = now, 0
                if metrics:
                    row = {
                        "step": self.step,
                        **{k: round(v, 6) for k, v in stats.items()},
                        "lr": lr,
                        "tokens_per_s": round(tps, 1),
                        "nonfinite": self.nonfinite,
                        "time": time.time(),
                    }
                    metrics.write(json.dumps(row) + "\n")
                    metrics.flush()
                bar.update(1)
                bar.set_postfix(
                    loss=f"{stats['loss']:.4f}",
                    text=f"{stats['text']:.3f}",
                    img=f"{stats['image']:.4f}",
                    tok_s=f"{tps:.0f}",
                )
                if self.step % cfg.checkpoint_every == 0 or self.step == cfg.max_steps:
                    self.save()
                stop = torch.tensor(float(self.stop_signal or 0))
                if self.world > 1:
                    dist.all_reduce(stop, op=dist.ReduceOp.MAX)
                if stop.item():
                    if self.step % cfg.checkpoint_every != 0:
                        self.save()
                    self.log(f"stopped by signal {int(stop.item())} at step {self.step}; checkpoint written")
                    return 128 + int(stop.item())
        finally:
            bar.close()
            if isinstance(self.stream, Prefetcher):
                self.stream.close()
            if metrics:
                metrics.close()
            for s, handler in previous.items():  # after training, signals stop the process again
                signal.signal(s, handler)
        return 0

    # --------------------------------------------------------------------------- export

    def export_state_dict(self) -> dict[str, torch.Tensor]:
        """Float32 weights to export (EMA or raw): gathered on every rank under ZeRO-3 (a
        collective); under stages 0-2 rank 0 holds them whole and the other ranks return {}."""
        if self.rank != 0 and not self.sharded:
            return {}
        if self.ema is not None and self.cfg.ema.export == "ema":
            return self.ema.full_state_dict(self.model)
        import deepspeed

        params = list(self.model.parameters())
        with deepspeed.zero.GatheredParameters(params, enabled=hasattr(params[0], "ds_tensor")):
            return {n: p.detach().float().clone() for n, p in self.model.named_parameters()}

    def export(self) -> Path | None:
        state = self.export_state_dict()
        if self.rank != 0:
            return None
        model = UnifiedModel(self.model_cfg)
        missing, unexpected = model.load_state_dict(state, strict=False)
        if unexpected or [k for k in missing if not k.startswith("rope.")]:
            raise RuntimeError(f"export: state does not match the model ({missing}, {unexpected})")
        path = save_pretrained(model, self.out / "model", self.tokenizer)
        source = self.cfg.data.source or {}
        if source.get("format") == "latents":  # the model generates latents: ship their autoencoder
            from ..codec import save_codec
            from ..data.latents import codec_of

            save_codec(path, codec_of(source["path"]))
        return path


def run(cfg: TrainConfig, out: str | Path, resume: str | None = None) -> int:
    """The whole job: train (resuming if asked), export, then samples, captions, plots, metrics."""
    from .artifacts import finalize

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    trainer = Trainer(cfg, out)
    if trainer.rank == 0:
        cfg.save(out / "config.yaml")
    if resume and not trainer.resume(resume) and resume != "auto":
        raise FileNotFoundError(f"nothing to resume at {resume}")
    status = trainer.fit()
    if status:
        return status
    trainer.export()
    if trainer.rank == 0:
        finalize(trainer)
    if dist.is_initialized():
        dist.barrier()
    return 0


def eval_config(cfg: TrainConfig) -> DataConfig:
    """Held-out data: `eval_data`, or the training source's test split."""
    if cfg.eval_data is not None:
        return cfg.eval_data
    d = cfg.data
    return DataConfig(
        builtin=d.builtin,
        task=d.task,
        n=d.n,
        split="test",
        options=dict(d.options),
        source=d.source,
        batch_size=d.batch_size,
        seed=d.seed + 1,
        collate={**d.collate, "prompt_dropout": 0.0, "label_dropout": 0.0},
    )


__all__ = ["NonFiniteLossError", "Trainer", "eval_config", "run"]

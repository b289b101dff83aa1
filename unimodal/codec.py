"""Image codecs: what turns pixels into the continuous values a model diffuses, and back.

    codec = VAECodec.from_pretrained("/models/sd-vae-ft-ema")   # a local folder: nothing is downloaded
    z = codec.encode(images)    # (T, 3, H, W) in [-1, 1] -> (T, 4, H/8, W/8), scaled for the model
    x = codec.decode(z)         # -> (T, 3, H, W) in [-1, 1]

- `PixelCodec`: the identity, for models on pixels.
- `VAECodec`: a diffusers `AutoencoderKL` (the `latents` extra: ``pip install -e .[latents]``).
  Latents are ``(posterior mean - shift) * scale`` (or a posterior sample), with `scale` and
  `shift` the VAE config's `scaling_factor` and `shift_factor` unless given; decoding inverts it.
  Images go through the VAE in batches of `batch_size` frames, in fp32, bf16 or fp16, on `device`;
  results come back as float32 on the input's device.

A model folder carries its codec as ``codec/`` (the VAE saved by `save_pretrained`, scaling factor
and shift in its config) or as ``codec.json`` (``{"type": "vae", "path": ...}`` naming a local VAE
folder, relative paths from the model folder). `load_codec(folder)` returns it (None when there is
none) and checks its channels against the model's; `save_codec(folder, codec)` writes one.
"""

from __future__ import annotations

import copy
import json
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

INSTALL_HINT = "pip install -e .[latents]"
CODEC_DIR = "codec"
CODEC_JSON = "codec.json"
_DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
}
_LOAD = {"low_cpu_mem_usage": False}  # without accelerate installed, diffusers warns otherwise
_SPEC_KEYS = {"type", "path", "subfolder", "scaling_factor", "shift_factor"}


def dtype_of(value: str | torch.dtype) -> torch.dtype:
    """A torch dtype from its name (float32/fp32, bfloat16/bf16, float16/fp16) or itself."""
    if isinstance(value, torch.dtype):
        if value not in _DTYPES.values():
            raise ValueError(f"codec dtype must be float32, bfloat16 or float16, got {value}")
        return value
    if value not in _DTYPES:
        raise ValueError(f"codec dtype must be one of {sorted(_DTYPES)}, got {value!r}")
    return _DTYPES[value]


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def autoencoder_class():
    """diffusers' `AutoencoderKL`, or an ImportError that says how to install it."""
    try:
        from diffusers import AutoencoderKL
    except ImportError as e:
        raise ImportError(
            f"latent autoencoders need diffusers, which is not installed: {INSTALL_HINT} (or pip install diffusers)"
        ) from e
    return AutoencoderKL


def _as_batch(x: torch.Tensor | Any, what: str) -> tuple[torch.Tensor, tuple[int, ...]]:
    """(N, C, H, W) from (..., C, H, W), and the leading shape to restore."""
    x = torch.as_tensor(x)
    if x.dim() < 3:
        raise ValueError(f"{what} must be (C, H, W), (T, C, H, W) or (..., C, H, W), got shape {tuple(x.shape)}")
    lead = tuple(x.shape[:-3])
    return x.reshape(-1, *x.shape[-3:]), lead


class Codec:
    """Pixels (..., C, H, W) in [-1, 1] <-> what the model sees (..., channels, H/downsample, W/downsample)."""

    kind = "codec"
    channels: int | None = None  # channels the model sees; None: any
    image_channels: int | None = None
    downsample: int = 1

    def encode(self, images: torch.Tensor, generator=None) -> torch.Tensor:
        raise NotImplementedError

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def latent_shape(self, shape: Sequence[int]) -> tuple[int, ...]:
        """The shape `encode` gives for images of `shape` (..., C, H, W)."""
        *lead, c, h, w = shape
        if h % self.downsample or w % self.downsample:
            raise ValueError(f"image size {h}x{w} is not a multiple of the codec's downsampling {self.downsample}")
        return (*lead, self.channels or c, h // self.downsample, w // self.downsample)

    def to_dict(self) -> dict[str, Any]:
        """What identifies the codec's output (recorded with cached latents)."""
        return {"type": self.kind}


class PixelCodec(Codec):
    """The identity: models that diffuse pixels in [-1, 1]."""

    kind = "pixel"

    def __init__(self, channels: int | None = None) -> None:
        self.channels = self.image_channels = channels

    def encode(self, images: torch.Tensor, generator=None) -> torch.Tensor:
        return torch.as_tensor(images).float()

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        return torch.as_tensor(latents).float()

    def __repr__(self) -> str:
        return f"PixelCodec(channels={self.channels})"


class VAECodec(Codec):
    """A diffusers `AutoencoderKL` as the image codec.

    `scaling_factor` / `shift_factor` default to the VAE config's (0.18215 and none for the SD VAE).
    `sample=True` encodes to a posterior sample instead of its mean. `batch_size` frames go through
    the VAE at a time, in `dtype`, on `device`. `decode` clamps to [-1, 1] unless `clamp=False`.
    `source` is where the VAE was loaded from (recorded with cached latents and in `codec.json`).
    """

    kind = "vae"

    def __init__(
        self,
        vae,
        scaling_factor: float | None = None,
        shift_factor: float | None = None,
        sample: bool = False,
        batch_size: int = 16,
        dtype: str | torch.dtype = "float32",
        device: str | torch.device = "cpu",
        clamp: bool = True,
        source: str | None = None,
        subfolder: str | None = None,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"VAECodec.batch_size must be >= 1, got {batch_size}")
        self.dtype = dtype_of(dtype)
        self.device = torch.device(device)
        self.vae = vae.eval().requires_grad_(False).to(self.device)
        if next(vae.parameters()).dtype != self.dtype:
            self.vae = self.vae.to(dtype=self.dtype)
        cfg = vae.config
        scale = scaling_factor if scaling_factor is not None else getattr(cfg, "scaling_factor", None)
        self.scaling_factor = float(scale if scale is not None else 1.0)
        shift = shift_factor if shift_factor is not None else getattr(cfg, "shift_factor", None)
        self.shift_factor = float(shift) if shift is not None else None
        if self.scaling_factor == 0:
            raise ValueError("VAECodec.scaling_factor must be non-zero")
        self.sample, self.batch_size, self.clamp = sample, batch_size, clamp
        self.source, self.subfolder = source, subfolder
        self.channels = int(cfg.latent_channels)
        self.image_channels = int(cfg.in_channels)
        self.downsample = 2 ** (len(cfg.block_out_channels) - 1)

    @classmethod
    def from_pretrained(
        cls, path: str | Path, subfolder: str | None = None, allow_download: bool = False, **kwargs
    ) -> VAECodec:
        """Load a VAE saved by diffusers (`config.json` + weights) from a local folder.

        A folder without `config.json` but with `vae/config.json` (a whole diffusers pipeline,
        e.g. DiT's) loads its `vae` subfolder. Anything else is taken for a Hub id only if it is
        already in the local Hugging Face cache, unless `allow_download=True`: nothing is
        downloaded by default. `kwargs` go to `VAECodec`.
        """
        autoencoder = autoencoder_class()
        p = Path(path)
        if p.is_dir():
            if subfolder is None and not (p / "config.json").is_file() and (p / "vae" / "config.json").is_file():
                subfolder = "vae"
            where = p / subfolder if subfolder else p
            if not (where / "config.json").is_file():
                raise FileNotFoundError(
                    f"{where}: no config.json: not an AutoencoderKL folder (write one with vae.save_pretrained(folder))"
                )
            vae = autoencoder.from_pretrained(str(p), subfolder=subfolder, local_files_only=True, **_LOAD)
            source = str(p.resolve())
        else:
            try:
                with warnings.catch_warnings():  # huggingface_hub deprecation noise from inside diffusers
                    warnings.simplefilter("ignore", UserWarning)
                    vae = autoencoder.from_pretrained(
                        str(path), subfolder=subfolder, local_files_only=not allow_download, **_LOAD
                    )
            except (OSError, ValueError) as e:
                hint = (
                    ""
                    if allow_download
                    else " (nothing is downloaded: fetch it once yourself, e.g. "
                    f"`huggingface-cli download {path} --local-dir DIR`, and pass DIR; "
                    "or allow_download=True / --allow-download)"
                )
                raise FileNotFoundError(f"no VAE folder at {path}{hint}: {e}") from e
            source = str(path)
        return cls(vae, source=source, subfolder=subfolder, **kwargs)

    # ---------------------------------------------------------------------------------- coding

    def _generators(self, generator, n: int) -> list | None:
        if generator is None or isinstance(generator, torch.Generator):
            return None
        gens = list(generator)
        if len(gens) != n:
            raise ValueError(f"{len(gens)} generators for {n} images")
        return gens

    @torch.no_grad()
    def encode(self, images: torch.Tensor, generator=None, sample: bool | None = None) -> torch.Tensor:
        """(..., C, H, W) floats in [-1, 1] -> latents (..., channels, H/f, W/f), float32.

        The posterior mean, or with `sample` (default: the codec's) a sample, drawn with
        `generator`: one `torch.Generator`, or one per image so that each image's sample does not
        depend on the batch it is encoded in. Greyscale images (C = 1) are repeated to RGB.
        """
        x, lead = _as_batch(images, "images")
        if x.dtype == torch.uint8:
            raise ValueError("images are uint8: pass floats in [-1, 1] (Image.to_tensor() gives them)")
        if not x.is_floating_point():
            raise ValueError(f"images must be floats in [-1, 1], got {x.dtype}")
        if x.shape[1] == 1 and self.image_channels == 3:
            x = x.expand(-1, 3, -1, -1)
        if x.shape[1] != self.image_channels:
            raise ValueError(f"images have {x.shape[1]} channels, the VAE takes {self.image_channels}")
        out_shape = self.latent_shape(x.shape)
        if x.numel():
            lo, hi = float(x.min()), float(x.max())
            if lo < -1.5 or hi > 1.5:
                raise ValueError(f"image values span [{lo:g}, {hi:g}]: the VAE takes [-1, 1] (uint8 / 127.5 - 1)")
        sample = self.sample if sample is None else sample
        gens = self._generators(generator, x.shape[0]) if sample else None
        out = []
        for start in range(0, x.shape[0], self.batch_size):
            chunk = x[start : start + self.batch_size].to(device=self.device, dtype=self.dtype)
            dist = self.vae.encode(chunk).latent_dist
            z = dist.mean.float()
            if sample:
                if gens is not None:
                    eps = torch.stack(
                        [torch.randn(z.shape[1:], generator=g) for g in gens[start : start + len(chunk)]]
                    ).to(z.device)
                else:
                    eps = torch.randn(z.shape, generator=generator, device="cpu").to(z.device)
                z = z + dist.std.float() * eps
            out.append(((z - (self.shift_factor or 0.0)) * self.scaling_factor).to(x.device))
        z = torch.cat(out) if out else torch.zeros(out_shape)
        return z.reshape(*lead, *z.shape[1:])

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Latents (..., channels, h, w) -> images (..., C, h*f, w*f) float32, clamped to [-1, 1]."""
        z, lead = _as_batch(latents, "latents")
        if z.shape[1] != self.channels:
            raise ValueError(f"latents have {z.shape[1]} channels, the VAE makes {self.channels}")
        out = []
        for start in range(0, z.shape[0], self.batch_size):
            chunk = z[start : start + self.batch_size].float() / self.scaling_factor + (self.shift_factor or 0.0)
            x = self.vae.decode(chunk.to(device=self.device, dtype=self.dtype)).sample.float()
            out.append((x.clamp(-1, 1) if self.clamp else x).to(z.device))
        h, w = z.shape[-2:]
        x = torch.cat(out) if out else torch.zeros(0, self.image_channels, h * self.downsample, w * self.downsample)
        return x.reshape(*lead, *x.shape[1:])

    # ------------------------------------------------------------------------------ describing

    def to_dict(self) -> dict[str, Any]:
        return {
            "type": self.kind,
            "path": self.source,
            "subfolder": self.subfolder,
            "scaling_factor": self.scaling_factor,
            "shift_factor": self.shift_factor,
            "channels": self.channels,
            "downsample": self.downsample,
            "posterior": "sample" if self.sample else "mean",
        }

    def save_pretrained(self, directory: str | Path) -> Path:
        """Write the VAE (fp32 safetensors) with the effective scaling factor and shift in its config."""
        vae = self.vae if self.dtype == torch.float32 else copy.deepcopy(self.vae).float()
        vae.register_to_config(scaling_factor=self.scaling_factor, shift_factor=self.shift_factor)
        vae.save_pretrained(str(directory), safe_serialization=True)
        return Path(directory)

    def __repr__(self) -> str:
        return (
            f"VAECodec(source={self.source!r}, channels={self.channels}, downsample={self.downsample}, "
            f"scaling_factor={self.scaling_factor:g}, shift_factor={self.shift_factor}, "
            f"posterior={'sample' if self.sample else 'mean'}, dtype={dtype_name(self.dtype)}, device={self.device})"
        )


def encode_document(codec: Codec | None, doc):
    """`doc` with its pixel images encoded by `codec` (as `Image(latent=True)`); latent images, text
    and a None codec leave it as it is. For feeding given images to a model that works on latents."""
    from .documents import Document, Image

    if codec is None or isinstance(codec, PixelCodec) or not any(not im.latent for im in doc.images):
        return doc
    segments = [
        Image(codec.encode(s.to_tensor()), latent=True) if isinstance(s, Image) and not s.latent else s
        for s in doc.segments
    ]
    return Document(segments, label=doc.label, meta=dict(doc.meta))


# -------------------------------------------------------------------------------- model folders


def codec_from_spec(spec: dict[str, Any], base: str | Path = ".", **kwargs) -> Codec:
    """A codec from its `codec.json` form: ``{"type": "pixel"}`` or ``{"type": "vae", "path": DIR,
    "subfolder": null, "scaling_factor": null, "shift_factor": null}`` (a relative path is read from
    `base`). `kwargs` (device, dtype, batch_size...) go to `VAECodec`."""
    unknown = sorted(set(spec) - _SPEC_KEYS)
    if unknown:
        raise ValueError(f"{CODEC_JSON}: unknown keys {unknown}; known keys are {sorted(_SPEC_KEYS)}")
    kind = spec.get("type", "vae")
    if kind == "pixel":
        return PixelCodec()
    if kind != "vae":
        raise ValueError(f"{CODEC_JSON}: type must be 'vae' or 'pixel', got {kind!r}")
    if not spec.get("path"):
        raise ValueError(f"{CODEC_JSON}: a 'vae' codec needs a 'path' to a local VAE folder")
    path = Path(spec["path"]).expanduser()
    if not path.is_absolute() and (Path(base) / path).exists():
        path = Path(base) / path
    return VAECodec.from_pretrained(
        path,
        subfolder=spec.get("subfolder"),
        scaling_factor=spec.get("scaling_factor"),
        shift_factor=spec.get("shift_factor"),
        **kwargs,
    )


def load_codec(model_dir: str | Path, device: str | torch.device = "cpu", **kwargs) -> Codec | None:
    """The codec of a model folder (`codec.json`, else a `codec/` VAE folder), or None when it has none.

    When the folder has a `config.json`, the codec's latent channels must be the model's channels.
    """
    d = Path(model_dir)
    if (d / CODEC_JSON).is_file():
        try:
            spec = json.loads((d / CODEC_JSON).read_text())
        except json.JSONDecodeError as e:
            raise ValueError(f"{d / CODEC_JSON}: not valid JSON: {e}") from e
        codec = codec_from_spec(spec, base=d, device=device, **kwargs)
    elif (d / CODEC_DIR / "config.json").is_file():
        codec = VAECodec.from_pretrained(d / CODEC_DIR, device=device, **kwargs)
    else:
        return None
    check_codec(d, codec)
    return codec


def check_codec(model_dir: str | Path, codec: Codec) -> None:
    """Raise unless the codec makes the channels the model in `model_dir` (its config.json) takes."""
    path = Path(model_dir) / "config.json"
    if path.is_file() and codec.channels is not None:
        channels = json.loads(path.read_text()).get("channels")
        if channels is not None and channels != codec.channels:
            raise ValueError(
                f"{model_dir}: the model takes {channels} channels but its codec ({codec!r}) makes {codec.channels}"
            )


def save_codec(model_dir: str | Path, codec: VAECodec | str | Path, link: bool = False) -> Path:
    """Give a model folder its codec: a copy of the VAE in `codec/`, or with `link=True` a
    `codec.json` naming the VAE's folder (absolute) and its scaling factor and shift.
    `codec` is a `VAECodec` or a VAE folder; its channels must be the model's (when the folder
    already holds a model). Returns what was written."""
    d = Path(model_dir)
    d.mkdir(parents=True, exist_ok=True)
    if not isinstance(codec, VAECodec):
        codec = VAECodec.from_pretrained(codec)
    check_codec(d, codec)
    if link:
        if not codec.source or not Path(codec.source).is_dir():
            raise ValueError(f"cannot link {codec!r}: it was not loaded from a local folder; copy it instead")
        spec = {
            "type": "vae",
            "path": str(Path(codec.source).resolve()),
            "subfolder": codec.subfolder,
            "scaling_factor": codec.scaling_factor,
            "shift_factor": codec.shift_factor,
        }
        (d / CODEC_JSON).write_text(json.dumps(spec, indent=2) + "\n")
        return d / CODEC_JSON
    return codec.save_pretrained(d / CODEC_DIR)


__all__ = [
    "CODEC_DIR",
    "CODEC_JSON",
    "INSTALL_HINT",
    "Codec",
    "PixelCodec",
    "VAECodec",
    "autoencoder_class",
    "check_codec",
    "codec_from_spec",
    "encode_document",
    "load_codec",
    "save_codec",
]

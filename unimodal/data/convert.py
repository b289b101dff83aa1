"""Image conversion: any decoded image or array -> a uint8 H x W x C array in one configured form.

Real data comes as greyscale, RGBA, palette, CMYK, 16-bit or float images of any size; the model
wants one mode and (usually) one size. `ImageConversion` says how to get there: the colour mode,
the target size, how to resize (cover the target keeping the aspect ratio, stretch, or not at
all), how to crop (centre, seeded random, none), and whether a wrong size is converted or is an
error. Alpha is composited on a configurable background. Values that cannot become pixels (NaN,
inf, out-of-range floats, odd shapes) raise `BadValue`, which the loaders turn into named
`BadRecord`s. Frames of a video share one geometry (one crop box for the whole clip).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields
from typing import Any

import numpy as np
from PIL import Image as PILImage
from PIL import ImageOps

from .errors import BAD_ARRAY, NON_FINITE, UNREADABLE_IMAGE, WRONG_SIZE, BadValue

MODES = ("RGB", "L")
RESIZES = ("shorter_side", "exact", "none")
CROPS = ("center", "random", "none")
ON_WRONG_SIZE = ("convert", "error")
RESAMPLE = {
    "nearest": PILImage.Resampling.NEAREST,
    "box": PILImage.Resampling.BOX,
    "bilinear": PILImage.Resampling.BILINEAR,
    "bicubic": PILImage.Resampling.BICUBIC,
    "lanczos": PILImage.Resampling.LANCZOS,
}
_TO_RGB = ("CMYK", "YCbCr", "LAB", "HSV", "RGBX")
_ORIENTATION = 0x0112


def _choice(name: str, value: Any, allowed: Sequence[Any]) -> None:
    if value not in allowed:
        raise ValueError(f"ImageConversion.{name} must be one of {tuple(allowed)}, got {value!r}")


@dataclass
class ImageConversion:
    """How decoded images become arrays for `Image(...)`; validated on construction.

    - `mode`: "RGB" (3 channels) or "L" (1 channel); every input mode is converted to it.
    - `size`: target (height, width), an int for a square, or None to keep each image's size.
    - `resize`: "shorter_side" scales keeping the aspect ratio until the image covers the target,
      then crops; "exact" stretches to the target; "none" only crops (smaller images are bad).
    - `crop`: "center", "random" (seeded by the generator passed to the call) or "none" (only
      with resize="exact").
    - `on_wrong_size`: "convert" resizes/crops as above; "error" makes any image whose size is not
      `size` a bad record.
    - `background`: grey level or RGB the alpha channel is composited on.
    - `resample`: PIL filter for resizing ("nearest", "box", "bilinear", "bicubic", "lanczos").
    - `float_range`: (low, high) that float arrays span; values outside are bad records.
    - `exif_transpose`: apply the EXIF orientation of photos.
    """

    mode: str = "RGB"
    size: int | tuple[int, int] | None = None
    resize: str = "shorter_side"
    crop: str = "center"
    on_wrong_size: str = "convert"
    background: int | tuple[int, int, int] = (255, 255, 255)
    resample: str = "bicubic"
    float_range: tuple[float, float] = (0.0, 1.0)
    exif_transpose: bool = True

    def __post_init__(self) -> None:
        _choice("mode", self.mode, MODES)
        _choice("resize", self.resize, RESIZES)
        _choice("crop", self.crop, CROPS)
        _choice("on_wrong_size", self.on_wrong_size, ON_WRONG_SIZE)
        _choice("resample", self.resample, tuple(RESAMPLE))
        if self.size is not None:
            size = (self.size, self.size) if isinstance(self.size, int) else tuple(self.size)
            if len(size) != 2 or not all(isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in size):
                raise ValueError(
                    f"ImageConversion.size must be a positive int, [height, width] or None, got {self.size!r}"
                )
            self.size = size  # type: ignore[assignment]
            if self.on_wrong_size == "convert" and self.crop == "none" and self.resize != "exact":
                raise ValueError(
                    f"ImageConversion: crop='none' with resize={self.resize!r} cannot guarantee size {size}; "
                    "use a crop, resize='exact', or on_wrong_size='error'"
                )
        bg = (self.background,) * 3 if isinstance(self.background, int) else tuple(self.background)
        if len(bg) != 3 or not all(isinstance(v, int) and 0 <= v <= 255 for v in bg):
            raise ValueError(f"ImageConversion.background must be 0..255 or an RGB triple, got {self.background!r}")
        self.background = bg  # type: ignore[assignment]
        lo, hi = (float(v) for v in self.float_range)
        if not (np.isfinite(lo) and np.isfinite(hi) and lo < hi):
            raise ValueError(
                f"ImageConversion.float_range must be finite (low, high) with low < high, got {self.float_range!r}"
            )
        self.float_range = (lo, hi)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ImageConversion:
        """Build from a config mapping; unknown keys are named in the error."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown ImageConversion keys {unknown}; known keys are {sorted(known)}")
        return cls(**d)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["size"] = list(self.size) if self.size is not None else None
        d["background"] = list(self.background)  # type: ignore[arg-type]
        d["float_range"] = list(self.float_range)
        return d

    @property
    def channels(self) -> int:
        return 3 if self.mode == "RGB" else 1

    def __call__(self, image: Any, rng: np.random.Generator | None = None) -> np.ndarray:
        """A PIL image or an array (H x W [x C]; T x H x W x C is treated as frames) -> uint8
        H x W x C (T x H x W x C for frames). Raises `BadValue` for data that cannot be pixels."""
        if isinstance(image, np.ndarray) and image.ndim == 4:
            return self.frames(image, rng)
        im = self._pil(image)
        box = self._geometry(im.size, rng)
        return self._finish(self._apply(im, box))

    def frames(self, frames: Sequence[Any] | np.ndarray, rng: np.random.Generator | None = None) -> np.ndarray:
        """A clip (T x H x W x C array, T x H x W greyscale array, or a list of images) -> uint8
        T x H x W x C; all frames share one resize and crop, so motion is not jittered."""
        if isinstance(frames, np.ndarray) and frames.ndim == 3:
            frames = frames[..., None]
        if isinstance(frames, np.ndarray) and frames.ndim != 4:
            raise BadValue(BAD_ARRAY, f"shape {frames.shape}: a clip must be T x H x W x C or T x H x W")
        if len(frames) == 0:
            raise BadValue(BAD_ARRAY, "a clip with no frames")
        ims = [self._pil(f) for f in frames]
        for k, im in enumerate(ims):
            if im.size != ims[0].size:
                raise BadValue(
                    WRONG_SIZE, f"frame {k} is {im.height}x{im.width}, frame 0 is {ims[0].height}x{ims[0].width}"
                )
        box = self._geometry(ims[0].size, rng)
        return np.stack([self._finish(self._apply(im, box)) for im in ims])

    # -- steps -------------------------------------------------------------------------------

    def _pil(self, x: Any) -> PILImage.Image:
        """Any supported input -> a PIL image in `self.mode` (alpha composited)."""
        if isinstance(x, PILImage.Image):
            im = x
            if self.exif_transpose and im.getexif().get(_ORIENTATION, 1) != 1:
                im = ImageOps.exif_transpose(im)
        else:
            im = _array_to_pil(np.asarray(x), self.float_range)
        return self._to_mode(im)

    def _to_mode(self, im: PILImage.Image) -> PILImage.Image:
        m = im.mode
        if m in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
            im = _array_to_pil(np.asarray(im), self.float_range, sixteen_bit=m == "I")
            m = im.mode
        if m == "P":
            im = im.convert("RGBA" if "transparency" in im.info else "RGB")
        elif m in ("PA", "La", "RGBa", "LA"):
            im = im.convert("RGBA")
        elif m == "1":
            im = im.convert("L")
        elif m in _TO_RGB or m not in ("L", "RGB", "RGBA"):
            try:
                im = im.convert("RGB")
            except (ValueError, OSError) as e:
                raise BadValue(UNREADABLE_IMAGE, f"cannot convert image mode {m} to RGB: {e}") from e
        if im.mode == "RGBA":
            bg = PILImage.new("RGB", im.size, self.background)  # type: ignore[arg-type]
            bg.paste(im, mask=im.getchannel("A"))
            im = bg
        return im if im.mode == self.mode else im.convert(self.mode)

    def _geometry(self, wh: tuple[int, int], rng: np.random.Generator | None) -> tuple | None:
        """(resize_to (w, h) or None, crop box or None) for an image of PIL size `wh`."""
        if self.size is None:
            return None
        th, tw = self.size  # type: ignore[misc]
        w, h = wh
        if (h, w) == (th, tw):
            return None
        if self.on_wrong_size == "error":
            raise BadValue(WRONG_SIZE, f"{h}x{w}, expected {th}x{tw}")
        if self.resize == "exact":
            return (tw, th), None
        resize_to = None
        if self.resize == "shorter_side":
            s = max(th / h, tw / w)
            h, w = max(th, round(h * s)), max(tw, round(w * s))
            resize_to = (w, h)
        elif h < th or w < tw:
            raise BadValue(WRONG_SIZE, f"{h}x{w} is smaller than the crop {th}x{tw} and resize='none'")
        if self.crop == "random":
            if rng is None:
                raise ValueError("ImageConversion(crop='random') needs a numpy Generator (rng) for reproducible crops")
            top, left = int(rng.integers(0, h - th + 1)), int(rng.integers(0, w - tw + 1))
        else:
            top, left = (h - th) // 2, (w - tw) // 2
        return resize_to, (left, top, left + tw, top + th)

    def _apply(self, im: PILImage.Image, geometry: tuple | None) -> PILImage.Image:
        if geometry is None:
            return im
        resize_to, box = geometry
        if resize_to is not None and resize_to != im.size:
            im = im.resize(resize_to, RESAMPLE[self.resample])
        return im.crop(box) if box is not None else im

    @staticmethod
    def _finish(im: PILImage.Image) -> np.ndarray:
        a = np.array(im, dtype=np.uint8)
        return a[..., None] if a.ndim == 2 else a


def _array_to_pil(a: np.ndarray, float_range: tuple[float, float], sixteen_bit: bool = False) -> PILImage.Image:
    """A numeric H x W [x C] array -> a PIL image (L, LA, RGB or RGBA), values scaled to 0..255."""
    if a.dtype == object or not (np.issubdtype(a.dtype, np.number) or a.dtype == bool):
        raise BadValue(BAD_ARRAY, f"dtype {a.dtype}: expected numbers")
    if a.ndim == 3 and a.shape[-1] == 1:
        a = a[..., 0]
    if not (a.ndim == 2 or (a.ndim == 3 and a.shape[-1] in (2, 3, 4))) or a.size == 0:
        raise BadValue(BAD_ARRAY, f"shape {a.shape}: expected H x W or H x W x C with C in 1..4")
    if a.dtype == bool:
        a = a.astype(np.uint8) * 255
    elif np.issubdtype(a.dtype, np.floating):
        bad = ~np.isfinite(a)
        if bad.any():
            raise BadValue(NON_FINITE, f"{int(bad.sum())} of {a.size} values")
        lo, hi = float_range
        tol = 1e-3 * (hi - lo)
        if a.min() < lo - tol or a.max() > hi + tol:
            raise BadValue(
                BAD_ARRAY, f"float values in [{a.min():.4g}, {a.max():.4g}], outside float_range [{lo}, {hi}]"
            )
        a = np.clip(np.rint((a.astype(np.float64) - lo) * (255.0 / (hi - lo))), 0, 255).astype(np.uint8)
    elif a.dtype != np.uint8:
        lo, hi = int(a.min()), int(a.max())
        if (a.dtype.kind == "u" and a.dtype.itemsize == 2) or (sixteen_bit and hi > 255):
            if lo < 0 or hi > 65535:
                raise BadValue(BAD_ARRAY, f"16-bit image values in [{lo}, {hi}]")
            a = np.rint(a.astype(np.float64) / 257.0).astype(np.uint8)
        elif lo < 0 or hi > 255:
            raise BadValue(BAD_ARRAY, f"integer values in [{lo}, {hi}], outside 0..255")
        else:
            a = a.astype(np.uint8)
    return PILImage.fromarray(np.ascontiguousarray(a))  # L, LA, RGB or RGBA from the shape

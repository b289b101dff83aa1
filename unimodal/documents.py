"""Documents: ordered segments of text and images (an image may be a video), optionally labelled.

A `Document` is what users hand to the library; everything else (tokens, patches, the packed
layout) is derived from it. Images are stored as given and converted to a float tensor of shape
(frames, channels, height, width) only when needed, so a `Document` stays cheap to build.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch


@dataclass
class Text:
    """A run of text. `ids` may hold pre-tokenised ids, in which case `text` is informational."""

    text: str = ""
    ids: list[int] | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.text, str):
            raise TypeError(f"Text.text must be a str, got {type(self.text).__name__}")


# uint8 -> [-1, 1] as float32, value by value the same as `x.float() / 127.5 - 1.0`
_UINT8_TO_UNIT = (torch.arange(256, dtype=torch.uint8).float() / 127.5 - 1.0).numpy()


@dataclass
class Image:
    """An image or a video, in pixel space or as precomputed latents.

    `data` may be a PIL image, a numpy array or a torch tensor:
      - pixels: (H, W), (H, W, C) or, for video, (T, H, W, C); uint8 in [0, 255] or float in [-1, 1];
      - latents (`latent=True`): (C, H, W) or (T, C, H, W), used as they are.
    `to_tensor()` returns float32 (T, C, H, W); pixel values are scaled to [-1, 1].
    """

    data: Any
    latent: bool = False

    def to_tensor(self) -> torch.Tensor:
        x = self.data
        if not isinstance(x, (np.ndarray, torch.Tensor)):
            try:
                from PIL import Image as PILImage
            except ImportError as e:  # pragma: no cover - pillow is a core dependency
                raise TypeError("Image.data must be an array, a tensor or a PIL image") from e
            if not isinstance(x, PILImage.Image):
                raise TypeError(f"Image.data must be an array, a tensor or a PIL image, got {type(x).__name__}")
            x = np.asarray(x)
        if self.latent:
            t = torch.tensor(x) if isinstance(x, np.ndarray) else x  # a copy: arrays may be read-only views
            if t.dim() == 3:
                t = t.unsqueeze(0)
            if t.dim() != 4:
                raise ValueError(f"latent Image must be (C, H, W) or (T, C, H, W), got shape {tuple(t.shape)}")
            return t.float()
        if x.ndim == 2:
            x = x[..., None]
        if x.ndim == 3:
            x = x[None]
        if x.ndim != 4:
            raise ValueError(f"pixel Image must be (H, W), (H, W, C) or (T, H, W, C), got shape {tuple(x.shape)}")
        if isinstance(x, np.ndarray) and x.dtype == np.uint8:  # one lookup: a new array, in (T, C, H, W) order
            return torch.from_numpy(_UINT8_TO_UNIT[x.transpose(0, 3, 1, 2)])
        t = torch.tensor(x) if isinstance(x, np.ndarray) else x  # a copy: arrays may be read-only views
        t = t.permute(0, 3, 1, 2)
        return t.float() / 127.5 - 1.0 if t.dtype == torch.uint8 else t.float()

    @property
    def is_uint8(self) -> bool:
        """Whether the data are uint8 pixels (finite by construction: no check needed)."""
        d = self.data
        uint8 = (
            isinstance(d, np.ndarray) and d.dtype == np.uint8 or isinstance(d, torch.Tensor) and d.dtype == torch.uint8
        )
        return uint8 and not self.latent

    @property
    def shape(self) -> tuple[int, int, int, int]:
        """(frames, channels, height, width) of `to_tensor()`."""
        return tuple(self.to_tensor().shape)  # type: ignore[return-value]


Segment = Text | Image


@dataclass
class Document:
    """An ordered list of `Text` and `Image` segments with an optional class label.

    `meta` carries what a dataset knows about the document (e.g. the objects of a built-in scene,
    the source record) for evaluation and error messages; the model never reads it.
    """

    segments: list[Segment] = field(default_factory=list)
    label: int | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for i, s in enumerate(self.segments):
            if not isinstance(s, (Text, Image)):
                raise TypeError(f"Document segment {i} must be Text or Image, got {type(s).__name__}")

    def __len__(self) -> int:
        return len(self.segments)

    def __iter__(self):
        return iter(self.segments)

    @property
    def images(self) -> list[Image]:
        return [s for s in self.segments if isinstance(s, Image)]

    @property
    def texts(self) -> list[Text]:
        return [s for s in self.segments if isinstance(s, Text)]

"""unimodal: one causal transformer for interleaved text, images and video (ACDiT-style)."""

from .config import ModelConfig
from .documents import Document, Image, Text
from .model import UnifiedModel
from .pipeline import Pipeline

__all__ = ["Document", "Image", "ModelConfig", "Pipeline", "Text", "UnifiedModel"]
__version__ = "0.1.0"

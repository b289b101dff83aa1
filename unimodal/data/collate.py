"""Collation: documents -> tokenised, patchified, packed batches for the layout, and back.

A document becomes units in this order: ``<bos>`` text... ``<boi>`` [image blocks] ``<eoi>``
text... ``<eos>``. The model so learns to open an image with ``<boi>`` and to end a document; the
``<eoi>`` after an image is forced at generation time, never predicted.

Training-time choices live here and are seeded by the generator passed to each call:
- `image_first_rate`: a (text, image) pair is turned into (image, text), so one model learns
  text->image and captioning from the same data; with `image_first_diffusion: false` such an image
  is context only (no noisy copy): those pairs train captioning alone, and are shorter;
- `noisy_copies`: K noisy copies of every generated block, each with its own t, all reading one
  clean pass (more diffusion samples per step for less than K times the tokens; docs/training.md);
- `prompt_dropout`: the text before a document's first image is replaced by the null-prompt token
  (classifier-free guidance in text mode); `label_dropout` does the same to class labels;
- sequence-length `buckets`: rows are padded to the smallest bucket that fits, so compiled
  kernels (FlexAttention, torch.compile) see a handful of shapes rather than one per batch.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from ..config import ModelConfig
from ..documents import Document, Image, Text
from ..layout import IGNORE, TEXT, Batch, EncodedDoc, VisualSegment, pack
from ..patches import from_blocks, to_blocks
from .errors import BAD_ARRAY, DOC_TOO_LONG, EMPTY_TEXT, NON_FINITE, WRONG_SIZE, BadRecord, RecordPolicy


@dataclass
class CollateConfig:
    """Collation settings; validated on construction."""

    image_first_rate: float = 0.0
    image_first_diffusion: bool = True
    noisy_copies: int = 1
    prompt_dropout: float = 0.0
    label_dropout: float = 0.0
    buckets: list[int] = field(default_factory=list)
    pack_rows: int | None = None
    pad_multiple: int = 1
    on_bad_record: str = "raise"

    def __post_init__(self) -> None:
        for key in ("image_first_rate", "prompt_dropout", "label_dropout"):
            v = getattr(self, key)
            if not 0.0 <= v <= 1.0:
                raise ValueError(f"CollateConfig.{key} must be in [0, 1], got {v}")
        if isinstance(self.noisy_copies, bool) or not isinstance(self.noisy_copies, int) or self.noisy_copies < 1:
            raise ValueError(f"CollateConfig.noisy_copies must be an integer >= 1, got {self.noisy_copies!r}")
        if sorted(self.buckets) != list(self.buckets) or any(b < 1 for b in self.buckets):
            raise ValueError(f"CollateConfig.buckets must be increasing positive lengths, got {self.buckets}")
        if self.on_bad_record not in ("raise", "skip"):
            raise ValueError(f"CollateConfig.on_bad_record must be 'raise' or 'skip', got {self.on_bad_record!r}")


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """(T, C, H, W) in [-1, 1] -> uint8 (T, H, W, C), or (H, W, C) for a single frame: the inverse
    of `Image.to_tensor` for pixel images."""
    a = ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    return a[0] if a.shape[0] == 1 else a


class Collator:
    """Turns lists of Documents into `Batch`es for a model config and a tokenizer."""

    def __init__(self, tokenizer, model_cfg: ModelConfig, cfg: CollateConfig | None = None, name: str = "data"):
        self.tok = tokenizer
        self.model_cfg = model_cfg
        self.cfg = cfg or CollateConfig()
        self.policy = RecordPolicy(self.cfg.on_bad_record)
        self.name = name

    @property
    def max_len(self) -> int | None:
        """The context: the largest bucket (or packed row), if any."""
        return self.cfg.pack_rows or (self.cfg.buckets[-1] if self.cfg.buckets else None)

    def doc_length(self, enc: EncodedDoc) -> int:
        """Tokens the document takes in a training row (clean and noisy copies)."""
        n = 0
        for seg in enc.segments:
            if isinstance(seg, VisualSegment):
                n += (1 + self.cfg.noisy_copies * seg.noisy) * seg.tokens[..., 0].numel()
            else:
                n += len(seg)
        return n

    def encode(
        self, doc: Document, rng: np.random.Generator | None = None, index: int | None = None, close: bool = True
    ) -> EncodedDoc:
        """Tokenise and patchify one document, applying the order swap and prompt dropout; `close`
        ends it with <eos> (False: an open document to continue, as generation prefills it)."""
        cfg, mc, tok = self.cfg, self.model_cfg, self.tok
        segments = list(doc.segments)
        label = doc.label
        meta = {"index": index, **doc.meta}

        def bad(field: str, reason: str, detail: str = "") -> BadRecord:
            return BadRecord.from_meta(meta, field, reason, detail, dataset=self.name)

        context_image = False  # the image of a swapped pair, when it is context only
        if rng is not None:
            pair = len(segments) == 2 and isinstance(segments[0], Text) and isinstance(segments[1], Image)
            if pair and cfg.image_first_rate and rng.random() < cfg.image_first_rate:
                segments = segments[::-1]
                context_image = not cfg.image_first_diffusion
            if label is not None and cfg.label_dropout and rng.random() < cfg.label_dropout:
                label = None
            drop_prompt = cfg.prompt_dropout and rng.random() < cfg.prompt_dropout
        else:
            drop_prompt = False
        # a class-only model (no tokenizer, vocab 0) reads the images alone: no text, no specials
        out: list[list[int] | VisualSegment] = [[tok.bos_id] if tok is not None else []]
        seen_image = False
        for i, seg in enumerate(segments):
            if isinstance(seg, Text):
                if tok is None:
                    continue
                if drop_prompt and not seen_image:
                    if not out[-1] or out[-1][-1] != tok.null_id:
                        out[-1].append(tok.null_id)
                    continue
                ids = list(seg.ids) if seg.ids is not None else tok.encode(seg.text)
                if not ids:
                    raise bad(f"segments[{i}].text", EMPTY_TEXT)
                out[-1].extend(ids)
            else:
                x = seg.to_tensor()
                if not seg.is_uint8 and not torch.isfinite(x).all():
                    raise bad(f"segments[{i}].image", NON_FINITE)
                if x.shape[1] != mc.channels:
                    raise bad(
                        f"segments[{i}].image", BAD_ARRAY, f"{x.shape[1]} channels, the model takes {mc.channels}"
                    )
                try:
                    tokens, pos = to_blocks(x, mc.patch_size, mc.block_spec)
                except ValueError as e:
                    raise bad(f"segments[{i}].image", WRONG_SIZE, str(e)) from e
                if tok is not None:
                    out[-1].append(tok.boi_id)
                t, _, h, w = x.shape
                grid = (t, h // mc.patch_size, w // mc.patch_size)
                out.append(VisualSegment(tokens, pos, grid, noisy=not context_image))
                out.append([tok.eoi_id] if tok is not None else [])
                seen_image = True
        if close and tok is not None:
            out[-1].append(tok.eos_id)
        enc = EncodedDoc([s for s in out if not isinstance(s, list) or s], label)
        if self.max_len is not None and self.doc_length(enc) > self.max_len:
            raise bad("segments", DOC_TOO_LONG, f"{self.doc_length(enc)} tokens, context {self.max_len}")
        return enc

    def bucket(self, length: int) -> int | None:
        for b in self.cfg.buckets:
            if length <= b:
                return b
        return None

    def __call__(
        self,
        docs: list[Document],
        rng: np.random.Generator | list[np.random.Generator] | None = None,
        keys: list[int] | None = None,
    ) -> Batch:
        """Encode (bad records raise or are skipped and counted, per policy) and pack. `rng` is one
        generator for the batch, or one per document (choices then do not depend on batching);
        `keys` (one int per document) become `Batch.doc_keys`, seeding each document's noise."""
        rngs = rng if isinstance(rng, list) else [rng] * len(docs)
        enc, kept = [], []
        for i, (d, g) in enumerate(zip(docs, rngs, strict=True)):
            try:
                enc.append(self.encode(d, g, index=i))
                kept.append(i)
            except BadRecord as e:
                self.policy.handle(e)
        if not enc:
            raise ValueError(f"{self.name}: every document of the batch was a bad record ({self.policy.summary()})")
        cfg = self.cfg
        # packed rows of pack_rows tokens, or one document per row padded to its bucket
        pad_to = None if cfg.pack_rows else self.bucket(max(self.doc_length(e) for e in enc))
        batch = pack(
            enc, self.model_cfg.patch_dim, row_len=cfg.pack_rows, pad_multiple=cfg.pad_multiple, pad_to=pad_to,
            noisy_copies=cfg.noisy_copies,
        )  # fmt: skip
        # the null prompt stands in for dropped text; it is never a text target to learn
        if self.tok is not None:
            batch.text_targets[batch.text_targets == self.tok.null_id] = IGNORE
        if keys is not None:
            batch.doc_keys = torch.tensor([keys[i] for i in kept], dtype=torch.long)
        return batch

    def decode(self, batch: Batch, patches: torch.Tensor | None = None) -> list[Document]:
        """Documents back from a batch (clean copies; `patches` overrides the batch's features).

        The inverse of collation without dropout or reordering: text is detokenised between the
        special tokens, images are reassembled from their blocks.
        """
        lay = batch.layout
        feats = batch.patches if patches is None else patches
        mc = self.model_cfg
        tok = self.tok
        specials = {tok.bos_id, tok.eos_id, tok.boi_id, tok.eoi_id} if tok is not None else set()
        docs = []
        images = {}
        for d, first, grid in batch.images:
            images.setdefault(d, []).append((first, grid))
        for d in sorted(set(lay.doc[lay.doc >= 0].tolist())):
            where = (lay.doc == d) & ~lay.noisy
            toks, mods, blocks = batch.tokens[where], lay.modality[where], lay.block[where]
            rows = where.nonzero(as_tuple=True)
            vis_feats = feats[rows]
            segments: list = []
            text: list[int] = []
            pending = list(images.get(d, []))
            i = 0
            while i < len(toks):
                if mods[i] == TEXT:
                    if int(toks[i]) in specials:
                        if text:
                            segments.append(Text(self.tok.decode(text)))
                            text = []
                    else:
                        text.append(int(toks[i]))
                    i += 1
                    continue
                first, grid = pending.pop(0)
                nb = mc.block_spec.num_blocks(grid)
                sel = (blocks >= first) & (blocks < first + nb)
                tokens = vis_feats[sel].reshape(nb, -1, vis_feats.shape[-1])
                segments.append(Image(to_uint8(from_blocks(tokens, grid, mc.patch_size, mc.block_spec))))
                i += int(sel.sum())
            if text:
                segments.append(Text(self.tok.decode(text)))
            docs.append(Document(segments))
        return docs

"""The layout of a packed batch: the per-token description everything downstream reads.

A document becomes a sequence of *units* (ARCHITECTURE.md §2): each text token is one unit, each
visual block is one unit. Every unit has a clean copy in causal order; during training each visual
block also gets a noisy copy placed right after its clean copy, with the same positions, or K
noisy copies (`noisy_copies`), each with its own timestep, that all read the one clean context:
more diffusion samples per clean pass (the amortising option of issue 7).

`pack` turns encoded documents into rows (several documents per row, padding at the end) and
returns a `Batch`: the `Layout` (structure only: doc, unit, stream, modality, RoPE positions, block
index), the model inputs (token ids, patch features) and the text targets. The mask, RoPE, AdaLN,
losses and the KV cache all read these fields; nothing re-derives structure.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from functools import lru_cache

import numpy as np
import torch

from .documents import Document, Image, Text
from .patches import BlockSpec, to_blocks

TEXT, VISUAL, PAD = 0, 1, -1
IGNORE = -100


@dataclass
class VisualSegment:
    """One image or clip cut into blocks: tokens (N, B, D), local positions (N, B, 3), its patch grid.
    `noisy=False`: context only in training (no noisy copies, no diffusion loss), e.g. an image
    placed before its caption to train captioning."""

    tokens: torch.Tensor
    pos: torch.Tensor
    grid: tuple[int, int, int]
    noisy: bool = True


@dataclass
class EncodedDoc:
    """A document in model units: text ids (lists of ints) and visual segments, in order."""

    segments: list[list[int] | VisualSegment]
    label: int | None = None


def encode_document(
    doc: Document,
    patch_size: int,
    block: BlockSpec,
    tokenize=None,
    normalize=None,
) -> EncodedDoc:
    """Encode a `Document`: text through `tokenize` (str -> ids) unless `Text.ids` is given, images
    through `normalize` (tensor -> tensor, e.g. a latent encoder) then patches and blocks."""
    segs: list[list[int] | VisualSegment] = []
    for i, s in enumerate(doc.segments):
        if isinstance(s, Text):
            if s.ids is not None:
                segs.append(list(s.ids))
            elif tokenize is None:
                raise ValueError(f"segment {i}: Text has no ids and no tokenizer was given")
            else:
                segs.append(list(tokenize(s.text)))
        elif isinstance(s, Image):
            x = s.to_tensor()
            if normalize is not None:
                x = normalize(x)
            tokens, pos = to_blocks(x, patch_size, block)
            t, _, h, w = x.shape
            segs.append(VisualSegment(tokens, pos, (t, h // patch_size, w // patch_size)))
    return EncodedDoc(segs, doc.label)


@dataclass
class Layout:
    """Per-token structure of R packed rows of length L (all tensors (R, L) unless noted).

    doc: document id within the batch, -1 for padding.  unit: autoregressive step within the
    document.  stream: 0 for clean tokens, c >= 1 for the c-th noisy copy of a block (a boolean
    tensor is the one-copy case).  modality: TEXT, VISUAL or PAD.  pos: (R, L, 3) RoPE positions
    (t, h, w).  origin: the RoPE index at which the token's visual segment starts (0 for text and
    padding), so `pos - origin` is a visual token's position inside its image or clip.  block:
    index into the batch's block table for visual tokens (a block's clean copy
    and first noisy copy share it; further copies have their own entries, for their own t), -1
    otherwise.  `noisy` (derived, not a field): stream != 0.  Treat a Layout as immutable.
    """

    doc: torch.Tensor
    unit: torch.Tensor
    stream: torch.Tensor
    modality: torch.Tensor
    pos: torch.Tensor
    block: torch.Tensor
    origin: torch.Tensor

    def __post_init__(self) -> None:
        self.noisy = self.stream != 0

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.doc.shape)  # type: ignore[return-value]

    def to(self, device: torch.device | str) -> Layout:
        return replace(self, **{f.name: getattr(self, f.name).to(device) for f in fields(self)})

    def index(self, idx: torch.Tensor) -> Layout:
        """Tokens `idx` (R, n) of every row: the layout of a slice, e.g. one unit for a cached step."""
        out = {}
        for f in fields(self):
            v = getattr(self, f.name)
            out[f.name] = v.gather(1, idx.unsqueeze(-1).expand(-1, -1, 3)) if f.name == "pos" else v.gather(1, idx)
        return Layout(**out)


def clean_twins(layout: Layout, block_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(rows, columns) of the clean copy of each noisy token (row-major order of `layout.noisy`).

    A block's clean copy and its noisy copies sit side by side (`c n¹ … nᴷ`, `block_len` tokens
    each), so copy c's twin lies c · block_len tokens before it."""
    rows, cols = layout.noisy.nonzero(as_tuple=True)
    return rows, cols - layout.stream[rows, cols].long() * block_len


@dataclass
class Batch:
    """A packed batch: layout, inputs, targets and the block table.

    tokens: (R, L) text ids (0 elsewhere).  patches: (R, L, D) clean patch features at visual
    tokens, both copies (0 elsewhere; the diffusion module noises the noisy copies).
    text_targets: (R, L) next text id at clean text tokens whose next unit is text, else IGNORE.
    block_label: (NB,) class label of each visual block's document (-1: none).
    block_doc: (NB,) document id of each block. images: one (document id, first block index,
    patch grid) per visual segment, in order, to reassemble images from their blocks.
    doc_keys: (n_docs,) optional seed per document: its diffusion time and noise are drawn from
    it, so they do not depend on which documents share the batch or the rank.
    """

    layout: Layout
    tokens: torch.Tensor
    patches: torch.Tensor
    text_targets: torch.Tensor
    block_label: torch.Tensor
    block_doc: torch.Tensor
    images: list[tuple[int, int, tuple[int, int, int]]] = field(default_factory=list)
    doc_keys: torch.Tensor | None = None

    def to(self, device: torch.device | str) -> Batch:
        return replace(
            self,
            layout=self.layout.to(device),
            tokens=self.tokens.to(device),
            patches=self.patches.to(device),
            text_targets=self.text_targets.to(device),
            block_label=self.block_label.to(device),
            block_doc=self.block_doc.to(device),
        )


_FIELDS = ("unit", "stream", "modality", "block", "origin", "token")  # (n,) each, besides pos (n, 3)


@lru_cache(maxsize=4096)  # bounded: datasets of many image sizes make many shapes
def _visual_fields(n: int, streams: int, b: int, n_blocks: int) -> dict[str, np.ndarray]:
    """The offset-free fields of a visual segment of n blocks of b tokens in `streams` copies
    (clean, then noisy), in token order: unit and block entry relative to the segment's first,
    stream, modality, and zeros. `n_blocks` (the document's block count) places copies >= 2 in the
    block table. Shared by every segment of that shape: read-only."""
    j, c = np.arange(n)[:, None, None], np.arange(streams)[None, :, None]
    shape = (n, streams, b)
    out = {
        "unit": np.broadcast_to(j, shape).ravel(),
        "stream": np.broadcast_to(c, shape).ravel(),
        "block": np.broadcast_to(j + np.maximum(c - 1, 0) * n_blocks, shape).ravel(),
        "modality": np.full(n * streams * b, VISUAL, np.int64),
        "zeros": np.zeros(n * streams * b, np.int64),
    }
    for a in out.values():
        a.flags.writeable = False
    return out


def _doc_tokens(
    doc: EncodedDoc, with_noisy: bool, copies: int, patch_dim: int
) -> tuple[dict[str, np.ndarray], list[torch.Tensor], int]:
    """One document's per-token fields (no padding) as int64 numpy arrays, positions M-RoPE style,
    built a segment at a time; the patch features of its visual tokens in order (torch, (n, D)
    each); and its count of block-table entries. Each block of a noisy segment gets `copies` noisy
    copies; copy c >= 2 of the document's block j uses block entry (c - 1) * n + j, n being the
    document's block count. Numpy, not torch: a document is a few dozen tokens, where the
    per-call cost of small torch operations would dominate the data path."""
    n_blocks = sum(s.tokens.shape[0] for s in doc.segments if isinstance(s, VisualSegment))
    parts: dict[str, list[np.ndarray]] = {k: [] for k in (*_FIELDS, "pos")}
    patches: list[torch.Tensor] = []
    blocks = unit = index = 0  # block entries, units and the running RoPE index so far
    for seg in doc.segments:
        if isinstance(seg, VisualSegment):
            n, b, d = seg.tokens.shape
            if d != patch_dim:
                raise ValueError(f"patch features have size {d}, expected {patch_dim}")
            streams = copies + 1 if with_noisy and seg.noisy else 1
            t = _visual_fields(n, streams, b, n_blocks if streams > 2 else 0)  # only copies >= 2 read it
            parts["unit"].append(unit + t["unit"])
            parts["stream"].append(t["stream"])
            parts["modality"].append(t["modality"])
            parts["pos"].append(np.repeat(seg.pos.numpy()[:, None], streams, axis=1).reshape(-1, 3) + index)
            parts["block"].append(blocks + t["block"])
            parts["origin"].append(t["zeros"] + index)
            parts["token"].append(t["zeros"])
            patches.append(seg.tokens.float()[:, None].expand(n, streams, b, d).reshape(-1, d))
            blocks, unit, index = blocks + n, unit + n, index + max(seg.grid)
        elif seg:
            m = len(seg)
            steps = np.arange(m)
            parts["unit"].append(unit + steps)
            parts["stream"].append(np.zeros(m, np.int64))
            parts["modality"].append(np.full(m, TEXT))
            parts["pos"].append(np.repeat((index + steps)[:, None], 3, axis=1))
            parts["block"].append(np.full(m, -1))
            parts["origin"].append(np.zeros(m, np.int64))
            parts["token"].append(np.asarray(seg, dtype=np.int64))
            unit, index = unit + m, index + m
    cols = {
        k: np.concatenate(v).astype(np.int64, copy=False) if v else np.zeros((0, 3) if k == "pos" else 0, np.int64)
        for k, v in parts.items()
    }
    return cols, patches, n_blocks * (copies if with_noisy and copies > 1 else 1)


def pack(
    docs: list[EncodedDoc],
    patch_dim: int,
    row_len: int | None = None,
    pad_multiple: int = 1,
    with_noisy: bool = True,
    pad_to: int | None = None,
    noisy_copies: int = 1,
) -> Batch:
    """Pack documents into rows, first fit in the given order.

    With `row_len=None` each document gets its own row; otherwise documents share rows of
    `row_len` tokens. Rows are padded to the longest document (or to `row_len` when packing), or to
    `pad_to` (a sequence-length bucket),
    rounded up to `pad_multiple` (e.g. 128 for FlexAttention tiles). A document longer than
    `row_len`, or rows longer than `pad_to`, are errors naming the length. `noisy_copies`: noisy
    copies per block (with `with_noisy`), each with its own block entry and so its own t.
    """
    if noisy_copies < 1:
        raise ValueError(f"noisy_copies must be at least 1, got {noisy_copies}")
    flat, visual, entries = [], [], []
    for i, d in enumerate(docs):
        try:
            cols, patches, n = _doc_tokens(d, with_noisy, noisy_copies, patch_dim)
        except ValueError as e:
            raise ValueError(f"document {i}: {e}") from e
        flat.append(cols)
        visual.append(patches)
        entries.append(n)
    lengths = [len(f["unit"]) for f in flat]
    if row_len is None:
        rows = [[i] for i in range(len(docs))]
        row_len = max(lengths, default=1)
    else:
        rows, fill = [], []
        for i, n in enumerate(lengths):
            if n > row_len:
                raise ValueError(f"document {i} has {n} tokens, more than row_len={row_len}")
            for r, used in enumerate(fill):
                if used + n <= row_len:
                    rows[r].append(i)
                    fill[r] += n
                    break
            else:
                rows.append([i])
                fill.append(n)
    if pad_to is not None:
        if pad_to < row_len:
            raise ValueError(f"rows need {row_len} tokens, more than pad_to={pad_to}")
        row_len = pad_to
    L = -(-row_len // pad_multiple) * pad_multiple
    R = len(rows)
    out = {k: np.full((R, L), fill, np.int64) for k, fill in (("doc", -1), ("modality", PAD), ("block", -1))}
    out.update({k: np.zeros((R, L), np.int64) for k in ("unit", "stream", "origin", "token")})
    pos_t = np.zeros((R, L, 3), np.int64)
    tgt_t = np.full((R, L), IGNORE, np.int64)
    patch_t = torch.zeros((R, L, patch_dim))
    block_label, block_doc, images = [], [], []
    for r, members in enumerate(rows):
        n_row = sum(lengths[d] for d in members)
        if not n_row:
            continue
        sizes = [lengths[d] for d in members]
        starts = np.cumsum([len(block_label)] + [entries[d] for d in members[:-1]])
        for k in _FIELDS:
            out[k][r, :n_row] = np.concatenate([flat[d][k] for d in members])
        pos_t[r, :n_row] = np.concatenate([flat[d]["pos"] for d in members])
        out["doc"][r, :n_row] = np.repeat(members, sizes)
        blk = out["block"][r, :n_row]  # a view: per-document block entries -> the batch's table
        own = blk >= 0
        blk[own] += np.repeat(starts, sizes)[own]
        vis = [p for d in members for p in visual[d]]
        if vis:
            patch_t[r, torch.from_numpy(out["modality"][r] == VISUAL)] = torch.cat(vis)
        # next-token targets: a clean text token predicts the next unit of its document when that unit is text
        is_text, doc = out["modality"][r, :n_row] == TEXT, out["doc"][r, :n_row]
        nxt = is_text[:-1] & is_text[1:] & (doc[1:] == doc[:-1])
        tgt_t[r, : n_row - 1] = np.where(nxt, out["token"][r, 1:n_row], IGNORE)
        for d in members:
            first_block = len(block_label)
            label = docs[d].label
            block_label += [label if label is not None else -1] * entries[d]
            block_doc += [d] * entries[d]
            for seg in docs[d].segments:
                if isinstance(seg, VisualSegment):
                    images.append((d, first_block, seg.grid))
                    first_block += seg.tokens.shape[0]
    t = {k: torch.from_numpy(v) for k, v in out.items()}
    doc_t, unit_t, stream_t, mod_t, block_t, origin_t, tok_t = (
        t[k] for k in ("doc", "unit", "stream", "modality", "block", "origin", "token")
    )
    pos_t, tgt_t = torch.from_numpy(pos_t), torch.from_numpy(tgt_t)
    layout = Layout(doc_t, unit_t, stream_t, mod_t, pos_t, block_t, origin_t)
    return Batch(
        layout,
        tok_t,
        patch_t,
        tgt_t,
        torch.tensor(block_label, dtype=torch.long),
        torch.tensor(block_doc, dtype=torch.long),
        images,
    )

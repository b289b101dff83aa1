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


@lru_cache(maxsize=4096)  # bounded: datasets of many image sizes make many shapes
def _visual_fields(n: int, streams: int, b: int, n_blocks: int) -> dict[str, np.ndarray]:
    """The offset-free fields of a visual segment of n blocks of b tokens in `streams` copies
    (clean, then noisy), in token order: unit and block entry relative to the segment's first,
    stream, and `source`, the clean token (of the segment's n * b) whose features each token
    carries. `n_blocks` (the document's block count) places copies >= 2 in the block table. Shared
    by every segment of that shape: read-only."""
    j, c = np.arange(n)[:, None, None], np.arange(streams)[None, :, None]
    shape = (n, streams, b)
    out = {
        "unit": np.broadcast_to(j, shape).ravel(),
        "stream": np.broadcast_to(c, shape).ravel(),
        "block": np.broadcast_to(j + np.maximum(c - 1, 0) * n_blocks, shape).ravel(),
        "source": np.broadcast_to(np.arange(n * b).reshape(n, 1, b), shape).ravel(),
    }
    for a in out.values():
        a.flags.writeable = False
    return out


def _first_fit(lengths: list[int], row_len: int) -> list[list[int]]:
    """Documents (by index) into rows of `row_len` tokens, first fit in the given order."""
    rows: list[list[int]] = []
    fill: list[int] = []
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
    return rows


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

    Every document's tokens are laid end to end in row order and each field is built for the whole
    batch at once (numpy, then one copy into the padded rows): a document is a few dozen tokens,
    where per-document array operations would dominate the data path. Positions are M-RoPE style:
    text advances the RoPE index by one per token, a visual segment by its largest grid side. Each
    block of a noisy segment gets `noisy_copies` noisy copies; copy c >= 2 of a document's block j
    uses block entry (c - 1) * n + j, n being the document's block count.
    """
    if noisy_copies < 1:
        raise ValueError(f"noisy_copies must be at least 1, got {noisy_copies}")

    def streams(seg: VisualSegment) -> int:
        return noisy_copies + 1 if with_noisy and seg.noisy else 1

    lengths, n_blocks = [], []
    for i, d in enumerate(docs):
        n_tok = n_blk = 0
        for seg in d.segments:
            if isinstance(seg, VisualSegment):
                n, b, dim = seg.tokens.shape
                if dim != patch_dim:
                    raise ValueError(f"document {i}: patch features have size {dim}, expected {patch_dim}")
                n_tok, n_blk = n_tok + n * b * streams(seg), n_blk + n
            else:
                n_tok += len(seg)
        lengths.append(n_tok)
        n_blocks.append(n_blk)
    entries = [n * (noisy_copies if with_noisy and noisy_copies > 1 else 1) for n in n_blocks]
    if row_len is None:
        rows = [[i] for i in range(len(docs))]
        row_len = max(lengths, default=1)
    else:
        rows = _first_fit(lengths, row_len)
    if pad_to is not None:
        if pad_to < row_len:
            raise ValueError(f"rows need {row_len} tokens, more than pad_to={pad_to}")
        row_len = pad_to
    L = -(-row_len // pad_multiple) * pad_multiple
    R = len(rows)

    # every segment of every document, in row order: its length and offsets, and the visual
    # segments' offset-free fields, first block entries and features
    order = [d for members in rows for d in members]
    seg_len, seg_visual, seg_unit, seg_index = [], [], [], []
    vis: dict[str, list[np.ndarray]] = {k: [] for k in ("unit", "stream", "block", "source", "pos")}
    vis_block, ids, features, block_label, images = [], [], [], [], []
    for d in order:
        unit = index = 0
        blocks = len(block_label)  # the document's first entry in the batch's block table
        for seg in docs[d].segments:
            if isinstance(seg, VisualSegment):
                n, b, _ = seg.tokens.shape
                s = streams(seg)
                t = _visual_fields(n, s, b, n_blocks[d] if s > 2 else 0)  # only copies >= 2 read it
                for k in ("unit", "stream", "block", "source"):
                    vis[k].append(t[k])
                vis["pos"].append(np.repeat(seg.pos.numpy()[:, None], s, axis=1).reshape(-1, 3))
                vis_block.append(blocks)
                features.append(seg.tokens.reshape(n * b, -1))
                images.append((d, blocks, seg.grid))
                seg_len.append(n * b * s)
                seg_visual.append(True)
                seg_unit.append(unit)
                seg_index.append(index)
                unit, index, blocks = unit + n, index + max(seg.grid), blocks + n
            elif seg:
                ids.extend(seg)
                seg_len.append(len(seg))
                seg_visual.append(False)
                seg_unit.append(unit)
                seg_index.append(index)
                unit, index = unit + len(seg), index + len(seg)
        label = docs[d].label
        block_label += [label if label is not None else -1] * entries[d]

    def per_token(values: list[int], lengths: list[int] = seg_len) -> np.ndarray:
        return np.repeat(np.asarray(values, np.int64), np.asarray(lengths, np.int64))

    total = sum(seg_len)
    is_vis = per_token(seg_visual).astype(bool)
    local = np.arange(total) - per_token(np.cumsum(seg_len) - seg_len)  # the offset within its segment
    unit_t, pos_t = local.copy(), np.repeat(local[:, None], 3, axis=1)  # text: one unit, one index a token
    stream_t, origin_t, block_t = np.zeros(total, np.int64), np.zeros(total, np.int64), np.full(total, -1, np.int64)
    source = np.zeros(0, np.int64)  # for each visual token, the row of `features` it copies
    if features:
        cat = {k: np.concatenate(v) for k, v in vis.items()}
        unit_t[is_vis], stream_t[is_vis], pos_t[is_vis] = cat["unit"], cat["stream"], cat["pos"]
        vis_len = [len(u) for u in vis["unit"]]
        block_t[is_vis] = cat["block"] + per_token(vis_block, vis_len)
        source = cat["source"] + per_token(np.cumsum([0] + [len(f) for f in features[:-1]]), vis_len)
    unit_t += per_token(seg_unit)
    index = per_token(seg_index)
    pos_t += index[:, None]
    origin_t[is_vis] = index[is_vis]
    modality_t = np.where(is_vis, VISUAL, TEXT)
    token_t = np.zeros(total, np.int64)
    token_t[~is_vis] = ids
    doc_t = per_token(order, [lengths[d] for d in order])
    # next-token targets: a clean text token predicts the next unit of its document when that unit is text
    is_text = ~is_vis
    nxt = is_text[:-1] & is_text[1:] & (doc_t[1:] == doc_t[:-1])
    tgt_t = np.full(total, IGNORE, np.int64)
    tgt_t[:-1] = np.where(nxt, token_t[1:], IGNORE)

    # the flat sequence into padded rows: token k of row r's documents goes to (r, k)
    used = np.asarray([sum(lengths[d] for d in members) for members in rows], np.int64)
    row_of = np.repeat(np.arange(R), used)
    flat_at = row_of * L + np.arange(total) - (np.cumsum(used) - used)[row_of]

    def rows_of(values: np.ndarray, fill: int) -> torch.Tensor:
        out = np.full((R * L, *values.shape[1:]), fill, np.int64)
        out[flat_at] = values
        return torch.from_numpy(out.reshape(R, L, *values.shape[1:]))

    patch_t = torch.zeros((R * L, patch_dim))
    if features:
        clean = torch.cat(features).float()
        patch_t.index_copy_(0, torch.from_numpy(flat_at[is_vis]), clean.index_select(0, torch.from_numpy(source)))
    layout = Layout(
        rows_of(doc_t, -1),
        rows_of(unit_t, 0),
        rows_of(stream_t, 0),
        rows_of(modality_t, PAD),
        rows_of(pos_t, 0),
        rows_of(block_t, -1),
        rows_of(origin_t, 0),
    )
    return Batch(
        layout,
        rows_of(token_t, 0),
        patch_t.reshape(R, L, patch_dim),
        rows_of(tgt_t, IGNORE),
        torch.tensor(block_label, dtype=torch.long),
        torch.from_numpy(per_token(order, [entries[d] for d in order])),
        images,
    )

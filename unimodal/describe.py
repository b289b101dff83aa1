"""Text views of presets, layouts, the attention rule and the model, for the `unimodal` CLI.

Every function returns a string (the CLI prints it, the tests read it). Nothing here re-derives
structure: layouts come from `encode_document`/`pack`, masks from `attention.dense_mask`, parameter
counts from a `UnifiedModel` built on the meta device (no memory, no initialisation cost).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .attention import Fields, dense_mask
from .config import PRESETS, ModelConfig
from .documents import Document, Image, Text
from .layout import PAD, TEXT, Batch, encode_document, pack
from .model import UnifiedModel

# Parameter counts in the ACDiT paper's Table 5 (arXiv 2412.07720 v3).
PAPER_PARAMS = {"acdit-b": 132e6, "acdit-l": 460e6, "acdit-xl": 677e6, "acdit-h": 954e6}

MODALITY_NAMES = {TEXT: "text", 1: "visual", PAD: "pad"}


def meta_model(cfg: ModelConfig) -> UnifiedModel:
    """The model of `cfg` on the meta device: shapes and counts only, no storage."""
    with torch.device("meta"):
        return UnifiedModel(cfg)


def _millions(n: float) -> str:
    return f"{n / 1e6:.1f}M" if n >= 1e6 else f"{n / 1e6:.2f}M"


def _table(header: list[str], rows: list[list[str]], right: frozenset[int] | set[int] = frozenset()) -> list[str]:
    """Align columns; columns in `right` are right-aligned."""
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]

    def fmt(r: list[str]) -> str:
        cells = [c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True))]
        return "  ".join(cells).rstrip()

    return [fmt(header), *(fmt(r) for r in rows)]


def block_text(cfg: ModelConfig) -> str:
    """'tiles:16 (256 tok, N=4)': the block spec, tokens per block and blocks per image."""
    spec = cfg.block_spec
    return f"{spec.kind}:{spec.size} ({spec.block_len(cfg.grid)} tok, N={spec.num_blocks(cfg.grid)})"


def presets_table() -> str:
    """Every preset with its shape, block layout and parameter count (vs the paper for ACDiT-*)."""
    header = ["preset", "depth", "dim", "heads", "patch", "image", "block", "text", "classes", "params"]
    header += ["paper", "diff"]
    rows = []
    for name in PRESETS:
        cfg = ModelConfig.from_preset(name)
        n = meta_model(cfg).num_parameters()
        paper = PAPER_PARAMS.get(name)
        image = f"{cfg.image_size}x{cfg.image_size}x{cfg.channels}" + (f"x{cfg.frames}f" if cfg.frames > 1 else "")
        rows.append(
            [
                name,
                str(cfg.depth),
                str(cfg.dim),
                f"{cfg.heads}x{cfg.head_dim}",
                str(cfg.patch_size),
                image,
                block_text(cfg),
                str(cfg.vocab_size) if cfg.vocab_size else "-",
                str(cfg.num_classes) if cfg.num_classes else "-",
                _millions(n),
                _millions(paper).replace(".0M", "M") if paper else "-",
                f"{(n - paper) / paper:+.1%}" if paper else "-",
            ]
        )
    lines = _table(header, rows, right={1, 2, 4, 7, 8, 9, 10, 11})
    lines += [
        "",
        "params: UnifiedModel(cfg) built on the meta device; paper: ACDiT Table 5 (arXiv 2412.07720 v3).",
        "text: vocabulary size (- = no text); image: size x channels (pixels, or latents for acdit-*).",
    ]
    return "\n".join(lines)


# --- the example document -------------------------------------------------------------------


@dataclass
class Example:
    """An example document of a config, encoded and packed into one row."""

    cfg: ModelConfig
    doc: Document
    batch: Batch
    description: str


def example(cfg: ModelConfig, text: int = 2, label: int | None = None, with_noisy: bool = True) -> Example:
    """`text` token ids, an image (or clip) of the config's size, `text` more ids; text=0 gives an
    image-only document (with `label`, ACDiT's class-conditional setting)."""
    if text < 0:
        raise ValueError(f"text must be >= 0 tokens, got {text}")
    vocab = cfg.vocab_size or 2**31
    image = Image(torch.zeros(cfg.frames, cfg.channels, cfg.image_size, cfg.image_size), latent=True)
    if text:
        before = Text(ids=[(1 + i) % vocab for i in range(text)])
        after = Text(ids=[(1 + text + i) % vocab for i in range(text)])
        doc = Document([before, image, after], label=label)
        tokens = f"{text} text token{'s' if text > 1 else ''}"
        what = f"{tokens}, image, {tokens}"
    else:
        doc = Document([image], label=label)
        what = "image only" + (f", label {label}" if label is not None else "")
    batch = pack([encode_document(doc, cfg.patch_size, cfg.block_spec)], cfg.patch_dim, with_noisy=with_noisy)
    clip = f"{cfg.frames} frames of " if cfg.frames > 1 else ""
    desc = (
        f"document: {what}; image {clip}{cfg.image_size}x{cfg.image_size}x{cfg.channels}, patch {cfg.patch_size} "
        f"-> grid {'x'.join(map(str, cfg.grid))}, blocks {block_text(cfg)}; "
        f"{'clean and noisy streams' if with_noisy else 'clean stream only (inference)'}"
    )
    return Example(cfg, doc, batch, desc)


def stream_labels(batch: Batch, row: int = 0) -> list[tuple[str, int, int]]:
    """(label, start, end) of each run of tokens of one unit and stream in a row: 'T0', 'T1' for text
    tokens, 'c0'/'n0' for the clean/noisy copy of visual block 0 (counted per document)."""
    lay = batch.layout
    doc, unit, noisy = (t[row].tolist() for t in (lay.doc, lay.unit, lay.noisy))
    modality, block = lay.modality[row].tolist(), lay.block[row].tolist()
    first_block: dict[int, int] = {}
    text_count: dict[int, int] = {}
    multi = len({d for d in doc if d >= 0}) > 1
    out: list[tuple[str, int, int]] = []
    i = 0
    while i < len(doc):
        j = i + 1
        while j < len(doc) and (doc[j], unit[j], noisy[j]) == (doc[i], unit[i], noisy[i]) and doc[i] >= 0:
            j += 1
        d = doc[i]
        if d >= 0:
            if modality[i] == TEXT:
                label = f"T{text_count.get(d, 0)}"
                text_count[d] = text_count.get(d, 0) + 1
            else:
                b = block[i] - first_block.setdefault(d, block[i])
                label = f"{'n' if noisy[i] else 'c'}{b}"
            out.append((f"d{d}:{label}" if multi else label, i, j))
        i = j
    return out


def layout_table(ex: Example, row: int = 0) -> str:
    """One line per token of a packed row: index, doc, unit, noisy, modality, pos (t,h,w), block,
    stream label and text target."""
    lay, batch = ex.batch.layout, ex.batch
    labels = {}
    for name, a, b in stream_labels(batch, row):
        for i in range(a, b):
            labels[i] = name
    header = ["index", "doc", "unit", "noisy", "modality", "pos (t,h,w)", "block", "stream", "target"]
    rows = []
    for i in range(lay.shape[1]):
        tgt = int(batch.text_targets[row, i])
        rows.append(
            [
                str(i),
                str(int(lay.doc[row, i])),
                str(int(lay.unit[row, i])),
                "1" if lay.noisy[row, i] else "0",
                MODALITY_NAMES[int(lay.modality[row, i])],
                "(" + ",".join(str(int(p)) for p in lay.pos[row, i]) + ")",
                str(int(lay.block[row, i])),
                labels.get(i, "-"),
                str(tgt) if tgt >= 0 else "-",
            ]
        )
    n_text = int((lay.modality[row] == TEXT).sum())
    n_vis = int((lay.modality[row] == 1).sum())
    lines = [
        ex.description,
        f"{lay.shape[1]} tokens: {n_text} text, {n_vis} visual ({int(lay.noisy[row].sum())} of them noisy), "
        f"{len(batch.block_label)} blocks",
        "",
        *_table(header, rows, right={0, 1, 2, 6, 8}),
    ]
    return "\n".join(lines)


# --- the attention rule as a picture ---------------------------------------------------------


def mask_picture(ex: Example, row: int = 0, grouped: bool = False) -> str:
    """The dense token mask of the rule reduced to units and streams: '#' every token pair allowed,
    '.' none, '+' some (never, under the rule). `grouped` lists all clean units first, then all
    noisy blocks (the ACDiT paper's grouped form; the sequence itself is interleaved c0 n0 c1 n1)."""
    lay = ex.batch.layout
    f = Fields.of(lay)
    mask = dense_mask(f, f)[row, 0]
    groups = stream_labels(ex.batch, row)
    if grouped:
        groups = sorted(groups, key=lambda g: (bool(lay.noisy[row, g[1]]), g[1]))
    names = [g[0] for g in groups]
    cell = []
    for _, qa, qb in groups:
        line = []
        for _, ka, kb in groups:
            sub = mask[qa:qb, ka:kb]
            line.append("#" if bool(sub.all()) else "+" if bool(sub.any()) else ".")
        cell.append(line)
    w = max(len(n) for n in names)
    lines = [
        ex.description,
        "rows: queries, columns: keys; '#' allowed, '.' masked, '+' partly allowed",
        "",
        " " * (w + 1) + " ".join(n.rjust(w) for n in names),
    ]
    lines += [n.ljust(w) + " " + " ".join(c.rjust(w) for c in line) for n, line in zip(names, cell, strict=True)]
    real = lay.doc[row] >= 0
    allowed = int(mask[real][:, real].sum())
    total = int(real.sum()) ** 2
    lines += ["", f"density: {allowed}/{total} token pairs allowed = {allowed / total:.2%}"]
    n = len(ex.batch.block_label)
    if not bool((lay.modality[row] == TEXT).any()) and bool(lay.noisy[row].any()):
        lines.append(f"image-only, N={n} blocks: ACDiT's SCAM density (N+1)/(4N) = {(n + 1) / (4 * n):.2%}")
    return "\n".join(lines)


# --- the model --------------------------------------------------------------------------------


def describe(m: nn.Module) -> str:
    """A one-line description of a module with parameters."""
    if isinstance(m, nn.Linear):
        return f"Linear({m.in_features} -> {m.out_features}{'' if m.bias is not None else ', no bias'})"
    if isinstance(m, nn.Embedding):
        return f"Embedding({m.num_embeddings}, {m.embedding_dim})"
    if hasattr(m, "weight") and isinstance(m.weight, nn.Parameter) and m.weight.dim() == 1:
        return f"{type(m).__name__}({m.weight.shape[0]})"
    return type(m).__name__


def _leaves(module: nn.Module, prefix: str = "") -> list[tuple[str, nn.Module, int]]:
    """(name, module, own parameter count) of every submodule that holds parameters itself."""
    out = []
    for name, m in module.named_modules(prefix=prefix):
        own = sum(p.numel() for p in m.parameters(recurse=False))
        if own:
            out.append((name, m, own))
    return out


GROUPS = {
    "embedders": ("x_embedder", "t_embedder", "y_embedder", "tok_embedder"),
    "heads": ("final_layer", "text_norm", "text_head"),
}


def model_summary(cfg: ModelConfig, name: str = "") -> str:
    """The module tree with parameter counts: embedders, the trunk's blocks (one block's leaves,
    per block and over all blocks), the heads; the groups add up to the total."""
    model = meta_model(cfg)
    total = model.num_parameters()
    head_dim, secs = cfg.head_dim, "/".join(map(str, cfg.rope_sections))
    text = (
        f"vocab {cfg.vocab_size} ({'tied' if cfg.tie_embeddings else 'untied'} head)" if cfg.vocab_size else "no text"
    )
    lines = [
        f"UnifiedModel{f' {name!r}' if name else ''}: {total:,} parameters ({_millions(total)}), "
        "built on the meta device",
        f"dim {cfg.dim}, depth {cfg.depth}, heads {cfg.heads}x{head_dim}, MLP {cfg.mlp} {cfg.mlp_hidden}, "
        f"patch {cfg.patch_size} ({cfg.patch_dim} features), {text}, "
        f"classes {cfg.num_classes or 'none'}, RoPE {cfg.rope} (t/h/w dims {secs}), diffusion {cfg.diffusion}"
        + {
            "sample": " (head predicts x0)",
            "preconditioned": f" (head preconditioned, sigma_data {cfg.sigma_data})",
        }.get(cfg.prediction, ""),
        "",
    ]
    children = dict(model.named_children())
    rows: list[list[str]] = []
    accounted = 0

    def share(n: int) -> str:
        return f"{n / total:.1%}"

    def section(title: str, names: tuple[str, ...]) -> None:
        nonlocal accounted
        leaves = [leaf for n in names if n in children for leaf in _leaves(children[n], n)]
        count = sum(c for *_, c in leaves)
        accounted += count
        rows.append([title, "", f"{count:,}", "", share(count)])
        for leaf, m, c in leaves:
            rows.append(["  " + leaf, describe(m), f"{c:,}", "", share(c)])
        if "text_head" in names and cfg.vocab_size and cfg.tie_embeddings:
            rows.append(["  text_head", "tied to tok_embedder", "0", "", share(0)])

    section("embedders", GROUPS["embedders"])
    blocks = children["blocks"]
    leaves = _leaves(blocks[0], "blocks.i")
    count = sum(p.numel() for p in blocks.parameters())
    accounted += count
    per_block = sum(c for *_, c in leaves)
    rows.append([f"trunk: {len(blocks)} x Block", "", f"{count:,}", f"{per_block:,}", share(count)])
    for leaf, m, c in leaves:
        rows.append(["  " + leaf, describe(m), f"{c * len(blocks):,}", f"{c:,}", share(c * len(blocks))])
    section("heads", GROUPS["heads"])
    known = set(GROUPS["embedders"]) | set(GROUPS["heads"]) | {"blocks"}
    other = tuple(n for n in children if n not in known)
    if any(p.numel() for n in other for p in children[n].parameters()):
        section("other", other)
    rows.append(["total", "", f"{accounted:,}", "", share(accounted)])
    lines += _table(["component", "module", "parameters", "per block", "share"], rows, right={2, 3, 4})
    buffers = [n for n, _ in model.named_buffers()]
    if buffers:
        lines += ["", f"buffers (not parameters): {', '.join(buffers)}"]
    return "\n".join(lines)

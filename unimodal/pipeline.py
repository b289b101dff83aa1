"""Pipeline: what users call to generate images, captions, interleaved documents and embeddings.

    pipe = Pipeline.from_pretrained("runs/shapes-tiny")      # a run directory or an exported model
    images = pipe.text_to_image(["a red circle at the top left"], num_steps=25, guidance=3.0, seed=0)
    texts = pipe.caption(images)
    doc = pipe.generate(Document([Text("a blue square")]), max_new_tokens=32)
    vectors = pipe.embed(images)

Every call builds an `Engine` (generation.py) over a fresh KV cache; `use_cache=False` recomputes
the whole prefix at every step instead (same results, for checking and measuring). Seeds: an int
gives row i the seed `seed + i`, a list gives each row its own, so a row's output does not depend on
the rows batched with it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image as PILImage

from .codec import Codec, encode_document, load_codec
from .data.collate import Collator, to_uint8
from .decoding import TextSampling, next_tokens
from .documents import Document, Image, Text
from .generation import Engine
from .guidance import ConstantGuidance, GuidanceConfig, GuidanceSchedule
from .hub import load_pretrained
from .layout import IGNORE, TEXT, VISUAL, VisualSegment, pack
from .layout import encode_document as to_units
from .model import UnifiedModel
from .patches import from_blocks
from .samplers import DEFAULT_SAMPLER, make_sampler


def _to_pil(x: torch.Tensor) -> PILImage.Image | list[PILImage.Image]:
    """(T, C, H, W) in [-1, 1] -> a PIL image (T = 1) or a clip as a list of PIL frames."""
    a = to_uint8(x).reshape(x.shape[0], *x.shape[-2:], x.shape[1])
    frames = [PILImage.fromarray(f[..., 0] if f.shape[-1] == 1 else f) for f in a]
    return frames[0] if x.shape[0] == 1 else frames


def _seeds(seed: int | Sequence[int], n: int) -> list[int]:
    """Row i's seed: seed + i for an int, else the i-th of the given seeds."""
    seeds = [seed + i for i in range(n)] if isinstance(seed, int) else [int(s) for s in seed]
    if len(seeds) != n:
        raise ValueError(f"{len(seeds)} seeds for {n} rows")
    return seeds


def _generators(seed: int | Sequence[int], n: int) -> list[torch.Generator]:
    return [torch.Generator().manual_seed(s) for s in _seeds(seed, n)]


def _guidance(guidance: float | GuidanceSchedule | GuidanceConfig | None) -> GuidanceSchedule | None:
    """A schedule, or None when there is nothing to guide (None, or a constant scale of 1)."""
    if guidance is None:
        return None
    if isinstance(guidance, GuidanceConfig):
        guidance = guidance.build()
    if isinstance(guidance, (int, float)):
        guidance = ConstantGuidance(float(guidance))
    if isinstance(guidance, ConstantGuidance) and guidance.scale_at(0, 1) == 1.0:
        return None
    return guidance


class Pipeline:
    """A model, its tokenizer and sampling defaults."""

    def __init__(
        self,
        model: UnifiedModel,
        tokenizer=None,
        sampler: str | None = None,
        num_steps: int = 25,
        guidance: float | GuidanceSchedule | GuidanceConfig | None = None,
        sampler_options: dict | None = None,
        codec: Codec | None = None,
        candidates: int = 1,
    ) -> None:
        self.model = model.eval()
        self.codec = codec  # a latent model's autoencoder: generated latents are decoded to pixels
        self.tokenizer = tokenizer
        self.sampler = sampler or DEFAULT_SAMPLER[model.cfg.diffusion]
        self.num_steps = num_steps
        self.guidance = guidance
        self.sampler_options = sampler_options or {}
        self.candidates = candidates  # images drawn per prompt in text_to_image; the likeliest caption's kept
        self.collator = Collator(tokenizer, model.cfg, name="input") if tokenizer is not None else None

    @classmethod
    def from_pretrained(cls, path: str | Path, allow_pickle: bool = False, device: str = "cpu", **kw) -> Pipeline:
        """Load from an exported model folder, or a training run directory (its `model/` export)."""
        path = Path(path)
        if not (path / "config.json").is_file() and (path / "model" / "config.json").is_file():
            path = path / "model"
        model, tokenizer = load_pretrained(path, allow_pickle=allow_pickle, device=device)
        return cls(model, tokenizer, **{"codec": load_codec(path, device=device), **kw})

    # --------------------------------------------------------------------------------- helpers

    @property
    def cfg(self):
        return self.model.cfg

    def _need_tokenizer(self, what: str):
        if self.tokenizer is None:
            raise ValueError(f"{what} needs a text model with a tokenizer; this model has none")
        return self.tokenizer

    def _sampler(self, sampler: str | None, num_steps: int | None):
        return make_sampler(
            sampler or self.sampler, num_steps or self.num_steps, self.cfg.diffusion, **self.sampler_options
        )

    def _max_len(self, prompt_tokens: int, images: int, new_tokens: int = 0) -> int:
        t, h, w = self.cfg.grid
        return prompt_tokens + images * (t * h * w + 2) + new_tokens + 4

    def _images(self, blocks: torch.Tensor, output_type: str = "pil", grid: tuple[int, int, int] | None = None) -> list:
        """Generated blocks (n, N, B, D) on the patch `grid` (default: the model's) as PIL images
        (uint8; a clip is a list of PIL frames), or with output_type "np" as float32 arrays (H, W, C)
        or (T, H, W, C) in the model's value range, unrounded. A latent model's codec decodes them."""
        images = from_blocks(blocks, grid or self.cfg.grid, self.cfg.patch_size, self.cfg.block_spec)
        if self.codec is not None:
            images = self.codec.decode(images)
        if output_type == "np":
            return [x.permute(0, 2, 3, 1).squeeze(0).numpy() for x in images]
        if output_type != "pil":
            raise ValueError(f"output_type must be 'pil' or 'np', got {output_type!r}")
        return [_to_pil(x) for x in images]

    def _given(self, image) -> Image:
        """A given image or clip as the model reads it: a latent model's codec encodes pixels."""
        im = image if isinstance(image, Image) else Image(image)
        return encode_document(self.codec, Document([im])).segments[0]

    @torch.no_grad()
    def _image_from_prefix(
        self,
        prefixes: list[list[int]],
        uncond: list[list[int]] | None,
        labels,
        mode,
        num_steps,
        guidance,
        seed,
        use_cache,
        sampler,
        output_type,
    ) -> list:
        if not prefixes:
            return []
        blocks = self._blocks_from_prefix(prefixes, uncond, labels, mode, num_steps, guidance, seed, use_cache, sampler)
        return self._images(blocks, output_type)

    @torch.no_grad()
    def _blocks_from_prefix(
        self, prefixes, uncond, labels, mode, num_steps, guidance, seed, use_cache, sampler
    ) -> torch.Tensor:
        """One image's blocks (n, N, B, D) after each prefix (and its unconditional twin)."""
        n = len(prefixes)
        schedule = _guidance(self.guidance if guidance is None else guidance)
        mode = mode if schedule is not None else None
        rows = 2 * n if mode == "text" else n
        longest = max([len(p) for p in prefixes] + [len(p) for p in (uncond or [])])
        eng = Engine(self.model, rows, self._max_len(longest, 1), use_cache)
        docs = list(range(n))
        if any(prefixes):
            eng.text(docs, prefixes)
        if mode == "text":
            eng.text(eng.uncond_rows(docs), uncond)
        eng.begin_image(docs + (eng.uncond_rows(docs) if mode == "text" else []), self.cfg.grid)
        return eng.generate_image(
            docs, self._sampler(sampler, num_steps), _generators(seed, n), schedule, mode, labels, commit_last=False
        )

    # ------------------------------------------------------------------------------ public API

    def text_to_image(
        self,
        prompts: Sequence[str],
        num_steps: int | None = None,
        guidance: float | GuidanceSchedule | GuidanceConfig | None = None,
        seed: int | Sequence[int] = 0,
        use_cache: bool = True,
        sampler: str | None = None,
        output_type: str = "pil",
        candidates: int | None = None,
    ) -> list:
        """One image per prompt: `<bos> prompt <boi>` then blockwise diffusion; guidance against
        the null prompt `<bos> <null> <boi>` (its own cache rows).

        `candidates` N > 1 (default the pipeline's, 1) draws N images per prompt, candidate j of the
        prompt with seed s from seed N·s + j, and returns the one whose caption is likeliest to be
        the prompt (`caption_logprob`): the model reranks its own drawings with what it reads, as
        DALL-E reranked with CLIP. It costs N times the sampling and one forward per candidate."""
        tok = self._need_tokenizer("text_to_image")
        n, k = len(prompts), self.candidates if candidates is None else candidates
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ValueError(f"candidates must be an integer >= 1, got {k!r}")
        if k == 1 or not n:
            prefixes = [[tok.bos_id, *tok.encode(p), tok.boi_id] for p in prompts]
            uncond = [[tok.bos_id, tok.null_id, tok.boi_id] for _ in prompts]
            return self._image_from_prefix(
                prefixes, uncond, None, "text", num_steps, guidance, seed, use_cache, sampler, output_type
            )
        seeds = [s * k + j for s in _seeds(seed, n) for j in range(k)]
        drawn = [p for p in prompts for _ in range(k)]
        prefixes = [[tok.bos_id, *tok.encode(p), tok.boi_id] for p in drawn]
        uncond = [[tok.bos_id, tok.null_id, tok.boi_id] for _ in drawn]
        blocks = self._blocks_from_prefix(
            prefixes, uncond, None, "text", num_steps, guidance, seeds, use_cache, sampler
        )
        # scored as the user gets them (uint8); a clip's PIL frames stacked into one (T, H, W, C) array
        pictures = [np.stack(x) if isinstance(x, list) else x for x in self._images(blocks, "pil")]
        scores = self.caption_logprob(pictures, drawn).view(n, k)
        best = torch.arange(n) * k + scores.argmax(1)
        return self._images(blocks[best], output_type)

    @torch.no_grad()
    def caption_logprob(self, images: Sequence, texts: Sequence[str], batch_size: int = 64) -> torch.Tensor:
        """log p(text | image) for each pair (float64, (n,)): the summed log-probabilities of the
        text's tokens and `<eos>` after `<bos> <boi> image <eoi>`, as the model reads when it
        captions (one full forward, no cache; a latent model's codec encodes pixel images). Higher
        means the model would rather say this text of this image: for ranking images of one prompt
        (`text_to_image(candidates=N)`) or texts of one image."""
        self._need_tokenizer("caption_logprob")
        if len(images) != len(texts):
            raise ValueError(f"caption_logprob: {len(images)} images for {len(texts)} texts")
        out = torch.zeros(len(texts), dtype=torch.float64)
        for start in range(0, len(texts), batch_size):
            stop = min(start + batch_size, len(texts))
            docs = [
                Document([im if isinstance(im, Image) else Image(im), Text(texts[i])])
                for i, im in zip(range(start, stop), images[start:stop], strict=True)
            ]
            logp, doc, after_visual = self.text_logprobs(docs)
            # only what follows the image: `<bos>`'s prediction of `<boi>` is the same for every image
            out.index_add_(0, doc[after_visual] + start, logp[after_visual])
        return out

    @torch.no_grad()
    def text_logprobs(self, documents: Sequence[Document]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One full forward of `documents` (closed with `<eos>`, clean copies only; a latent model's
        codec encodes pixel images) and, for every text token it predicts: the log-probability
        (float64), the index of its document, and whether a visual segment of that document comes
        before it. The model's likelihood of text, as training scores it."""
        self._need_tokenizer("text_logprobs")
        model = self.model
        dev = next(model.parameters()).device
        enc = [self.collator.encode(encode_document(self.codec, d), close=True) for d in documents]
        batch = pack(enc, self.cfg.patch_dim, with_noisy=False)
        lay = batch.layout
        logits = model(batch.tokens.to(dev), batch.patches.to(dev), lay.to(dev)).text_logits
        text = (lay.modality == TEXT) & ~lay.noisy
        targets = batch.text_targets[text]
        keep = targets != IGNORE
        logp = -F.cross_entropy(logits[keep.to(dev)].float(), targets[keep].to(dev), reduction="none")
        first_visual = torch.full((len(documents),), torch.iinfo(torch.long).max)
        vis = lay.modality == VISUAL
        first_visual.scatter_reduce_(0, lay.doc[vis], lay.unit[vis], "amin")
        doc, unit = lay.doc[text][keep], lay.unit[text][keep]
        return logp.double().cpu(), doc, unit > first_visual[doc]

    def class_to_image(
        self,
        labels: Sequence[int],
        num_steps: int | None = None,
        guidance: float | GuidanceSchedule | GuidanceConfig | None = None,
        seed: int | Sequence[int] = 0,
        use_cache: bool = True,
        sampler: str | None = None,
        output_type: str = "pil",
    ) -> list:
        """One image per class label (AdaLN conditioning); guidance against the null class, both
        branches reading one shared cache. A model with text starts from `<bos> <null> <boi>`."""
        if not self.cfg.num_classes:
            raise ValueError("class_to_image needs a class-conditional model (num_classes > 0)")
        bad = [y for y in labels if not 0 <= int(y) < self.cfg.num_classes]
        if bad:
            raise ValueError(f"labels {bad} outside 0..{self.cfg.num_classes - 1}")
        tok = self.tokenizer
        prefix = [tok.bos_id, tok.null_id, tok.boi_id] if tok is not None and self.cfg.vocab_size else []
        y = torch.tensor([int(v) for v in labels])
        return self._image_from_prefix(
            [list(prefix) for _ in labels], None, y, "class", num_steps, guidance, seed, use_cache, sampler, output_type
        )

    @torch.no_grad()
    def continue_video(
        self,
        clips: Sequence,
        num_frames: int,
        prompts: Sequence[str] | None = None,
        window: int | None = None,
        num_steps: int | None = None,
        guidance: float | GuidanceSchedule | GuidanceConfig | None = None,
        seed: int | Sequence[int] = 0,
        use_cache: bool = True,
        sampler: str | None = None,
        output_type: str = "pil",
    ) -> list:
        """Continue each clip (T0, H, W, C) to `num_frames` frames, past the training length if asked.

        The given frames (whole blocks) are prefilled through the cache after `<bos> prompt <boi>`;
        the remaining blocks are generated in order. `window` keeps only that many earlier blocks
        in the context (the prompt stays), bounding the cache for long videos. Returns the whole
        clips: lists of PIL frames, or float arrays (T, H, W, C) with output_type "np". A latent
        model's codec encodes the given frames and decodes the whole clip."""
        from .patches import to_blocks

        n = len(clips)
        x = [self._given(c).to_tensor() for c in clips]  # latents, for a latent model
        t0, _, h, w = x[0].shape
        if any(c.shape != x[0].shape for c in x):
            raise ValueError("continue_video: every clip must have the same shape")
        p, spec = self.cfg.patch_size, self.cfg.block_spec
        grid = (num_frames, h // p, w // p)
        per_block = spec.block_len(grid)
        if (t0 * grid[1] * grid[2]) % per_block or num_frames <= t0:
            raise ValueError(
                f"continue_video: {t0} given frames must be whole blocks ({per_block} patches per block) and "
                f"num_frames ({num_frames}) must exceed them"
            )
        blocks = torch.stack([to_blocks(c, p, spec)[0] for c in x])  # (n, given blocks, B, D)
        schedule = _guidance(self.guidance if guidance is None else guidance)
        tok = self.tokenizer if self.cfg.vocab_size else None
        mode = "text" if schedule is not None and tok is not None else None
        prefixes = [[tok.bos_id, *tok.encode(q), tok.boi_id] for q in (prompts or [""] * n)] if tok else []
        keep = spec.num_blocks(grid) if window is None else window + 1
        longest = max((len(q) for q in prefixes), default=0)
        eng = Engine(self.model, 2 * n if mode else n, longest + 4 + (keep + blocks.shape[1]) * per_block, use_cache)
        rows = list(range(n))
        both = rows + (eng.uncond_rows(rows) if mode else [])
        if prefixes:
            eng.text(rows, prefixes)
        if mode:
            eng.text(eng.uncond_rows(rows), [[tok.bos_id, tok.null_id, tok.boi_id]] * n)
        eng.begin_image(both, grid)
        eng.prefill_image(both, torch.cat([blocks] * (len(both) // n)))
        new = eng.generate_image(
            rows,
            self._sampler(sampler, num_steps),
            _generators(seed, n),
            schedule,
            mode,
            None,
            commit_last=False,
            first=blocks.shape[1],
            window=window,
        )
        return self._images(torch.cat([blocks.to(new.dtype), new], dim=1), output_type, grid)

    @torch.no_grad()
    def caption(
        self,
        images: Sequence,
        max_new_tokens: int = 32,
        sampling: TextSampling | None = None,
        seed: int | Sequence[int] = 0,
        use_cache: bool = True,
    ) -> list[str]:
        """Text after `<bos> <boi> image <eoi>`, decoded until `<eos>` (greedy by default)."""
        docs = self.generate(
            [Document([Image(im) if not isinstance(im, Image) else im]) for im in images],
            max_new_tokens=max_new_tokens,
            sampling=sampling,
            seed=seed,
            use_cache=use_cache,
            max_images=0,
        )
        return [" ".join(s.text for s in d.segments[1:] if isinstance(s, Text)) for d in docs]

    @torch.no_grad()
    def generate(
        self,
        documents: Document | Sequence[Document],
        max_new_tokens: int = 64,
        sampling: TextSampling | None = None,
        num_steps: int | None = None,
        guidance: float | GuidanceSchedule | GuidanceConfig | None = None,
        seed: int | Sequence[int] = 0,
        use_cache: bool = True,
        sampler: str | None = None,
        max_images: int = 4,
        logits_processor: Callable[[list[int], torch.Tensor], torch.Tensor] | None = None,
    ) -> Document | list[Document]:
        """Continue documents: given text and images (pixels, which a latent model's codec
        encodes, or latents) are prefilled through the cache; then text
        is decoded until `<eos>` or `max_new_tokens`; a `<boi>` starts an image of the model's
        shape (generated block by block, `<eoi>` appended), after which text resumes and sees the
        clean image. After `max_images` generated images `<boi>` is no longer sampled.
        `logits_processor(rows, logits)` may rewrite the next-token logits (rows, vocab) of the
        active rows before sampling (constrained decoding)."""
        tok = self._need_tokenizer("generate")
        single = isinstance(documents, Document)
        docs = [documents] if single else list(documents)
        n = len(docs)
        sampling = sampling or TextSampling()
        schedule = _guidance(self.guidance if guidance is None else guidance)
        mode = "text" if schedule is not None else None
        encoded = [self.collator.encode(encode_document(self.codec, d), close=False) for d in docs]
        prompt_len = max(self.collator.doc_length(e) for e in encoded)
        eng = Engine(self.model, 2 * n if mode else n, self._max_len(prompt_len, max_images, max_new_tokens), use_cache)
        rows = list(range(n))
        gens = _generators(seed, n)
        smp = self._sampler(sampler, num_steps)
        logits = self._prefill(eng, rows, encoded)
        if mode:
            eng.text(eng.uncond_rows(rows), [[tok.bos_id, tok.null_id]] * n)
        out: list[list] = [[] for _ in range(n)]  # generated segments: token lists and image blocks
        new_tokens = [0] * n
        images = [0] * n
        active = list(rows)
        while active:
            step_logits = logits[torch.tensor(active)]
            for q, r in enumerate(active):  # a row that may not open another image cannot sample <boi>
                if images[r] >= max_images:
                    step_logits[q, tok.boi_id] = float("-inf")
            if logits_processor is not None:
                step_logits = logits_processor(active, step_logits)
            nxt = next_tokens(step_logits, sampling, [gens[r] for r in active]).tolist()
            opening, texting = [], []
            for r, t in zip(active, nxt, strict=True):
                new_tokens[r] += 1
                if t == tok.eos_id or new_tokens[r] > max_new_tokens:
                    continue
                (opening if t == tok.boi_id else texting).append((r, t))
                if t != tok.boi_id:
                    if not out[r] or not isinstance(out[r][-1], list):
                        out[r].append([])
                    out[r][-1].append(t)
            both = (lambda rs: rs + eng.uncond_rows(rs)) if mode else (lambda rs: rs)
            if opening:
                rs = [r for r, _ in opening]
                eng.text(both(rs), [[tok.boi_id]] * len(both(rs)))
                eng.begin_image(both(rs), self.cfg.grid)
                blocks = eng.generate_image(rs, smp, [gens[r] for r in rs], schedule, mode, None, commit_last=True)
                eng.end_image(both(rs))
                for q, r in enumerate(rs):
                    out[r].append(blocks[q])
                    images[r] += 1
                texting += [(r, tok.eoi_id) for r in rs]
            if texting:
                rs = [r for r, _ in texting]
                ids = [[t] for _, t in texting]
                step = eng.text(both(rs), ids + (ids if mode else []))
                logits = logits.clone()
                logits[torch.tensor(rs)] = step[: len(rs)].float().cpu()
            active = sorted(r for r, _ in texting)
        results = [self._document(d, o) for d, o in zip(docs, out, strict=True)]
        return results[0] if single else results

    def _prefill(self, eng: Engine, rows: list[int], encoded) -> torch.Tensor:
        """Commit each row's encoded document (text ids and clean images); the logits at its end,
        on the CPU, where the rows' generators draw the next tokens.

        Rows are walked segment by segment; rows with a segment of the same kind at the same step
        go through one forward together."""
        logits = torch.zeros(len(rows), self.cfg.vocab_size)
        depth = max(len(e.segments) for e in encoded)
        for s in range(depth):
            texts = [(r, e.segments[s]) for r, e in zip(rows, encoded, strict=True) if s < len(e.segments)]
            ids = [(r, seg) for r, seg in texts if not isinstance(seg, VisualSegment)]
            vis = [(r, seg) for r, seg in texts if isinstance(seg, VisualSegment)]
            if ids:
                step = eng.text([r for r, _ in ids], [seg for _, seg in ids])
                logits[torch.tensor([r for r, _ in ids])] = step.float().cpu()
            for r, seg in vis:  # images may differ in shape: one forward each
                eng.begin_image([r], seg.grid)
                eng.prefill_image([r], seg.tokens.unsqueeze(0))
                eng.end_image([r])
        return logits

    def _document(self, given: Document, generated: list) -> Document:
        segments = list(given.segments)
        for g in generated:
            if isinstance(g, list):
                segments.append(Text(self.tokenizer.decode(g)))
            else:
                segments.append(Image(np.asarray(self._images(g.unsqueeze(0))[0])))
        return Document(segments, label=given.label, meta=dict(given.meta))

    @torch.no_grad()
    def embed(self, items: Sequence, layer: int | None = None) -> torch.Tensor:
        """(n, dim): mean of the clean-stream hidden states after block `layer` (default: the
        last) over each item's image tokens, or over all its tokens for a text-only document.
        A latent model's codec encodes pixel images first."""
        docs = [d if isinstance(d, Document) else Document([d if isinstance(d, Image) else Image(d)]) for d in items]
        depth = self.cfg.depth if layer is None else layer
        if not 1 <= depth <= self.cfg.depth:
            raise ValueError(f"layer must be in 1..{self.cfg.depth}, got {layer}")
        docs = [encode_document(self.codec, d) for d in docs]
        if self.collator is not None:
            enc = [self.collator.encode(d, close=False) for d in docs]
        else:
            enc = [to_units(d, self.cfg.patch_size, self.cfg.block_spec) for d in docs]
        batch = pack(enc, self.cfg.patch_dim, with_noisy=False)
        lay = batch.layout
        dev = self.model.x_embedder.weight.device
        out = self.model(batch.tokens.to(dev), batch.patches.to(dev), lay.to(dev), depth=depth, backend="dense")
        h = out.hidden.float().cpu()
        vectors = []
        for d in range(len(docs)):
            mine = lay.doc == d
            vis = mine & (lay.modality == VISUAL)
            sel = vis if vis.any() else mine
            vectors.append(h[sel].mean(0))
        return torch.stack(vectors)

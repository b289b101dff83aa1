"""The commands that use a trained model: `unimodal generate`, `unimodal caption`, `unimodal embed`.

    unimodal generate MODEL --prompt TEXT [--prompt TEXT ...] [--num N] [--steps S] [--guidance G]
                            [--sampler NAME] [--seed K] [--out DIR] [--no-cache] [--allow-pickle]
    unimodal generate MODEL --class LABEL [--class LABEL ...] [same options]
    unimodal caption MODEL IMAGE... [--max-new-tokens N] [--temperature T] [--top-k K] [--top-p P] [--seed K]
    unimodal embed MODEL IMAGE... --out FILE.npy [--layer L]

MODEL is an exported model folder or a training run directory (`Pipeline.from_pretrained`).
A user error (no such model, a pickle checkpoint without --allow-pickle, an unreadable image or one
of the wrong size, an option the model cannot take) raises `CommandError`; `unimodal.cli.main`
prints its message and returns 2.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from .samplers import SAMPLERS


class CommandError(Exception):
    """A user error: main prints the message (no traceback) and exits with status 2."""


def _positive(value: str) -> int:
    if not value.isdigit() or int(value) < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {value!r}")
    return int(value)


def _nonneg(value: str) -> int:
    if not value.isdigit():
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {value!r}")
    return int(value)


# ------------------------------------------------------------------------------------------ helpers


def load_pipeline(path: str, allow_pickle: bool):
    """Pipeline.from_pretrained, with its load errors turned into CommandError."""
    from .pipeline import Pipeline

    if not Path(path).exists():
        raise CommandError(f"model folder {path} does not exist")
    try:
        return Pipeline.from_pretrained(path, allow_pickle=allow_pickle)
    except (FileNotFoundError, ValueError, KeyError, TypeError) as e:
        msg = e.args[0] if isinstance(e, KeyError) and e.args else str(e)  # KeyError's str() adds quotes
        raise CommandError(str(msg).replace("Pass allow_pickle=True", "Pass --allow-pickle")) from e


def _pil_mode(cfg) -> str:
    mode = {1: "L", 3: "RGB"}.get(cfg.channels)
    if mode is None:
        raise CommandError(
            f"this model works on {cfg.channels}-channel latents, not pixels: it cannot read or write image files"
        )
    return mode


def load_image(path: str, cfg) -> np.ndarray:
    """An image file as a uint8 array in the model's channels ((H, W) grey or (H, W, 3) RGB); its
    size must already be the model's (no silent resizing)."""
    from PIL import Image as PILImage
    from PIL import UnidentifiedImageError

    mode = _pil_mode(cfg)
    try:
        with PILImage.open(path) as im:
            im = im.convert(mode)  # convert() loads the pixels, so truncated files fail here
    except FileNotFoundError:
        raise CommandError(f"{path}: no such file") from None
    except (UnidentifiedImageError, OSError, ValueError) as e:
        raise CommandError(f"{path}: cannot read it as an image ({e})") from None
    s = cfg.image_size
    if im.size != (s, s):
        w, h = im.size
        raise CommandError(f"{path}: the image is {w}x{h} pixels but the model takes {s}x{s}; resize or crop it first")
    return np.asarray(im)


def _pixels(image) -> np.ndarray:
    """A generated image as a uint8 (H, W) or (H, W, 3) array; a clip (a list of frames) becomes
    a filmstrip of its frames side by side."""
    a = np.concatenate([np.asarray(f) for f in image], axis=1) if isinstance(image, list) else np.asarray(image)
    if a.ndim == 3 and a.shape[-1] == 1:
        a = a[..., 0]
    return a


def tile(rows: list[list[np.ndarray]]) -> np.ndarray:
    """Equal-sized tiles as one array, rows top to bottom, no padding."""
    return np.concatenate([np.concatenate(r, axis=1) for r in rows], axis=0)


# ----------------------------------------------------------------------------------------- commands


def cmd_generate(args: argparse.Namespace, parser: argparse.ArgumentParser) -> str:
    from PIL import Image as PILImage

    from .samplers import make_sampler

    pipe = load_pipeline(args.model, args.allow_pickle)
    cfg = pipe.cfg
    _pil_mode(cfg)
    num_steps = args.steps or pipe.num_steps
    try:
        make_sampler(args.sampler or pipe.sampler, num_steps, cfg.diffusion)
    except ValueError as e:
        raise CommandError(str(e)) from None
    common = dict(num_steps=num_steps, guidance=args.guidance, use_cache=not args.no_cache, sampler=args.sampler)
    seeds = [args.seed + j for j in range(args.num)]
    if args.prompt is not None:
        if pipe.tokenizer is None or not cfg.vocab_size:
            hint = f"; it is class-conditional: use --class 0..{cfg.num_classes - 1}" if cfg.num_classes else ""
            raise CommandError(f"this model has no text, so it cannot take --prompt{hint}")
        rows, kind, stem = args.prompt, "prompt", [f"prompt{i}" for i in range(len(args.prompt))]
        images = pipe.text_to_image([p for p in rows for _ in seeds], seed=seeds * len(rows), **common)
        described = [repr(p) for p in rows]
    else:
        if not cfg.num_classes:
            raise CommandError("this model is not class-conditional (num_classes 0), so it cannot take --class")
        bad = [y for y in args.label if not 0 <= y < cfg.num_classes]
        if bad:
            raise CommandError(f"class label(s) {bad} outside 0..{cfg.num_classes - 1}")
        twice = sorted({y for y in args.label if args.label.count(y) > 1})
        if twice:
            raise CommandError(f"class label(s) {twice} given more than once (use --num for more samples)")
        rows, kind, stem = args.label, "class label", [f"class{y}" for y in args.label]
        images = pipe.class_to_image([y for y in rows for _ in seeds], seed=seeds * len(rows), **common)
        described = [f"class {y}" for y in rows]

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    grid: list[list[np.ndarray]] = []
    lines = []
    for i in range(len(rows)):
        grid.append([])
        for j, seed in enumerate(seeds):
            a = _pixels(images[i * len(seeds) + j])
            path = out / f"{stem[i]}_{j}.png"
            PILImage.fromarray(a).save(path)
            grid[-1].append(a)
            lines.append(f"{path}\tseed {seed}\t{described[i]}")
    grid_path = out / "grid.png"
    PILImage.fromarray(tile(grid)).save(grid_path)
    lines.append(f"{grid_path}\tgrid of {len(rows)} row(s) x {len(seeds)} column(s): one row per {kind}")
    return "\n".join(lines)


def cmd_caption(args: argparse.Namespace, parser: argparse.ArgumentParser) -> str:
    from .decoding import TextSampling

    try:
        sampling = TextSampling(args.temperature, args.top_k, args.top_p)
    except ValueError as e:
        raise CommandError(str(e)) from None
    pipe = load_pipeline(args.model, args.allow_pickle)
    if pipe.tokenizer is None or not pipe.cfg.vocab_size:
        raise CommandError("this model has no text (no tokenizer), so it cannot caption")
    images = [load_image(p, pipe.cfg) for p in args.images]
    texts = pipe.caption(images, max_new_tokens=args.max_new_tokens, sampling=sampling, seed=args.seed)
    return "\n".join(f"{p}\t{t}" for p, t in zip(args.images, texts, strict=True))


def cmd_embed(args: argparse.Namespace, parser: argparse.ArgumentParser) -> str:
    pipe = load_pipeline(args.model, args.allow_pickle)
    depth = pipe.cfg.depth
    if args.layer is not None and not 1 <= args.layer <= depth:
        raise CommandError(f"--layer must be in 1..{depth} (this model has {depth} blocks), got {args.layer}")
    images = [load_image(p, pipe.cfg) for p in args.images]
    vectors = pipe.embed(images, layer=args.layer).numpy().astype(np.float32)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "wb") as f:  # a file handle: np.save would append .npy to any other name
        np.save(f, vectors)
    layer = depth if args.layer is None else args.layer
    return f"{out}\tshape {vectors.shape} float32 (layer {layer} of {depth})"


# ------------------------------------------------------------------------------------------ parsers


def add_commands(sub) -> None:
    """Register generate, caption and embed on the `unimodal` subparsers."""
    model = argparse.ArgumentParser(add_help=False)
    model.add_argument("model", metavar="MODEL", help="an exported model folder or a training run directory")
    model.add_argument(
        "--allow-pickle",
        action="store_true",
        help="load a pickle checkpoint (.pt/.pth/.bin/.ckpt) when there is no model.safetensors, with "
        "torch.load(weights_only=True); refused without this flag",
    )

    sp = sub.add_parser(
        "generate",
        parents=[model],
        help="images from text prompts or class labels, as PNG files and a grid",
        description="Text-to-image (--prompt) or class-to-image (--class): N images per prompt or label, "
        "sample j drawn with seed K+j (the same noise in every row), written as DIR/prompt<i>_<j>.png "
        "(or DIR/class<label>_<j>.png) plus DIR/grid.png with one row per prompt or label. Video models "
        "write each clip as a filmstrip of its frames.",
    )
    what = sp.add_mutually_exclusive_group(required=True)
    what.add_argument("--prompt", action="append", metavar="TEXT", help="a text prompt (repeat for more rows)")
    what.add_argument(
        "--class",
        dest="label",
        action="append",
        type=int,
        metavar="LABEL",
        help="a class label of a class-conditional model (repeat for more rows)",
    )
    sp.add_argument("--num", type=_positive, default=1, metavar="N", help="images per prompt or label (default 1)")
    sp.add_argument(
        "--steps", type=_positive, metavar="S", help="denoising steps per block (default: the pipeline's, 25)"
    )
    sp.add_argument(
        "--guidance",
        type=float,
        metavar="G",
        help="classifier-free guidance scale (default: none; 1 is the same as none)",
    )
    sp.add_argument(
        "--sampler",
        choices=sorted(SAMPLERS),
        metavar="NAME",
        help=f"one of {', '.join(sorted(SAMPLERS))} (default dpmpp_2m for ddpm_eps models, euler for flow models)",
    )
    sp.add_argument("--seed", type=_nonneg, default=0, metavar="K", help="seed of the first sample (default 0)")
    sp.add_argument("--out", default="samples", metavar="DIR", help="output folder (default samples)")
    sp.add_argument(
        "--no-cache",
        action="store_true",
        help="recompute the whole prefix at every step instead of using the KV cache (same images, slower)",
    )
    sp.set_defaults(func=cmd_generate, parser=sp)

    images = argparse.ArgumentParser(add_help=False)
    images.add_argument(
        "images",
        nargs="+",
        metavar="IMAGE",
        help="image files, already of the model's size; converted to its channels (RGB or grey)",
    )

    sp = sub.add_parser(
        "caption",
        parents=[model, images],
        help="caption images: prints path<TAB>caption",
        description="Text after <bos> <boi> image <eoi>, decoded until <eos>: greedy by default, sampled "
        "with --temperature > 0 (image i drawing from seed K+i). Prints one 'path<TAB>caption' line per image.",
    )
    sp.add_argument("--max-new-tokens", type=_positive, default=32, metavar="N", help="token limit (default 32)")
    sp.add_argument("--temperature", type=float, default=0.0, metavar="T", help="0 = greedy (default 0)")
    sp.add_argument("--top-k", type=_nonneg, default=0, metavar="K", help="keep the K likeliest tokens (0 = all)")
    sp.add_argument("--top-p", type=float, default=1.0, metavar="P", help="nucleus sampling mass (1 = off)")
    sp.add_argument("--seed", type=_nonneg, default=0, metavar="K", help="seed of the first image (default 0)")
    sp.set_defaults(func=cmd_caption, parser=sp)

    sp = sub.add_parser(
        "embed",
        parents=[model, images],
        help="image embeddings as an (n, dim) .npy",
        description="Mean of the clean-stream hidden states over each image's tokens after block --layer "
        "(default the last), written as an (n, dim) float32 .npy in the order of the arguments.",
    )
    sp.add_argument("--out", required=True, metavar="FILE.npy", help="where to write the array")
    sp.add_argument("--layer", type=int, metavar="L", help="transformer block 1..depth (default: the last)")
    sp.set_defaults(func=cmd_embed, parser=sp)

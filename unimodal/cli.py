"""The `unimodal` command line.

    unimodal presets                       every preset: shape, blocks, parameter count (vs the paper)
    unimodal show layout [options]         the packed layout of an example document, token by token
    unimodal show mask [options]           the attention rule on that document, as a unit/stream picture
    unimodal show model [--preset NAME]    the module tree with parameter counts per component
    unimodal tokenizer train --config YAML train a SentencePiece tokenizer from a spec in tokenizers_cfg/
    unimodal generate MODEL --prompt TEXT  images (PNG files and a grid) from prompts, or --class LABEL
    unimodal caption MODEL IMAGE...        prints path<TAB>caption per image
    unimodal embed MODEL IMAGE... --out F  an (n, dim) float32 .npy of image embeddings

The generate/caption/embed bodies live in cli_generate.py. A user error there (a missing model, a
refused pickle, an unreadable image) prints its message and returns 2, without a traceback.

`main(argv)` returns the exit status, so the commands can be run in-process (tests do).
"""

from __future__ import annotations

import argparse
import os
import sys

from . import __version__
from .cli_eval import add_commands as add_eval_command
from .cli_generate import CommandError, add_commands
from .cli_latents import add_commands as add_latents_commands
from .cli_train import add_commands as add_train_command
from .config import BLOCK_KINDS, PRESETS, ModelConfig

DEFAULT_PRESET = "micro"


def _blocks(value: str) -> tuple[str, int]:
    kind, _, size = value.partition(":")
    if kind not in BLOCK_KINDS or not size.isdigit() or int(size) < 1:
        raise argparse.ArgumentTypeError(
            f"expected KIND:SIZE with KIND one of {', '.join(BLOCK_KINDS)} and SIZE >= 1 (e.g. tiles:2), got {value!r}"
        )
    return kind, int(size)


def _nonneg(value: str) -> int:
    if not value.isdigit():
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {value!r}")
    return int(value)


def _config(args: argparse.Namespace, parser: argparse.ArgumentParser) -> ModelConfig:
    overrides = {}
    if getattr(args, "blocks", None):
        overrides["block_kind"], overrides["block_size"] = args.blocks
    if getattr(args, "frames", None):
        overrides["frames"] = args.frames
    try:
        return ModelConfig.from_preset(args.preset, **overrides)
    except (ValueError, TypeError, KeyError) as e:
        parser.error(str(e))
        raise  # unreachable: parser.error exits


def cmd_presets(args: argparse.Namespace, parser: argparse.ArgumentParser) -> str:
    from .describe import presets_table

    return presets_table()


def cmd_layout(args: argparse.Namespace, parser: argparse.ArgumentParser) -> str:
    from .describe import example, layout_table

    return layout_table(example(_config(args, parser), args.text, args.label, not args.clean_only))


def cmd_mask(args: argparse.Namespace, parser: argparse.ArgumentParser) -> str:
    from .describe import example, mask_picture

    ex = example(_config(args, parser), args.text, args.label, not args.clean_only)
    return mask_picture(ex, grouped=args.grouped)


def cmd_model(args: argparse.Namespace, parser: argparse.ArgumentParser) -> str:
    from .describe import model_summary

    return model_summary(_config(args, parser), args.preset)


def cmd_tokenizer_train(args: argparse.Namespace, parser: argparse.ArgumentParser) -> str:
    from .tokenizer import TokenizerError, train_from_config

    try:
        tok = train_from_config(args.config, log=print)
    except (TokenizerError, FileNotFoundError) as e:
        parser.error(str(e))
        raise  # unreachable: parser.error exits
    return f"{tok!r}"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="unimodal",
        description="Unified text+image(+video) models: one causal transformer, ACDiT-style blockwise diffusion.",
    )
    p.add_argument("--version", action="version", version=f"unimodal {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True)

    sp = sub.add_parser(
        "presets",
        help="list the model presets with parameter counts",
        description="Every preset with depth/dim/heads/patch/block and its parameter count (model built on the "
        "meta device), against the ACDiT paper's Table 5 for acdit-*.",
    )
    sp.set_defaults(func=cmd_presets, parser=sp)

    show = sub.add_parser(
        "show",
        help="show the layout, attention mask or module tree",
        description="Inspect how the library sees an example document and a model.",
    )
    what = show.add_subparsers(dest="what", metavar="WHAT", required=True)

    preset = argparse.ArgumentParser(add_help=False)
    preset.add_argument(
        "--preset", default=DEFAULT_PRESET, choices=sorted(PRESETS), help=f"model preset (default {DEFAULT_PRESET})"
    )
    doc = argparse.ArgumentParser(add_help=False)
    doc.add_argument(
        "--text",
        type=_nonneg,
        default=2,
        metavar="N",
        help="text tokens before and after the image (default 2; 0 = an image-only document)",
    )
    doc.add_argument(
        "--blocks", type=_blocks, metavar="KIND:SIZE", help="override the preset's blocks, e.g. tiles:1, rows:2"
    )
    doc.add_argument("--frames", type=int, metavar="T", help="make the image a clip of T frames")
    doc.add_argument("--label", type=int, metavar="K", help="class label of the document")
    doc.add_argument(
        "--clean-only", action="store_true", help="the inference layout: clean stream only, no noisy copies"
    )

    sp = what.add_parser(
        "layout",
        parents=[preset, doc],
        help="the packed layout of an example document, token by token",
        description="Build an example document (text ids, an image of the preset's size, text ids), encode and "
        "pack it, and print every token: index, doc, unit, noisy, modality, RoPE position (t,h,w), block, "
        "stream label and next-token target.",
    )
    sp.set_defaults(func=cmd_layout, parser=sp)

    sp = what.add_parser(
        "mask",
        parents=[preset, doc],
        help="the attention rule on the example document, as a picture",
        description="The dense token mask of the attention rule on the example document, reduced to units and "
        "streams (T0 T1 text tokens, c0/n0 clean/noisy copies of block 0): '#' allowed, '.' masked.",
    )
    sp.add_argument(
        "--grouped",
        action="store_true",
        help="order rows/columns as all clean units, then all noisy blocks (the ACDiT paper's picture)",
    )
    sp.set_defaults(func=cmd_mask, parser=sp)

    sp = what.add_parser(
        "model",
        parents=[preset],
        help="module tree and parameter counts per component",
        description="The module tree of a preset's model with parameter counts per component "
        "(embedders, blocks, heads), built on the meta device.",
    )
    sp.set_defaults(func=cmd_model, parser=sp)

    tok = sub.add_parser("tokenizer", help="train tokenizers", description="Tokenizers (specs in tokenizers_cfg/).")
    tok_sub = tok.add_subparsers(dest="action", metavar="ACTION", required=True)
    sp = tok_sub.add_parser(
        "train",
        help="train a SentencePiece tokenizer from a YAML spec",
        description="Read the spec (algorithm, vocabulary size, normalisation, special tokens, corpus: a text "
        "file, a datasets column or a built-in dataset's captions), train deterministically and save the "
        "tokenizer to the spec's output folder.",
    )
    sp.add_argument("--config", required=True, metavar="YAML", help="tokenizer spec, e.g. tokenizers_cfg/shapes.yaml")
    sp.set_defaults(func=cmd_tokenizer_train, parser=sp)

    add_commands(sub)  # generate, caption, embed
    add_train_command(sub)
    add_latents_commands(sub)  # latents encode, info, attach
    add_eval_command(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        out = args.func(args, args.parser)
    except CommandError as e:
        sys.stderr.write(f"{args.parser.prog}: error: {e}\n")
        return 2
    try:
        if out:  # a command with nothing to say (e.g. `train` on ranks other than 0) prints nothing
            sys.stdout.write(out + "\n")
            sys.stdout.flush()
    except BrokenPipeError:  # e.g. `unimodal show layout --preset acdit-b | head`: stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

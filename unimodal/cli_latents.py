"""`unimodal latents`: cache a dataset's autoencoder latents, inspect a cache, give a model its codec.

    unimodal latents encode --vae DIR --out DIR (--config YAML | --builtin NAME [--task T] | --source KEY=VALUE ...)
                            [--shard-size N] [--batch-size N] [--dtype D] [--device DEV] [--sample] [--flip] ...
    unimodal latents info DIR
    unimodal latents attach MODEL (--vae DIR | --from-latents DIR) [--link]

`encode` reads the documents a data config describes (a DataConfig YAML or a recipe's `data:`
section, a built-in, or a DataSource given as key=value pairs), encodes every image with the VAE
and writes shards and a manifest (`unimodal.data.latents`); it skips finished shards, so it
resumes after an interruption and a second run writes nothing. `attach` writes `codec/` (or with
`--link` a `codec.json`) into a model folder so that `Pipeline` decodes its latents to pixels.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from .cli_generate import CommandError

DOC_KEYS = ("builtin", "task", "n", "split", "options", "source", "seed")  # what decides the documents


def _positive(value: str) -> int:
    if not value.isdigit() or int(value) < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {value!r}")
    return int(value)


def _pairs(items: list[str] | None, what: str) -> dict[str, Any]:
    """KEY=VALUE pairs (values read as YAML; dotted keys nest) as a dict."""
    import yaml

    out: dict[str, Any] = {}
    for item in items or []:
        key, eq, value = item.partition("=")
        if not eq or not key:
            raise CommandError(f"{what} takes KEY=VALUE, got {item!r}")
        try:
            parsed = yaml.safe_load(value) if value else ""
        except yaml.YAMLError:
            parsed = value
        *parents, leaf = key.split(".")
        node = out
        for p in parents:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise CommandError(f"{what}: {key!r} nests under a key that has a value")
        node[leaf] = parsed
    return out


def data_config(args: argparse.Namespace):
    """The DataConfig of --config / --builtin / --source."""
    from .data.pipeline import DataConfig

    given = [name for name in ("config", "builtin", "source") if getattr(args, name)]
    if len(given) != 1:
        raise CommandError("give exactly one of --config YAML, --builtin NAME or --source KEY=VALUE ...")
    try:
        if args.config:
            import yaml

            path = Path(args.config)
            if not path.is_file():
                raise CommandError(f"{path}: no such file")
            d = yaml.safe_load(path.read_text()) or {}
            if not isinstance(d, dict):
                raise CommandError(f"{path}: expected a mapping (a data config, or a recipe with a data: section)")
            if args.section in d and isinstance(d[args.section], dict):  # a training recipe
                d = d[args.section]
            elif args.section != "data":
                raise CommandError(f"{path}: no {args.section!r} section")
            return DataConfig.from_dict(d)
        if args.builtin:
            opts = _pairs(args.option, "--option")
            return DataConfig(builtin=args.builtin, task=args.task, n=args.n, split=args.split, options=opts)
        src = _pairs(args.source, "--source")
        if "format" not in src:
            raise CommandError("--source needs format=imagefolder|captions|interleaved|video and path=...")
        return DataConfig(source=src)
    except (KeyError, TypeError, ValueError) as e:
        raise CommandError(str(e.args[0] if isinstance(e, KeyError) and e.args else e)) from e


def _codec(args: argparse.Namespace):
    from .codec import VAECodec

    try:
        return VAECodec.from_pretrained(
            args.vae,
            subfolder=args.vae_subfolder,
            allow_download=args.allow_download,
            scaling_factor=args.scaling_factor,
            shift_factor=args.shift_factor,
            sample=args.sample,
            batch_size=args.batch_size,
            dtype=args.dtype,
            device=args.device,
        )
    except (ImportError, FileNotFoundError, ValueError) as e:
        raise CommandError(str(e)) from e


def cmd_encode(args: argparse.Namespace, parser: argparse.ArgumentParser) -> str:
    from .data.latents import LatentsMismatch, encode_documents
    from .data.pipeline import build_documents

    cfg = data_config(args)
    if cfg.source is not None and cfg.source.get("format") == "latents":
        raise CommandError("the data config already reads cached latents: point it at the pixel data")
    codec = _codec(args)
    try:
        docs = build_documents(cfg)
    except (FileNotFoundError, KeyError, TypeError, ValueError) as e:
        raise CommandError(str(e.args[0] if isinstance(e, KeyError) and e.args else e)) from e
    source = {k: getattr(cfg, k) for k in DOC_KEYS}
    if source["source"]:  # how the files are read, not what they hold
        source["source"] = {k: v for k, v in source["source"].items() if k not in ("streaming", "cache_dir")}
    try:
        what = f"{len(docs)} documents"
    except TypeError:  # a streaming reader
        what = "a stream of documents"
    print(f"encoding {what} with {codec!r}", flush=True)
    try:
        report = encode_documents(
            docs,
            codec,
            args.out,
            source=source,
            shard_size=args.shard_size,
            batch_size=args.batch_size,
            save_dtype=args.save_dtype,
            flip=args.flip,
            seed=args.seed,
            overwrite=args.overwrite,
            log=lambda s: print(s, flush=True),
        )
    except LatentsMismatch as e:
        raise CommandError(f"{e} (--overwrite)") from e
    except ValueError as e:
        raise CommandError(str(e)) from e
    return report.summary() + "\n" + _usage(Path(args.out), report.latent_shapes)


def _usage(out: Path, shapes: dict[str, int]) -> str:
    if not shapes:
        return "no images were encoded"
    shape = max(shapes, key=shapes.get)
    t, c, h, w = (int(v) for v in shape.strip("()").split(","))
    model = f"model: {{channels: {c}, image_size: {h}" + (f", frames: {t}" if t > 1 else "") + ", patch_size: 1 or 2}"
    return f"train on it with\n  data: {{source: {{format: latents, path: {out}}}}}\n  {model}"


def cmd_info(args: argparse.Namespace, parser: argparse.ArgumentParser) -> str:
    from .data.latents import MANIFEST

    path = Path(args.dir) / MANIFEST
    if not path.is_file():
        raise CommandError(f"{args.dir}: no {MANIFEST} (not a cached-latents folder)")
    m = json.loads(path.read_text())
    shapes: dict[str, int] = {}
    for s in m.get("shards", []):
        for shape, c in s.get("latent_shapes", {}).items():
            shapes[shape] = shapes.get(shape, 0) + c
    done = len(m.get("shards", []))
    lines = [
        f"{args.dir}: {m.get('format')} v{m.get('version')}, "
        + ("complete" if m.get("complete") else f"INCOMPLETE ({done} of {m.get('num_shards')} shards)"),
        f"documents: {m.get('documents')} in {done} shards of up to {m.get('shard_size')}"
        + (f"; bad records skipped: {m['bad_records']}" if m.get("bad_records") else ""),
        f"stored as {m.get('save_dtype')}" + (", with mirrored copies (--flip)" if m.get("flip") else ""),
        "latent shapes (T, C, h, w): " + (", ".join(f"{s} x{n}" for s, n in sorted(shapes.items())) or "none"),
        "latent mean {mean}, std {std} (near 1 when the scaling factor suits the VAE)".format(
            **(m.get("latent_stats") or {"mean": None, "std": None})
        ),
        f"codec: {json.dumps(m.get('codec'), sort_keys=True)}",
        f"source: {json.dumps(m.get('source'), sort_keys=True)}",
    ]
    return "\n".join(lines) + "\n" + _usage(Path(args.dir), shapes)


def cmd_attach(args: argparse.Namespace, parser: argparse.ArgumentParser) -> str:
    from .codec import VAECodec, load_codec, save_codec
    from .data.latents import codec_of

    model = Path(args.model)
    if not (model / "config.json").is_file() and (model / "model" / "config.json").is_file():
        model = model / "model"  # a run directory: its exported model
    if not (model / "config.json").is_file():
        raise CommandError(f"{args.model}: no config.json (not an exported model or a run directory)")
    try:
        if args.from_latents:
            codec = codec_of(args.from_latents)
        else:
            codec = VAECodec.from_pretrained(args.vae, subfolder=args.vae_subfolder)
        written = save_codec(model, codec, link=args.link)  # refused if the channels are not the model's
        load_codec(model)  # it loads back
    except (ImportError, FileNotFoundError, ValueError) as e:
        raise CommandError(str(e)) from e
    return f"{written}\t{codec!r}"


def add_commands(sub) -> None:
    """Register `latents encode`, `latents info` and `latents attach` on the `unimodal` subparsers."""
    lat = sub.add_parser(
        "latents",
        help="cache a dataset's autoencoder latents; give a model its codec",
        description="Latent autoencoders (diffusers AutoencoderKL, the `latents` extra: pip install -e .[latents]). "
        "VAE folders are local: nothing is downloaded.",
    )
    act = lat.add_subparsers(dest="action", metavar="ACTION", required=True)

    vae = argparse.ArgumentParser(add_help=False)
    vae.add_argument(
        "--vae-subfolder", metavar="NAME", help="the VAE's subfolder (default: the folder itself, else vae/)"
    )

    sp = act.add_parser(
        "encode",
        parents=[vae],
        help="encode every image of a dataset into latent shards",
        description="Read the documents of a data config, encode every image with the VAE (posterior mean, or "
        "--sample), and write OUT/shard-NNNNN.safetensors (latents) + .jsonl (text, labels, meta per document) "
        "and OUT/manifest.json. Finished shards are skipped: re-running resumes, and a finished folder is left "
        "as it is. Train on it with data: {source: {format: latents, path: OUT}}.",
    )
    sp.add_argument("--vae", required=True, metavar="DIR", help="a local AutoencoderKL folder (save_pretrained)")
    sp.add_argument("--out", required=True, metavar="DIR", help="output folder")
    data = sp.add_argument_group("data (one of --config, --builtin, --source)")
    data.add_argument("--config", metavar="YAML", help="a data config (DataConfig keys), or a recipe")
    data.add_argument("--section", default="data", metavar="KEY", help="the recipe section to read (default data)")
    data.add_argument("--builtin", metavar="NAME", help="a built-in dataset: shapes or digits")
    data.add_argument("--task", metavar="TASK", help="the built-in's task (shapes: t2i, caption, scenes, ...)")
    data.add_argument("--n", type=_positive, metavar="N", help="documents of the built-in")
    data.add_argument("--split", default="train", metavar="SPLIT", help="the built-in's split (default train)")
    data.add_argument("--option", action="append", metavar="KEY=VALUE", help="a built-in option, e.g. image_size=64")
    data.add_argument(
        "--source",
        action="append",
        metavar="KEY=VALUE",
        help="a DataSource field (repeat), e.g. --source format=imagefolder --source path=data/train "
        "--source conversion.size=256",
    )
    sp.add_argument("--shard-size", type=_positive, default=1000, metavar="N", help="documents per shard (1000)")
    sp.add_argument("--batch-size", type=_positive, default=32, metavar="N", help="frames per VAE call (32)")
    sp.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"], help="VAE precision")
    sp.add_argument("--device", default="cpu", metavar="DEV", help="cpu, cuda, cuda:1 ... (default cpu)")
    sp.add_argument("--save-dtype", default="float32", choices=["float32", "float16", "bfloat16"], help="storage dtype")
    sp.add_argument("--sample", action="store_true", help="a posterior sample instead of the mean")
    sp.add_argument("--seed", type=int, default=0, metavar="K", help="seed of --sample (per record and image)")
    sp.add_argument("--flip", action="store_true", help="also store each image's horizontal mirror")
    sp.add_argument("--scaling-factor", type=float, metavar="F", help="override the VAE config's scaling_factor")
    sp.add_argument("--shift-factor", type=float, metavar="F", help="override the VAE config's shift_factor")
    sp.add_argument(
        "--allow-download",
        action="store_true",
        help="let diffusers fetch --vae as a Hub id when it is not a local folder (off: nothing is downloaded)",
    )
    sp.add_argument("--overwrite", action="store_true", help="delete OUT's shards written with another config")
    sp.set_defaults(func=cmd_encode, parser=sp)

    sp = act.add_parser(
        "info",
        help="summarise a cached-latents folder",
        description="What a cached-latents folder holds: documents, shards, shapes, codec and data source.",
    )
    sp.add_argument("dir", metavar="DIR")
    sp.set_defaults(func=cmd_info, parser=sp)

    sp = act.add_parser(
        "attach",
        parents=[vae],
        help="give a model folder its codec, so the Pipeline decodes latents to pixels",
        description="Write MODEL/codec/ (a copy of the VAE, scaling factor in its config) or with --link "
        "MODEL/codec.json (the VAE folder's absolute path). MODEL may be a run directory (its model/).",
    )
    sp.add_argument("model", metavar="MODEL")
    which = sp.add_mutually_exclusive_group(required=True)
    which.add_argument("--vae", metavar="DIR", help="a local AutoencoderKL folder")
    which.add_argument("--from-latents", metavar="DIR", help="the VAE a cached-latents folder was encoded with")
    sp.add_argument("--link", action="store_true", help="write codec.json pointing at the VAE instead of a copy")
    sp.set_defaults(func=cmd_attach, parser=sp)

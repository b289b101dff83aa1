"""The `probe` task: how linearly readable the model's image representations are.

`Pipeline.embed` (the mean of the clean-stream hidden states over an image's tokens after a
block) of held-out images, at the middle block and the last; a logistic regression (features
standardised) fitted on train-split embeddings predicts each attribute of test-split images.
The same probe on raw pixels runs beside it, and the majority-class rate gives chance.

- RGB models of >= 16 pixels: single shapes (`shapes` task `caption`, the model's image size,
  dataset seed 0): colour, shape, size and position (the cell);
- 8x8 grey models: real digits, the digit class.

`samples` test images and 4 x `samples` (at least 200) train images.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ...data.shapes import ShapesDataset
from .base import NONE, Skip, chunks, is_digits_model, need_pixels, one_blas_thread, shapes_options, task

TRAIN_FACTOR = 4
MIN_TRAIN = 200


def probe_accuracy(x_train, y_train, x_test, y_test) -> float:
    """Test accuracy of a logistic regression on standardised features."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
    with one_blas_thread():
        clf.fit(np.asarray(x_train, np.float64), np.asarray(y_train))
        pred = clf.predict(np.asarray(x_test, np.float64))
    return float((pred == np.asarray(y_test)).mean())


def chance(y_train, y_test) -> float:
    """Accuracy of always answering the train split's most common label."""
    values, counts = np.unique(np.asarray(y_train), return_counts=True)
    return float((np.asarray(y_test) == values[np.argmax(counts)]).mean())


def pixels(images) -> np.ndarray:
    return np.stack([np.asarray(im, np.float32).reshape(-1) / 255.0 for im in images])


def shapes_probe_data(n_train: int, n_test: int, image_size: int, **options):
    """(train images, train labels, test images, test labels) of single shapes; labels a dict of
    attribute -> array."""

    def split(name: str, n: int):
        ds = ShapesDataset("caption", split=name, seed=0, n=n, image_size=image_size, **options)
        images, labels = [], {a: [] for a in ("color", "shape", "size", "position")}
        for doc in ds:
            o = doc.meta["scene"]["objects"][0]
            images.append(doc.images[0].data)
            for a, k in (("color", "color"), ("shape", "shape"), ("size", "size"), ("position", "cell")):
                labels[a].append(o[k])
        return images, {a: np.array(v) for a, v in labels.items()}

    return (*split("train", n_train), *split("test", n_test))


def probe_table(feats_train: dict, feats_test: dict, y_train: dict, y_test: dict) -> dict[str, dict[str, float]]:
    """{feature name: {attribute: accuracy}} plus "chance"; attributes with one train class skip."""
    out: dict[str, dict[str, float]] = {"chance": {}}
    for a in y_train:
        if len(np.unique(y_train[a])) < 2:
            continue
        out["chance"][a] = chance(y_train[a], y_test[a])
        for name in feats_train:
            out.setdefault(name, {})[a] = probe_accuracy(feats_train[name], y_train[a], feats_test[name], y_test[a])
    return out


def embed_all(pipe, images, layer: int) -> np.ndarray:
    out = [pipe.embed([images[i] for i in r], layer=layer).numpy() for r in chunks(len(images), 64)]
    return np.concatenate(out).astype(np.float64)


@task(
    "probe",
    samples=200,
    description="linear probes on embed() vs raw pixels: shape attributes or digit class",
    generation=NONE,
)
def probe(pipe, samples, seed, num_steps, guidance, sampler):
    cfg = pipe.cfg
    need_pixels(pipe, "probe")
    n_train = max(MIN_TRAIN, TRAIN_FACTOR * samples)
    if is_digits_model(cfg):
        from ...data.digits import DigitsDataset

        xtr, ytr = DigitsDataset("train", n=n_train).arrays()
        xte, yte = DigitsDataset("test", n=samples).arrays()
        tr_images, te_images = list(xtr), list(xte)
        y_train, y_test = {"digit": ytr}, {"digit": yte}
        record: dict[str, Any] = {"data": "digits", "train": "train split", "test": "test split"}
    elif cfg.channels == 3 and cfg.frames == 1 and cfg.image_size >= 16:
        opts = shapes_options(pipe)
        tr_images, y_train, te_images, y_test = shapes_probe_data(n_train, samples, cfg.image_size, **opts)
        record = {"data": "shapes/caption (single shapes)", "image_size": cfg.image_size, "dataset_seed": 0}
        if opts:
            record["options"] = opts
    else:
        raise Skip(
            f"probe has held-out images for RGB image models (>= 16 px) and 8x8 grey digit models; this one is "
            f"{cfg.image_size}px, {cfg.channels} channel(s), {cfg.frames} frame(s)"
        )
    layers = sorted({max(1, (cfg.depth + 1) // 2), cfg.depth})
    feats_train = {"pixels": pixels(tr_images)}
    feats_test = {"pixels": pixels(te_images)}
    for layer in layers:
        feats_train[f"layer{layer}"] = embed_all(pipe, tr_images, layer)
        feats_test[f"layer{layer}"] = embed_all(pipe, te_images, layer)
    table = probe_table(feats_train, feats_test, y_train, y_test)
    best = {a: max(table[f"layer{layer}"][a] for layer in layers) for a in table["chance"]}
    record.update(
        train_samples=len(tr_images),
        test_samples=len(te_images),
        layers=layers,
        classifier="StandardScaler + LogisticRegression(max_iter=2000)",
    )
    layer_rows = {f"layer{layer}": table[f"layer{layer}"] for layer in layers}
    return {"embed_best": best, "pixels": table["pixels"], "chance": table["chance"], **layer_rows, "record": record}

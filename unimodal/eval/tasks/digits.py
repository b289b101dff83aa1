"""The `digits` task: generated handwritten digits judged by a classifier trained on real ones.

The judge is a multinomial logistic regression on the 64 pixels (scaled to [0, 1]) of the real
digits `train` split (1437 images; the split the generative model trains on, so the `test` split
stays unseen by both), fitted once per process (`digits_classifier`). It scores about 0.97 on
the real `test` split; `classifier_test_accuracy` records that ceiling beside every result.

Diversity, against the real `test` images of the same classes:
- `diversity`: per class, the mean pairwise L2 distance between generated images divided by the
  same for the real test images of that class, averaged over classes. 1 means as varied as real
  handwriting; a model that draws one image per class scores 0.
- `coverage` (Naeem et al. 2020, "Reliable Fidelity and Diversity Metrics", k = 5): the fraction
  of real test images (as many per class as were generated, at most all of them) whose
  k-nearest-neighbour ball among the real images holds at least one generated image. About 0.9
  for a second set of real digits, near (number of distinct images) / (number of real images)
  for a collapsed set.
"""

from __future__ import annotations

from functools import cache
from typing import Any

import numpy as np

from ...data.digits import DigitsDataset, caption
from .base import Skip, chunks, is_digits_model, need_pixels, one_blas_thread, task

COVERAGE_K = 5


def _features(images) -> np.ndarray:
    a = np.stack([np.asarray(im, dtype=np.float32).reshape(-1) for im in images])
    return a / 255.0


@cache
def digits_classifier():
    """Logistic regression on the real train split's pixels (cached per process)."""
    from sklearn.linear_model import LogisticRegression

    x, y = DigitsDataset("train").arrays()
    with one_blas_thread():
        return LogisticRegression(max_iter=3000).fit(_features(x), y)


@cache
def classifier_test_accuracy() -> float:
    x, y = DigitsDataset("test").arrays()
    return float((classify(x) == y).mean())


def classify(images) -> np.ndarray:
    """Predicted digit of each (8, 8) uint8 image."""
    clf = digits_classifier()
    with one_blas_thread():
        return clf.predict(_features(images))


def _mean_pairwise(x: np.ndarray) -> float:
    if len(x) < 2:
        return float("nan")
    d = np.sqrt(((x[:, None, :] - x[None, :, :]) ** 2).sum(-1))
    return float(d[np.triu_indices(len(x), 1)].mean())


def real_reference(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Real test images matching the generated labels: per class, the first as many as were
    generated (all of that class when fewer exist)."""
    x, y = DigitsDataset("test").arrays()
    xs, ys = [], []
    for c in np.unique(labels):
        k = int((labels == c).sum())
        xs.append(x[y == c][:k])
        ys.append(y[y == c][:k])
    return np.concatenate(xs), np.concatenate(ys)


def diversity(images, labels) -> dict[str, Any]:
    """`diversity` (mean over classes of generated / real mean pairwise distance, classes with at
    least two generated images) and `coverage` (k = 5) against the real test split."""
    labels = np.asarray(labels)
    gen = _features(images)
    x_test, y_test = DigitsDataset("test").arrays()
    real_all = _features(x_test)
    per_class = {}
    for c in np.unique(labels):
        g = _mean_pairwise(gen[labels == c])
        r = _mean_pairwise(real_all[y_test == c])
        if np.isfinite(g) and r > 0:
            per_class[str(int(c))] = g / r
    ref_x, _ = real_reference(labels)
    real = _features(ref_x)
    d_rr = np.sqrt(((real[:, None] - real[None]) ** 2).sum(-1))
    k = min(COVERAGE_K, len(real) - 1)
    radius = np.sort(d_rr, axis=1)[:, k] if k >= 1 else np.zeros(len(real))  # column 0 is the point itself
    d_rg = np.sqrt(((real[:, None] - gen[None]) ** 2).sum(-1))
    covered = (d_rg <= radius[:, None]).any(1)
    return {
        "diversity": float(np.mean(list(per_class.values()))) if per_class else float("nan"),
        "diversity_by_class": per_class,
        "coverage": float(covered.mean()),
    }


def score_digits(images, labels) -> dict[str, Any]:
    """Classifier accuracy on generated images of known labels, per class, and their diversity."""
    labels = np.asarray(labels)
    pred = classify(images)
    per_class = {str(int(c)): float((pred[labels == c] == c).mean()) for c in np.unique(labels)}
    return {
        "accuracy": float((pred == labels).mean()),
        "accuracy_by_class": per_class,
        **diversity(images, labels),
        "classifier_test_accuracy": classifier_test_accuracy(),
        "n": len(labels),
    }


@task("digits", samples=100, description="digits per class judged by a classifier on real digits; diversity")
def digits(pipe, samples, seed, num_steps, guidance, sampler):
    cfg = pipe.cfg
    need_pixels(pipe, "digits")
    if not is_digits_model(cfg):
        raise Skip(f"digits needs a model of 8x8 grey images; this one makes {cfg.image_size}px, {cfg.channels} ch")
    labels = [i % 10 for i in range(samples)]
    has_text = pipe.tokenizer is not None and cfg.vocab_size
    if cfg.num_classes == 10:
        mode = "class_to_image"
    elif has_text:
        mode = "text_to_image"
    else:
        raise Skip("digits needs a class-conditional model with 10 classes or a text model")
    images: list[np.ndarray] = []
    for r in chunks(samples):
        kw = dict(num_steps=num_steps, guidance=guidance, seed=[seed + i for i in r], sampler=sampler)
        if mode == "class_to_image":
            out = pipe.class_to_image([labels[i] for i in r], **kw)
        else:
            out = pipe.text_to_image([caption(labels[i]) for i in r], **kw)
        images += [np.asarray(im).reshape(8, 8) for im in out]
    record = {
        "mode": mode,
        "prompts": "a handwritten <digit word>" if mode == "text_to_image" else "class labels 0-9",
        "labels": "sample i has label i % 10",
        "judge": "logistic regression on the real digits train split (pixels / 255)",
        "reference": "real digits test split",
        "coverage_k": COVERAGE_K,
    }
    return {**score_digits(images, labels), "record": record}

"""Training the quality classifier: reference text against low-value text, with a held-out check.

DCLM (Li et al. 2024) showed that a fastText bigram classifier separating instruction-like
reference text from random web text picks better pretraining data than rule sets alone. This
trains that kind of classifier from any two corpora:

* positives (``__label__hq``) and negatives (``__label__lq``) are Parquet files, folders or globs
  (one column holds the text) or ``.txt`` files (one document per line);
* the larger side is subsampled to the size of the smaller one (seeded), so the classifier has
  no prior toward either class and its ``hq`` probability is comparable across models;
* a stratified held-out split (``holdout`` of each class) gives accuracy and ROC AUC, and the
  held-out score distribution (101 quantiles) is stored so the ``quality_classifier`` step can
  turn "keep the top 10%" into a fixed threshold (see :func:`threshold_for_top_fraction`).

Everything read is held in memory (texts only): fine for the 10^5-10^6 documents such
classifiers are trained on.

``out_dir`` receives ``model.bin`` and ``config.json`` (sources, document counts, parameters,
held-out metrics, score quantiles, library versions).
"""

from __future__ import annotations

import importlib.metadata
import json
import platform
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from curation.io.reader import discover_inputs
from curation.models import load_fasttext
from curation.quality.model import HQ, LQ, normalize_text, predict_hq_proba

CONFIG_NAME, MODEL_NAME = "config.json", "model.bin"
QUANTILE_LEVELS = np.linspace(0.0, 1.0, 101)
"""Levels at which the held-out score distribution is stored (every percentile)."""


@dataclass
class TrainResult:
    """What :func:`train_quality_classifier` wrote and measured."""

    model_path: Path
    config_path: Path
    accuracy: float
    """Held-out accuracy at the 0.5 decision threshold."""
    roc_auc: float
    """Held-out ROC AUC of the ``hq`` probability."""
    config: dict


def train_quality_classifier(positive: str | Path | list, negative: str | Path | list,
                             out_dir: str | Path, *, text_column: str = "text",
                             epochs: int = 5, dim: int = 100, wordNgrams: int = 2,
                             lr: float = 0.1, bucket: int = 2_000_000, holdout: float = 0.1,
                             seed: int = 0, threads: int = 1) -> TrainResult:
    """Trains a fastText ``hq``/``lq`` classifier and writes ``out_dir/{model.bin,config.json}``.

    Args:
        positive: high-quality sources: Parquet files, folders, globs or ``.txt`` files.
        negative: low-quality sources, same forms.
        out_dir: created if needed.
        text_column: the Parquet column holding the text.
        epochs, dim, wordNgrams, lr: fastText's ``epoch``, ``dim``, ``wordNgrams``, ``lr``.
        bucket: hashed n-gram rows; the model holds ``bucket * dim`` floats (2M x 100: 800 MB),
            so lower it for small training sets.
        holdout: fraction of each class kept out of training for the metrics, in (0, 1).
        seed: seeds the subsampling, the split and fastText.
        threads: fastText threads; only 1 gives the same model bit for bit on every run.
    """
    if not 0.0 < holdout < 1.0:
        raise ValueError(f"holdout must be in (0, 1), got {holdout}")
    for name, value in (("epochs", epochs), ("dim", dim), ("wordNgrams", wordNgrams),
                        ("bucket", bucket), ("threads", threads)):
        if value < 1:
            raise ValueError(f"{name} must be >= 1, got {value}")
    pos_sources, neg_sources = _as_list(positive), _as_list(negative)
    pos = read_documents(pos_sources, text_column)
    neg = read_documents(neg_sources, text_column)
    for side, docs, sources in (("positive", pos, pos_sources), ("negative", neg, neg_sources)):
        if len(docs) < 2:
            raise ValueError(f"{side} sources {sources} hold {len(docs)} non-empty document(s); "
                             "at least 2 are needed (one to train on, one to hold out)")

    rng = np.random.default_rng(seed)
    n = min(len(pos), len(neg))  # balance: subsample the larger side
    pos_used = pos.take(np.sort(rng.permutation(len(pos))[:n]))
    neg_used = neg.take(np.sort(rng.permutation(len(neg))[:n]))
    n_held = min(max(1, round(holdout * n)), n - 1)
    pos_train, pos_held = _split(pos_used, n_held, rng)
    neg_train, neg_held = _split(neg_used, n_held, rng)

    params = {"epoch": epochs, "dim": dim, "wordNgrams": wordNgrams, "lr": lr, "bucket": bucket,
              "minCount": 1, "loss": "softmax", "thread": threads, "seed": seed}
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out) as tmp:
        train_file = Path(tmp) / "train.txt"
        lines = [f"{HQ} {t}" for t in pos_train.to_pylist()] + \
                [f"{LQ} {t}" for t in neg_train.to_pylist()]
        order = rng.permutation(len(lines))  # fastText's SGD sees the classes interleaved
        train_file.write_text("".join(lines[i] + "\n" for i in order), encoding="utf-8")
        model_file = Path(tmp) / MODEL_NAME
        _fit_in_subprocess(train_file, model_file, params)
        model = load_fasttext(model_file, step="quality train", how_to_get="")
        model_file.replace(out / MODEL_NAME)

    scores = predict_hq_proba(model, pa.concat_arrays([pos_held, neg_held]))
    truth = np.concatenate([np.ones(n_held, bool), np.zeros(n_held, bool)])
    accuracy = float(np.mean((scores >= 0.5) == truth))
    auc = roc_auc(truth, scores)

    config = {
        "labels": {"high_quality": HQ, "low_quality": LQ},
        "text_column": text_column,
        "positive": {"sources": [str(s) for s in pos_sources], "documents": len(pos),
                     "used": n, "train": n - n_held, "held_out": n_held},
        "negative": {"sources": [str(s) for s in neg_sources], "documents": len(neg),
                     "used": n, "train": n - n_held, "held_out": n_held},
        "params": {**params, "holdout": holdout},
        "metrics": {"held_out_accuracy": accuracy, "held_out_roc_auc": auc},
        "held_out_score_quantiles": {"levels": QUANTILE_LEVELS.round(2).tolist(),
                                     "scores": np.quantile(scores, QUANTILE_LEVELS).tolist()},
        "versions": _versions(),
    }
    model_path, config_path = out / MODEL_NAME, out / CONFIG_NAME
    config_path.write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    return TrainResult(model_path, config_path, accuracy, auc, config)


def read_documents(sources: list, text_column: str) -> pa.StringArray:
    """Normalised, non-empty documents of ``sources`` (Parquet inputs or ``.txt`` files)."""
    chunks = []
    for source in sources:
        source = str(source)
        if source.endswith(".txt"):
            path = Path(source).expanduser()
            if not path.is_file():
                raise FileNotFoundError(f"text file {source!r} does not exist")
            chunks.append(pa.array(path.read_text(encoding="utf-8").splitlines(), pa.string()))
            continue
        for path in discover_inputs([source]):
            names = pq.read_schema(path).names
            if text_column not in names:
                raise ValueError(f"{str(path)!r}: column {text_column!r} is missing (found: "
                                 f"{', '.join(names)}); pass the text column (--text-column)")
            column = pq.read_table(path, columns=[text_column]).column(text_column)
            chunks.extend(c.cast(pa.string()) for c in column.chunks)
    texts = normalize_text(pa.concat_arrays(chunks) if chunks else pa.array([], pa.string()))
    return texts.filter(pc.fill_null(pc.greater(pc.utf8_length(texts), 0), False))


def roc_auc(truth: np.ndarray, scores: np.ndarray) -> float:
    """ROC AUC as the Mann-Whitney U statistic: the chance that a random positive outscores a
    random negative, ties counting one half (average ranks)."""
    truth = np.asarray(truth, bool)
    n_pos, n_neg = int(truth.sum()), int((~truth).sum())
    if n_pos == 0 or n_neg == 0:
        raise ValueError("roc_auc needs at least one positive and one negative")
    _, inverse, counts = np.unique(scores, return_inverse=True, return_counts=True)
    average_rank = np.cumsum(counts) - (counts - 1) / 2.0  # 1-based rank shared by each tie
    ranks = average_rank[inverse]
    return float((ranks[truth].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def threshold_for_top_fraction(config: dict, fraction: float) -> float:
    """The ``hq`` score above which ``fraction`` of the held-out documents lie.

    The held-out set is half positives, half negatives, so this is the fraction of such a mix, not
    of the corpus the step later filters; it is fixed at training time, so filtering gives the
    same result for any batch size or sharding. With n held-out documents the threshold is
    interpolated between n scores: hold out a few hundred or more for a fine-grained fraction.
    """
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    stored = config["held_out_score_quantiles"]
    return float(np.interp(1.0 - fraction, stored["levels"], stored["scores"]))


_FIT = ("import json, sys, fasttext; a = json.loads(sys.argv[1]); "
        "fasttext.train_supervised(input=a['input'], verbose=0, **a['params'])"
        ".save_model(a['output'])")


def _fit_in_subprocess(train_file: Path, model_file: Path, params: dict) -> None:
    """Trains in a fresh Python process and saves the model to ``model_file``.

    fastText 0.9.3's trainer is not isolated from earlier work in the same process: after a few
    trainings and predictions on long documents, later trainings fail with "Encountered NaN" or
    drift slightly even with one thread and a fixed seed (seen here; see also
    marin-community/marin#177). A fresh interpreter per training (not ``multiprocessing``, which
    would re-import the caller's ``__main__``) avoids that for well under a second of start-up.
    """
    args = json.dumps({"input": str(train_file), "output": str(model_file), "params": params})
    done = subprocess.run([sys.executable, "-c", _FIT, args], capture_output=True, text=True)
    if done.returncode != 0:
        error = (done.stderr.strip().splitlines() or ["exit status %d" % done.returncode])[-1]
        raise RuntimeError(f"fastText training with {params} failed: {error}; a NaN means the "
                           "learning rate is too high for the data (lower lr)")


def _split(docs: pa.StringArray, n_held: int, rng: np.random.Generator):
    order = rng.permutation(len(docs))
    return docs.take(np.sort(order[n_held:])), docs.take(np.sort(order[:n_held]))


def _as_list(sources) -> list:
    return list(sources) if isinstance(sources, (list, tuple)) else [sources]


def _versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for package in ("crucible", "fasttext", "numpy", "pyarrow"):
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            versions[package] = "unknown"
    return versions

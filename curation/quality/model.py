"""The quality classifier's text form, its labels, and batched scoring with a loaded model.

Training (:mod:`curation.quality.train`) and the ``quality_classifier`` step both go through
:func:`normalize_text`, so the model sees documents the same way at both ends.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

HQ, LQ = "__label__hq", "__label__lq"
"""fastText labels of the high- and low-quality classes."""


def normalize_text(texts: pa.Array) -> pa.Array:
    """Lower-cases and puts every document on one line (whitespace runs become one space).

    fastText reads one example per line, so newlines must go; lower-casing makes the vocabulary
    case-insensitive, which matters with a few thousand training documents. Nulls stay null.
    """
    one_line = pc.replace_substring_regex(pc.utf8_lower(texts), pattern=r"\s+", replacement=" ")
    return pc.utf8_trim_whitespace(one_line)


def predict_hq_proba(model: Any, texts: pa.Array) -> np.ndarray:
    """Probability of ``__label__hq`` (float32, clipped to [0, 1]) for every string in ``texts``.

    ``texts`` must hold no nulls. One ``model.predict`` call over the list: the single-string form
    breaks under NumPy 2 (fasttext 0.9.3, see PITFALLS.md). The model must have exactly the two
    labels ``hq`` and ``lq``; both are asked for (k=2), so the ``hq`` probability is read from
    whichever position it comes back in.
    """
    if texts.null_count:
        raise ValueError("predict_hq_proba: texts must not contain nulls")
    if len(texts) == 0:
        return np.zeros(0, np.float32)
    labels, probs = model.predict(normalize_text(texts).to_pylist(), k=2)
    labels = np.asarray(labels, dtype=object)  # (n, 2)
    probs = np.asarray(probs, dtype=np.float32)  # (n, 2)
    if labels.shape != (len(texts), 2):
        raise RuntimeError(f"quality model returned labels of shape {labels.shape} for "
                           f"{len(texts)} texts; it must have exactly the labels {HQ} and {LQ}")
    hq = np.where(labels[:, 0] == HQ, probs[:, 0], probs[:, 1])
    return np.clip(hq, 0.0, 1.0).astype(np.float32, copy=False)


def check_labels(model: Any, path: str) -> None:
    """Raises ValueError unless ``model`` is a two-class ``hq``/``lq`` classifier."""
    labels = sorted(model.get_labels())
    if labels != sorted([HQ, LQ]):
        raise ValueError(f"{path!r} is not a quality classifier: its labels are "
                         f"{', '.join(labels[:8])}, expected {HQ} and {LQ} (train one with "
                         "`crucible quality train`)")

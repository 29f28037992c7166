"""Model-based quality filtering (DCLM-style): a fastText classifier scores every document.

Adds ``quality`` (float32, the classifier's probability that the document is high quality, in
[0, 1]) to every row, kept or rejected. Filtering is optional and takes one of two forms:

* ``min_score``: keep rows with ``quality >= min_score``;
* ``keep_top_fraction``: keep rows above the score that the top fraction of the classifier's
  held-out documents reach. The threshold comes from the score quantiles that ``crucible quality
  train`` stores in ``config.json`` next to the model, so it is fixed before the job starts and
  the result does not depend on batch size, sharding or worker count (a per-batch top fraction
  would). The held-out set is half positives, half negatives: the fraction is of that mix, not of
  the corpus being filtered; the job's stats say what fraction of the corpus passed.

Rows failing the threshold are rejected as ``low_quality``. Text with no non-whitespace
characters (empty, blank or null) is not sent to the model: its ``quality`` is null, and it is
rejected as ``low_quality`` whenever a threshold is set (there is nothing to judge as high
quality; fastText would score the empty line with its class prior).

Training a classifier, then using it (positives from a reference corpus, negatives from the rows
an earlier curation job rejected)::

    crucible quality train --positive data/reference/wiki/ \\
        --negative out/job1/rejected/ --text-column text --output models/quality/

    # job.yaml
    input:
      paths: [data/raw/]
    output:
      dir: out/job2/
    pipeline:
      - step: normalize
      - step: exact_dedup
      - step: language_id
        keep_languages: [en]
      - step: quality_classifier
        model_path: models/quality/model.bin
        keep_top_fraction: 0.3      # or: min_score: 0.5
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from curation.models import load_fasttext
from curation.quality.model import check_labels, predict_hq_proba
from curation.quality.train import CONFIG_NAME, threshold_for_top_fraction
from curation.registry import register
from curation.step import Filter, FilterResult

TRAIN_COMMAND = ("crucible quality train --positive REFERENCE --negative REJECTED "
                 "--output DIR")


@dataclass
class QualityClassifierConfig:
    """Options of the ``quality_classifier`` step. With neither ``min_score`` nor
    ``keep_top_fraction`` the step only annotates ``quality``."""

    model_path: str = ""
    """``model.bin`` written by ``crucible quality train``; its ``config.json`` must sit next to
    it when ``keep_top_fraction`` is used. Empty: the step is disabled (rows pass through
    untouched), which is how the default pipeline carries it until a model is trained."""

    min_score: float | None = None
    """Keep rows whose ``quality`` is at least this, in [0, 1]."""

    keep_top_fraction: float | None = None
    """Keep rows scoring above the held-out documents' top this fraction, in (0, 1]; the
    threshold is read from ``config.json`` at setup."""

    def __post_init__(self) -> None:
        if not self.model_path and (self.min_score is not None
                                    or self.keep_top_fraction is not None):
            raise ValueError(f"model_path is required to filter by quality: train a classifier "
                             f"with `{TRAIN_COMMAND}` and set model_path to DIR/model.bin")
        if self.min_score is not None and self.keep_top_fraction is not None:
            raise ValueError("set min_score or keep_top_fraction, not both")
        if self.min_score is not None and not 0.0 <= self.min_score <= 1.0:
            raise ValueError(f"min_score must be in [0, 1], got {self.min_score}")
        if self.keep_top_fraction is not None and not 0.0 < self.keep_top_fraction <= 1.0:
            raise ValueError(f"keep_top_fraction must be in (0, 1], got {self.keep_top_fraction}")


@register
class QualityClassifier(Filter):
    """Scores each document with a fastText quality classifier and keeps those above a threshold.

    The model is loaded in :meth:`setup` (once per worker) and never pickled, so the step can be
    sent to worker processes before or after setup.
    """

    name: ClassVar[str] = "quality_classifier"
    Config: ClassVar[type] = QualityClassifierConfig
    transient: ClassVar[dict[str, Any]] = {"_model": None}  # fastText models do not pickle

    def __init__(self, config: QualityClassifierConfig | None = None) -> None:
        super().__init__(config)
        self._model: Any = None
        self.threshold: float | None = self.config.min_score
        """The score a row needs to be kept (None: annotate only); known after setup."""

    @property
    def active(self) -> bool:
        return bool(self.config.model_path)

    def setup(self) -> None:
        """Loads the model and, for ``keep_top_fraction``, its threshold from ``config.json``."""
        path = self.config.model_path
        if not path:
            return  # disabled
        self._model = load_fasttext(
            path, step=self.name,
            how_to_get=f"train one with `{TRAIN_COMMAND}` and set model_path to DIR/model.bin")
        try:
            check_labels(self._model, path)
        except ValueError as exc:
            raise ValueError(f"step {self.name!r}: {exc}") from exc
        fraction = self.config.keep_top_fraction
        if fraction is not None:
            config_path = Path(path).expanduser().parent / CONFIG_NAME
            if not config_path.is_file():
                raise FileNotFoundError(
                    f"step {self.name!r}: keep_top_fraction needs {str(config_path)!r} (the "
                    f"held-out score quantiles written by `{TRAIN_COMMAND}` next to model.bin); "
                    "put it back or use min_score")
            self.threshold = threshold_for_top_fraction(json.loads(config_path.read_text()),
                                                        fraction)

    def decide(self, batch: pa.RecordBatch) -> FilterResult:
        """Scores every row with text; rejects rows under the threshold when one is set."""
        if not self.active:
            return FilterResult(keep=np.ones(batch.num_rows, dtype=bool))
        if self._model is None:
            raise RuntimeError(f"step {self.name!r}: setup() must run before decide() (iterating "
                               "the step over batches does it)")
        n = batch.num_rows
        text = batch.column("text")
        has_text = pc.fill_null(pc.greater(pc.utf8_length(pc.utf8_trim_whitespace(text)), 0),
                                False)
        has_text_np = has_text.to_numpy(zero_copy_only=False)
        score = np.zeros(n, dtype=np.float32)
        score[has_text_np] = predict_hq_proba(self._model, text.filter(has_text))
        quality = pa.array(score, pa.float32(), mask=~has_text_np)
        columns = {"quality": quality}
        if self.threshold is None:
            return FilterResult(keep=np.ones(n, dtype=bool), columns=columns)
        keep = has_text_np & (score >= self.threshold)
        return FilterResult(keep=keep, reason="low_quality", columns=columns)

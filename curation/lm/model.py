"""A perplexity model on disk: SentencePiece pieces + a KenLM-readable ARPA n-gram model.

``train_lm`` writes ``out_dir/{sp.model, lm.arpa, config.json}``; ``load_lm`` reads them back as a
:class:`PerplexityModel` that scores documents the way CCNet does:
``ppl = 10 ** (-sum(log10 p) / (pieces + lines))``, each normalised non-empty line scored as one
sentence (``<s> ... </s>``, so every line adds one predicted ``</s>``). Documents with no
non-empty line have no perplexity (NaN).
"""

from __future__ import annotations

import json
import platform
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import numpy as np

from curation.lm import kneser_ney, tokenize

SP_MODEL, ARPA, CONFIG = "sp.model", "lm.arpa", "config.json"
BUCKET_PERCENTILES = (30, 60)
TRAIN_COMMAND = "crucible lm train --input FILES --output {dir}"


def line_words(sp: Any, lines: list[str]) -> list[list[str]]:
    """Pieces of each line as LM words (a piece holding whitespace splits, as ARPA requires)."""
    return [" ".join(pieces).split() for pieces in tokenize.encode_lines(sp, lines)]


def train_lm(texts: Iterable[str], out_dir: str | Path, order: int = 5,
             vocab_size: int = tokenize.DEFAULT_VOCAB_SIZE, prune: Sequence[int] | None = None,
             reference_texts: Iterable[str] | None = None) -> dict[str, Any]:
    """Trains the piece model and the n-gram model on ``texts``; returns the written config.

    ``reference_texts`` give the perplexity distribution whose 30th/60th percentiles split
    ``head``/``middle``/``tail`` (default: the training texts, whose perplexities are lower than
    unseen text of the same quality: pass a sample of the data you will filter, as CCNet does).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    texts = list(texts)
    lines = [line for text in texts for line in tokenize.document_lines(text)]
    if not lines:
        raise ValueError("train_lm: the training texts hold no non-empty line")
    vocab = tokenize.capped_vocab_size(lines, vocab_size)
    with tempfile.TemporaryDirectory(dir=out) as tmp:
        model = tokenize.train_sentencepiece(lines, Path(tmp) / "sp", vocab)
        model.replace(out / SP_MODEL)
    sp = tokenize.load_sentencepiece(out / SP_MODEL)
    lm = kneser_ney.estimate(line_words(sp, lines), order=order, prune=prune)
    kneser_ney.write_arpa(lm, out / ARPA)
    scorer = PerplexityModel(out, config={"order": order})
    reference = scorer.perplexity(texts if reference_texts is None else list(reference_texts))
    reference = reference[~np.isnan(reference)]
    cutoffs = np.percentile(reference, BUCKET_PERCENTILES).tolist() if len(reference) else None
    config = {
        "order": order,
        "vocab_size_requested": vocab_size,
        "vocab_size": sp.get_piece_size(),
        "lm_vocab_size": len(lm.vocab),
        "ngram_counts": lm.num_grams(),
        "discounts": lm.discounts.round(6).tolist(),
        "prune": list(prune) if prune is not None else [0] * order,
        "training": {"documents": len(texts), "lines": len(lines)},
        "bucket_percentiles": list(BUCKET_PERCENTILES),
        "bucket_cutoffs": cutoffs,
        "reference_documents": int(len(reference)),
        "versions": _versions(),
    }
    tmp_config = out / (CONFIG + ".tmp")
    tmp_config.write_text(json.dumps(config, indent=2) + "\n")
    tmp_config.replace(out / CONFIG)
    return config


def _versions() -> dict[str, str]:
    """Versions of what made the model (the kenlm module has no version attribute)."""
    import sentencepiece

    try:
        kenlm_version = version("kenlm")
    except PackageNotFoundError:
        kenlm_version = "unknown"
    return {"python": platform.python_version(), "numpy": np.__version__,
            "sentencepiece": sentencepiece.__version__, "kenlm": kenlm_version}


@dataclass
class PerplexityModel:
    """A loaded model directory (see :func:`load_lm`)."""

    path: Path
    config: dict[str, Any]
    sp: Any = field(init=False, repr=False)
    """The SentencePiece processor (``sp.model``)."""
    lm: Any = field(init=False, repr=False)
    """The ``kenlm.Model`` of ``lm.arpa``."""

    def __post_init__(self) -> None:
        import kenlm

        self.sp = tokenize.load_sentencepiece(self.path / SP_MODEL)
        self.lm = kenlm.Model(str(self.path / ARPA))

    def perplexity(self, texts: Sequence[str | None]) -> np.ndarray:
        """CCNet perplexity of each document (float64; NaN where it has no non-empty line)."""
        per_doc = [tokenize.document_lines(t) for t in texts]
        flat = [line for lines in per_doc for line in lines]
        words = line_words(self.sp, flat)
        score = self.lm.score
        log10 = np.array([score(" ".join(w), bos=True, eos=True) for w in words])
        length = np.array([len(w) + 1 for w in words], dtype=np.float64)
        doc = np.repeat(np.arange(len(texts)), [len(lines) for lines in per_doc])
        total = np.bincount(doc, weights=log10, minlength=len(texts))
        count = np.bincount(doc, weights=length, minlength=len(texts))
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(count > 0, 10.0 ** (-total / count), np.nan)

    def buckets(self, ppl: np.ndarray) -> np.ndarray:
        """``head`` / ``middle`` / ``tail`` per perplexity (object array; None for NaN)."""
        cutoffs = self.config.get("bucket_cutoffs")
        if cutoffs is None:
            raise ValueError(f"model {self.path}: config.json has no bucket_cutoffs (no reference "
                             f"documents at training time); retrain with {TRAIN_COMMAND}"
                             .format(dir=self.path))
        names = np.array(["head", "middle", "tail"], dtype=object)
        out = names[np.searchsorted(np.asarray(cutoffs), np.nan_to_num(ppl, nan=0.0))]
        out[np.isnan(ppl)] = None
        return out


def load_lm(out_dir: str | Path) -> PerplexityModel:
    """Loads a directory written by :func:`train_lm`; a missing file is named with the fix."""
    path = Path(out_dir)
    for name in (SP_MODEL, ARPA, CONFIG):
        if not (path / name).is_file():
            raise FileNotFoundError(
                f"perplexity model {str(path)!r}: {path / name} is missing; train the model "
                f"with `{TRAIN_COMMAND.format(dir=path)}`")
    config = json.loads((path / CONFIG).read_text())
    return PerplexityModel(path, config)

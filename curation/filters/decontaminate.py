"""Decontamination: removes (or flags) training documents that share a long n-gram with an
evaluation set, as GPT-3 did (Brown et al. 2020, appendix C: 13-gram overlap)::

    - step: decontaminate
      eval_sets: [gsm8k=evals/gsm8k/test.jsonl, evals/mmlu_test.parquet]
      mode: remove          # or flag

Both sides go through the compiled shingle hasher of MinHash dedup
(:func:`curation.dedup.minhash.shingle_hashes`, the whole text column at once; specified in
:mod:`curation.dedup.reference`: tokens split at ASCII whitespace and punctuation, ASCII
lower-cased, a shingle's key the xxHash64 of its tokens joined by one space), so case,
punctuation and whitespace do not hide a copy. With ``fold_unicode_punctuation`` (the default)
every Unicode punctuation, symbol and separator character is first replaced by a space on both
sides, so ``Janet’s`` (curly apostrophe) matches ``Janet's`` and a no-break space matches a space.

Which eval n-grams are looked for, per item of ``t`` tokens:

* ``t >= ngram``: every ``ngram``-token window of the item;
* ``min_item_words <= t < ngram``: the whole item, as one ``t``-token n-gram (GPT-3's rule for
  items shorter than 13 words). Documents are shingled once more per distinct such length;
* ``t < min_item_words``: not looked for. Such items are too short to tell a leak from a common
  phrase (GPT-3's overlap analysis used n-grams of 8 to 13 words).

A document is contaminated when at least one of its n-grams is an eval n-gram. It gets
``decontam_hits`` (int32, how many of its n-gram windows matched) and ``decontam_items``
(list<string>, the matched items as ``<set>:<row>``, sorted) on every row, and in ``remove``
mode it is rejected as ``decontaminate:eval_overlap``. The whole document goes, not only the
span around the match as GPT-3 did: a document quoting a benchmark question is rarely worth the
risk. Keys are 64-bit, so a false match by hash collision needs ~10^19 / (eval n-grams) training
n-grams; at 10^5 eval n-grams that is one per 10^14 training n-grams.

Which eval items were found where: after a job, :func:`contamination_report` reads the
``decontam_items`` column of the curated and rejected files::

    from curation.filters.decontaminate import contamination_report
    contamination_report("out/")  # {"gsm8k": {17: ["doc-42", ...]}, ...}
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from curation.dedup.minhash import shingle_hashes
from curation.io.reader import ID, TEXT
from curation.registry import register
from curation.step import Filter, FilterResult

HITS, ITEMS = "decontam_hits", "decontam_items"
MODES = ("remove", "flag")
EVAL_FORMATS = (".jsonl", ".json", ".txt", ".parquet")
_NAMED = re.compile(r"^([\w.-]+)=(.+)$")
# Non-ASCII punctuation, symbols and separators: [^ASCII and not-P] is P minus ASCII (ASCII ones
# are token boundaries already, and leaving them out makes the regex 5x faster).
_UNICODE_BOUNDARY = r"[^\x00-\x7f\P{P}]|[^\x00-\x7f\P{S}]|[^\x00-\x7f\P{Z}]"
_PREFILTER_BITS = (12, 24)


@dataclass
class DecontaminateConfig:
    """Options of the ``decontaminate`` step."""

    eval_sets: list[str] = field(default_factory=list)
    """Evaluation files: ``.jsonl`` (one JSON object a line), ``.json`` (a JSON array of objects,
    or JSON Lines), ``.txt`` (one item a line) or ``.parquet``. An entry ``name=path`` names the
    set; otherwise the set is named after the file stem (``test.jsonl`` -> ``test``). Item ids
    are ``<set>:<row>``, row being the 0-based record, array element, line or Parquet row."""

    fields: list[str] = field(default_factory=lambda: ["question", "text", "prompt"])
    """Where the item text is in a JSON or Parquet eval file: the first of these that the file
    has (a key of any record, a column) is used for the whole file; rows where it is null or
    absent are not items. Ignored for ``.txt``."""

    ngram: int = 13
    """Length in tokens of the n-grams compared (GPT-3: 13)."""

    min_item_words: int = 8
    """Items with fewer tokens are not looked for; items with at least this many but fewer than
    ``ngram`` are matched as one whole-item n-gram (see the module docstring)."""

    mode: str = "remove"
    """``remove``: reject contaminated documents (reason ``eval_overlap``); ``flag``: keep every
    row. Both add ``decontam_hits`` and ``decontam_items``."""

    fold_unicode_punctuation: bool = True
    """Treat every Unicode punctuation, symbol and separator character (curly quotes, dashes,
    no-break spaces) as a token boundary, as ASCII ones are, on both sides."""

    def __post_init__(self) -> None:
        if not self.eval_sets:
            raise ValueError("eval_sets is empty; list at least one evaluation file")
        if not self.fields or any(not isinstance(f, str) or not f for f in self.fields):
            raise ValueError(f"fields must be non-empty strings, got {self.fields!r}")
        if self.ngram < 1:
            raise ValueError(f"ngram must be >= 1, got {self.ngram}")
        if self.min_item_words < 1:
            raise ValueError(f"min_item_words must be >= 1, got {self.min_item_words}")
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}, got {self.mode!r}")
        eval_set_paths(self.eval_sets)


def eval_set_paths(entries: list[str]) -> dict[str, Path]:
    """Set name -> file for the ``eval_sets`` option, checking that the files exist."""
    sets: dict[str, Path] = {}
    for entry in entries:
        named = _NAMED.match(entry)
        name, path = (named[1], Path(named[2])) if named else (Path(entry).stem, Path(entry))
        if path.suffix.lower() not in EVAL_FORMATS:
            raise ValueError(f"eval set {str(path)!r}: unsupported file type {path.suffix!r}; "
                             f"use one of {', '.join(EVAL_FORMATS)}")
        if not path.is_file():
            raise ValueError(f"eval set {str(path)!r} does not exist")
        if name in sets:
            raise ValueError(f"two eval sets are named {name!r} ({sets[name]} and {path}); "
                             "name them apart with name=path entries")
        sets[name] = path
    return sets


def read_eval_items(path: Path, fields: list[str]) -> list[str | None]:
    """The item texts of one eval file, one per row (None where the row holds no item)."""
    suffix = path.suffix.lower()
    if suffix == ".txt":
        return [line if line.strip() else None
                for line in path.read_text(encoding="utf-8").splitlines()]
    if suffix == ".parquet":
        names = pq.read_schema(path).names
        column = _pick_field(path, fields, names)
        values = pq.read_table(path, columns=[column]).column(column)
        if not pa.types.is_string(values.type) and not pa.types.is_large_string(values.type):
            raise ValueError(f"eval set {str(path)!r}: column {column!r} is {values.type}, "
                             "expected strings; choose another with fields")
        return values.to_pylist()
    records = _json_records(path)
    keys = {key for record in records if isinstance(record, dict) for key in record}
    column = _pick_field(path, fields, keys)
    items = []
    for row, record in enumerate(records):
        value = record.get(column) if isinstance(record, dict) else None
        if value is not None and not isinstance(value, str):
            raise ValueError(f"eval set {str(path)!r}: row {row} field {column!r} is a "
                             f"{type(value).__name__}, expected a string")
        items.append(value)
    return items


def _pick_field(path: Path, fields: list[str], present) -> str:
    for name in fields:
        if name in present:
            return name
    raise ValueError(f"eval set {str(path)!r}: none of the fields {', '.join(fields)} is present "
                     f"(found: {', '.join(sorted(present)) or 'nothing'}); set the step's fields")


def _json_records(path: Path) -> list[Any]:
    text = path.read_text(encoding="utf-8")
    if text.lstrip().startswith("["):
        try:
            return json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"eval set {str(path)!r}: invalid JSON ({exc})") from exc
    records = []
    for number, line in enumerate(text.splitlines(), start=1):
        if line.strip():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise ValueError(f"eval set {str(path)!r} line {number}: invalid JSON ({exc})"
                                 ) from exc
    return records


def fold_unicode_punctuation(text: pa.Array) -> pa.Array:
    """Replaces non-ASCII punctuation, symbols and separators (Unicode categories P, S, Z) with
    spaces, making them token boundaries as their ASCII counterparts are."""
    return pc.replace_substring_regex(text, _UNICODE_BOUNDARY, " ")


@dataclass
class MatchTable:
    """Eval n-gram keys of one length, with the items of each and a prefilter for lookups."""

    keys: np.ndarray
    """(K,) uint64, sorted and unique."""
    starts: np.ndarray
    """(K+1,) int64: the items of ``keys[k]`` are ``items[starts[k]:starts[k+1]]``."""
    items: np.ndarray
    """(P,) int64 item indices, unique per key."""
    prefilter: np.ndarray
    """(2**b,) bool, True at ``key & (2**b - 1)`` for every key, ~64 slots a key. Nearly every
    training n-gram misses it, and gathering from it costs a fifteenth of a binary search."""

    @classmethod
    def build(cls, hashes: np.ndarray, items: np.ndarray) -> MatchTable:
        order = np.lexsort((items, hashes))
        hashes, items = hashes[order], items[order]
        new = np.ones(len(hashes), dtype=bool)
        new[1:] = (hashes[1:] != hashes[:-1]) | (items[1:] != items[:-1])
        hashes, items = hashes[new], items[new]
        keys, first = np.unique(hashes, return_index=True)
        bits = int(np.clip(np.ceil(np.log2(64 * len(keys))), _PREFILTER_BITS[0],
                           _PREFILTER_BITS[1]))
        prefilter = np.zeros(1 << bits, dtype=bool)
        prefilter[_slots(keys, bits)] = True
        return cls(keys, np.append(first, len(hashes)).astype(np.int64), items, prefilter)

    def lookup(self, hashes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The positions in ``hashes`` that hold a key, and which key (index into ``keys``)."""
        bits = len(self.prefilter).bit_length() - 1
        candidate = np.flatnonzero(self.prefilter[_slots(hashes, bits)])
        pos = np.minimum(np.searchsorted(self.keys, hashes[candidate]), len(self.keys) - 1)
        hit = self.keys[pos] == hashes[candidate]
        return candidate[hit], pos[hit]

    def expand(self, key: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The items of every key in ``key``, concatenated, and how many each key has."""
        lengths = self.starts[key + 1] - self.starts[key]
        first = np.repeat(self.starts[key] - np.cumsum(lengths) + lengths, lengths)
        return self.items[first + np.arange(lengths.sum())], lengths


def _slots(hashes: np.ndarray, bits: int) -> np.ndarray:
    return (hashes & np.uint64((1 << bits) - 1)).astype(np.intp)


@dataclass
class EvalIndex:
    """Every eval item's n-gram keys, grouped by n-gram length, and the items' ids."""

    item_ids: pa.Array
    """``<set>:<row>`` of every item, in set order then row order."""
    tables: dict[int, MatchTable]
    """n-gram length in tokens -> keys of that length (``ngram``, and each short-item length)."""
    fold: bool
    """Whether Unicode punctuation is folded (``fold_unicode_punctuation``)."""

    @classmethod
    def build(cls, config: DecontaminateConfig) -> EvalIndex:
        ids: list[str] = []
        texts: list[str | None] = []
        set_of: list[int] = []
        sets = eval_set_paths(config.eval_sets)
        for s, (name, path) in enumerate(sets.items()):
            items = read_eval_items(path, config.fields)
            ids.extend(f"{name}:{row}" for row in range(len(items)))
            texts.extend(items)
            set_of.extend([s] * len(items))
        text = pa.array(texts, pa.string())
        if config.fold_unicode_punctuation:
            text = fold_unicode_punctuation(text)
        n_tokens = np.diff(shingle_hashes(text, 1)[0])
        indexed = n_tokens >= config.min_item_words
        per_set = np.bincount(np.asarray(set_of, dtype=np.int64)[indexed], minlength=len(sets))
        for (name, path), count in zip(sets.items(), per_set):
            if count == 0:
                raise ValueError(f"eval set {str(path)!r}: no item has {config.min_item_words} "
                                 "or more words; check fields, or lower min_item_words")
        offsets, hashes = shingle_hashes(text, config.ngram)
        item_of = np.repeat(np.arange(len(texts)), np.diff(offsets))
        # Items shorter than ngram have one shingle: the whole item at its own length.
        length_of = np.minimum(n_tokens, config.ngram)
        tables = {}
        for length in np.unique(length_of[indexed]).tolist():
            take = (indexed & (length_of == length))[item_of]
            tables[length] = MatchTable.build(hashes[take], item_of[take])
        return cls(pa.array(ids, pa.string()), tables, config.fold_unicode_punctuation)

    def match(self, text: pa.Array) -> tuple[np.ndarray, pa.ListArray]:
        """Per document: how many of its n-gram windows are eval n-grams (int32), and the eval
        items they belong to (list<string>, sorted, unique)."""
        if self.fold:
            text = fold_unicode_punctuation(text)
        n = len(text)
        hits = np.zeros(n, dtype=np.int64)
        doc_parts, item_parts = [], []
        for length, table in self.tables.items():
            offsets, hashes = shingle_hashes(text, length)
            where, key = table.lookup(hashes)
            if not len(where):
                continue
            doc = np.searchsorted(offsets, where, side="right") - 1  # doc of each matched window
            hits += np.bincount(doc, minlength=n)
            pair = np.unique(doc * len(table.keys) + key)
            items, per_key = table.expand(pair % len(table.keys))
            doc_parts.append(np.repeat(pair // len(table.keys), per_key))
            item_parts.append(items)
        n_items = len(self.item_ids)
        code = np.unique(np.concatenate([np.empty(0, np.int64)] + [
            d * n_items + i for d, i in zip(doc_parts, item_parts)]))
        list_offsets = np.searchsorted(code // n_items, np.arange(n + 1)).astype(np.int32)
        items = pa.ListArray.from_arrays(pa.array(list_offsets),
                                         self.item_ids.take(pa.array(code % n_items)))
        return hits.astype(np.int32), items


@register
class Decontaminate(Filter):
    """Rejects (or flags) documents sharing an n-gram with an evaluation set.

    The eval sets are read and indexed in :meth:`setup`; the index is plain arrays, so the step
    pickles before and after setup (a set-up step carries its index to the worker).
    """

    name: ClassVar[str] = "decontaminate"
    Config: ClassVar[type] = DecontaminateConfig

    def __init__(self, config: DecontaminateConfig | None = None) -> None:
        super().__init__(config)
        self.index: EvalIndex | None = None

    def setup(self) -> None:
        self.index = EvalIndex.build(self.config)

    def decide(self, batch: pa.RecordBatch) -> FilterResult:
        if self.index is None:
            raise RuntimeError(f"step {self.name!r}: setup() must run before decide() (iterating "
                               "the step over batches does it)")
        hits, items = self.index.match(batch.column(TEXT))
        columns = {HITS: pa.array(hits, pa.int32()), ITEMS: items}
        keep = np.ones(len(hits), dtype=bool) if self.config.mode == "flag" else hits == 0
        return FilterResult(keep=keep, reason="eval_overlap", columns=columns)


def contamination_report(output_dir: str | Path) -> dict[str, dict[int, list[str]]]:
    """{eval set: {item row: [ids of the documents containing it]}} for a finished job,
    read from the ``decontam_items`` column of its curated and rejected Parquet files."""
    out = Path(output_dir)
    if not out.is_dir():
        raise FileNotFoundError(f"job output {str(out)!r} does not exist")
    found: dict[str, dict[int, set[str]]] = {}
    for path in sorted(out.glob("*.parquet")) + sorted((out / "rejected").rglob("*.parquet")):
        if ITEMS not in pq.read_schema(path).names:
            continue
        table = pq.read_table(path, columns=[ID, ITEMS])
        lists = table.column(ITEMS).combine_chunks()
        docs = table.column(ID).combine_chunks().take(pc.list_parent_indices(lists))
        for item, doc in zip(pc.list_flatten(lists).to_pylist(), docs.to_pylist()):
            name, row = item.rsplit(":", 1)
            found.setdefault(name, {}).setdefault(int(row), set()).add(doc)
    return {name: {row: sorted(docs) for row, docs in sorted(rows.items())}
            for name, rows in sorted(found.items())}

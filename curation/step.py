"""The step contract: every pipeline stage is a small class over Arrow record batches.

A step turns ``Iterator[pa.RecordBatch]`` into ``Iterator[pa.RecordBatch]`` (``Step.__call__``),
one batch at a time, so memory stays flat for any shard size. Three kinds:

* :class:`Filter` only decides: ``decide(batch)`` returns a keep mask and, per rejected row, the
  rule that rejected it. The base class applies the mask, counts rows per reason and hands the
  rejected rows (with a ``reason`` column ``"<step>:<rule>"``) to the shard's reject sink.
  Filters may also return signal columns (``columns``) that are added to every row, kept or
  rejected, so users can re-filter later without recomputing.
* :class:`Annotator` adds or replaces columns (``lang``, ``pii_counts``, a normalised ``text``).
* :class:`Step` itself, for anything else (global passes such as exact dedup).

Steps see the canonical columns ``id`` (string) and ``text`` (utf8); the reader maps the user's
column names onto them. Options are a dataclass ``Config`` per step, built from YAML.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

REASON_COLUMN = "reason"


@dataclass
class EmptyConfig:
    """A step without options."""


@dataclass
class FilterResult:
    """What a filter decided for one batch.

    Attributes:
        keep: one bool per row (numpy array or Arrow BooleanArray); nulls count as reject.
        reason: the rule that rejected each row (strings; ignored where ``keep`` is true), or one
            string for every rejected row.
        columns: signal columns to add to the batch, one value per row.
    """

    keep: np.ndarray | pa.Array
    reason: np.ndarray | pa.Array | str | None = None
    columns: dict[str, pa.Array | np.ndarray] = field(default_factory=dict)


class StepCounts:
    """Rows in, rows out and rejected rows per reason for one step on one shard."""

    def __init__(self) -> None:
        self.rows_in = 0
        self.rows_out = 0
        self.rejected: dict[str, int] = {}

    def as_dict(self) -> dict[str, Any]:
        return {"rows_in": self.rows_in, "rows_out": self.rows_out,
                "rejected": dict(sorted(self.rejected.items()))}


class RejectSink:
    """Receives rejected rows; the pipeline runner writes them to ``rejected/``."""

    def write(self, batch: pa.RecordBatch) -> None:  # pragma: no cover - interface
        raise NotImplementedError


class ListSink(RejectSink):
    """Keeps rejected batches in memory (tests, small jobs)."""

    def __init__(self) -> None:
        self.batches: list[pa.RecordBatch] = []

    def write(self, batch: pa.RecordBatch) -> None:
        self.batches.append(batch)

    def table(self) -> pa.Table | None:
        return pa.Table.from_batches(self.batches) if self.batches else None


class Step:
    """Base class of every pipeline step.

    Subclasses set ``name`` (the registry key and the prefix of reject reasons) and ``Config``
    (a dataclass of options), and override :meth:`process` or the kind-specific hook.
    """

    name: ClassVar[str] = ""
    Config: ClassVar[type] = EmptyConfig
    transient: ClassVar[dict[str, Any]] = {}
    """Attributes that do not pickle (models loaded in ``setup``) and the value a pickled copy
    gets instead; such a copy runs ``setup`` again in the worker that unpickles it."""

    def __init__(self, config: Any | None = None) -> None:
        self.config = config if config is not None else self.Config()
        self.counts = StepCounts()
        self.sink: RejectSink = ListSink()
        self._ready = False

    @property
    def active(self) -> bool:
        """False when the step's options switch it off (a model step without a model): it
        then passes every batch through unchanged."""
        return True

    def setup(self) -> None:
        """Loads models or tables once per worker process, before the first batch."""

    def process(self, batch: pa.RecordBatch) -> pa.RecordBatch:
        """Transforms one batch (the default passes it through)."""
        return batch

    def __call__(self, batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        if not self._ready:
            self.setup()
            self._ready = True
        for batch in batches:
            self.counts.rows_in += batch.num_rows
            out = self.process(batch)
            self.counts.rows_out += out.num_rows
            if out.num_rows:
                yield out

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        if self.transient:
            state.update({k: copy.copy(v) for k, v in self.transient.items()})
            state["_ready"] = False
        return state


class Annotator(Step):
    """Adds or replaces columns; never drops rows."""

    def annotate(self, batch: pa.RecordBatch) -> dict[str, pa.Array | np.ndarray]:
        """Returns the columns to set on the batch, one value per row."""
        raise NotImplementedError

    def process(self, batch: pa.RecordBatch) -> pa.RecordBatch:
        return set_columns(batch, self.annotate(batch))


class Filter(Step):
    """Decides keep/reject per row; the base class applies, counts and writes the rejects."""

    def decide(self, batch: pa.RecordBatch) -> FilterResult:
        """Returns the keep mask, per-row reasons and optional signal columns."""
        raise NotImplementedError

    def process(self, batch: pa.RecordBatch) -> pa.RecordBatch:
        result = self.decide(batch)
        batch = set_columns(batch, result.columns)
        keep = _as_bool_array(result.keep, batch.num_rows, self.name)
        n_reject = batch.num_rows - pc.sum(keep).as_py() if batch.num_rows else 0
        if n_reject == 0:
            return batch
        reject = pc.invert(keep)
        reasons = self._reasons(result.reason, reject, n_reject)
        for item in pc.value_counts(reasons).to_pylist():
            reason, count = item["values"], item["counts"]
            self.counts.rejected[reason] = self.counts.rejected.get(reason, 0) + count
        self.sink.write(set_columns(batch.filter(reject), {REASON_COLUMN: reasons}))
        return batch.filter(keep)

    def _reasons(self, reason, reject: pa.Array, n_reject: int) -> pa.Array:
        """``"<step>:<rule>"`` for every rejected row, computed with Arrow kernels."""
        if reason is None or isinstance(reason, str):
            return pa.repeat(pa.scalar(f"{self.name}:{reason or 'rejected'}"), n_reject)
        rules = reason if isinstance(reason, pa.Array) else pa.array(reason, pa.string())
        rules = pc.fill_null(rules.filter(reject).cast(pa.string()), "rejected")
        return pc.binary_join_element_wise(f"{self.name}:", rules, "")


def _as_bool_array(keep, n: int, step: str) -> pa.BooleanArray:
    arr = keep if isinstance(keep, pa.Array) else pa.array(np.asarray(keep, dtype=bool))
    if len(arr) != n:
        raise ValueError(f"step {step!r} returned a keep mask of {len(arr)} rows for a batch of {n}")
    return pc.fill_null(arr, False)


def set_columns(batch: pa.RecordBatch, columns: dict[str, Any]) -> pa.RecordBatch:
    """Returns ``batch`` with ``columns`` added, or replaced where the name exists."""
    if not columns:
        return batch
    names = list(batch.schema.names)
    arrays = list(batch.columns)
    for name, values in columns.items():
        arr = values if isinstance(values, pa.Array) else pa.array(values)
        if len(arr) != batch.num_rows:
            raise ValueError(f"column {name!r} has {len(arr)} values for {batch.num_rows} rows")
        if name in names:
            arrays[names.index(name)] = arr
        else:
            names.append(name)
            arrays.append(arr)
    return pa.RecordBatch.from_arrays(arrays, names=names)

"""``crucible tokenize --kind sft|preference``: chat rows in the common formats → tokenized
examples with loss masks, as Parquet, through the one chat template (:mod:`curation.tokens.chat`).

    OUT/<input stem>.parquet            one shard per input file (written to a temp file, renamed)
    OUT/rejected/<input stem>.parquet   rows that made no example, with ``reason`` and the row
    OUT/manifest.json                   formats, tokenizer hash, counts per file, config, versions

SFT shards hold ``input_ids`` (int32), ``loss_mask`` (uint8), ``num_tokens`` and
``num_trainable``. ``loss_mask[i] = 1`` says token ``i`` is a prediction target, so a trainer
shifts both the same way: labels ``input_ids[1:]`` weighted by ``loss_mask[1:]`` (``mask[0]``, on
BOS, is always 0). Preference shards hold ``prompt_ids`` (ending in the generation prompt),
``chosen_ids`` and ``rejected_ids`` (each reply and its ``<|end|>``, all of it trained) and their
lengths. Both keep the row's ``id`` when the input has one, and always ``source_file`` and
``source_row`` (0-based). A preference pair's length is its prompt plus its longer reply.

Nothing is dropped silently: per file, rows in = written + rejected. A row is rejected (with its
reason) when it is longer than ``max_length`` (``too_long``; never truncated), has an empty
message (``empty_content``) or spells a special token in its text (``special_token_in_text``). A
row that does not fit its format, or an SFT example with no trained token, is an error naming
the file and row: it means the data or the options are wrong, not that one row is.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from curation.tokens.chat import (TRAIN_ON, ChatError, ChatTokens, SpecialTokenInText,
                                  chat_template_jinja, render_chats, render_completions,
                                  render_prompts)
from curation.tokens.formats import (Rejected, detect_format, formats_for, parse_rows,
                                     read_columns)
from curation.tokens.records import RecordFile, input_stem

FORMAT = "crucible.examples/1"
MANIFEST = "manifest.json"
BATCH_ROWS = 1000
REJECTED_SCHEMA = pa.schema([("source_file", pa.string()), ("source_row", pa.int64()),
                             ("id", pa.string()), ("reason", pa.string()),
                             ("num_tokens", pa.int32()), ("row", pa.string())])


@dataclass
class FileSummary:
    """What one input file gave."""

    input: str
    output: str
    format: str | None
    rows_in: int = 0
    written: int = 0
    rejected: int = 0
    rejected_by_reason: dict[str, int] = field(default_factory=dict)
    rejected_output: str | None = None    # rejected/<stem>.parquet, when any row was
    tokens: int = 0                   # all ids written (preference: prompt + chosen + rejected)
    trainable_tokens: int | None = None   # SFT: loss-mask ones written


@dataclass
class ExamplesSummary:
    """What :func:`write_examples` wrote."""

    kind: str
    out_dir: Path
    files: list[FileSummary]
    seconds: float

    @property
    def rows_in(self) -> int:
        """Rows read from every file."""
        return sum(f.rows_in for f in self.files)

    @property
    def written(self) -> int:
        """Examples written."""
        return sum(f.written for f in self.files)

    @property
    def rejected(self) -> int:
        """Rows written to ``rejected/``."""
        return sum(f.rejected for f in self.files)

    @property
    def tokens(self) -> int:
        """Token ids written."""
        return sum(f.tokens for f in self.files)

    def __str__(self) -> str:
        trained = sum(f.trainable_tokens or 0 for f in self.files)
        extra = f" ({trained:,} trained)" if self.kind == "sft" else ""
        return (f"{self.kind}: {self.rows_in:,} rows from {len(self.files)} file(s): "
                f"{self.written:,} examples written, {self.rejected:,} rejected; "
                f"{self.tokens:,} tokens{extra} in {self.seconds:.1f}s")


def write_examples(kind: str, inputs: list[Path], info, out_dir: Path, *,
                   input_format: str = "auto", max_length: int | None = None,
                   train_on: str = "assistant", show_progress: bool = True) -> ExamplesSummary:
    """Tokenizes SFT (``kind="sft"``) or preference (``"preference"``) rows from Parquet/JSONL
    ``inputs`` with ``info`` (a :class:`~curation.tokens.tokenizer.TokenizerInfo`) into Parquet
    shards in ``out_dir``, one per input, plus ``rejected/`` and ``manifest.json``.
    ``input_format`` is a format of :mod:`curation.tokens.formats` or ``"auto"`` (from the
    columns); ``train_on`` picks the SFT loss (see :mod:`curation.tokens.chat`)."""
    formats_for(kind)
    if train_on not in TRAIN_ON:
        raise ValueError(f"train_on={train_on!r} is not one of {', '.join(TRAIN_ON)}")
    if max_length is not None and max_length < 1:
        raise ValueError(f"max_length={max_length} must be a positive number of tokens")
    inputs = _unique_inputs(inputs)
    start = time.perf_counter()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tokens = ChatTokens.of(info)
    # Every file's format is settled before anything is written: a bad input fails fast.
    jobs = [_FileJob(kind, path, info, tokens, out_dir, input_format, max_length, train_on)
            for path in inputs]
    (out_dir / MANIFEST).unlink(missing_ok=True)  # a failed run must not leave a stale one
    with _Progress(show_progress) as progress:
        files = [job.run(progress) for job in jobs]
    summary = ExamplesSummary(kind=kind, out_dir=out_dir, files=files,
                              seconds=time.perf_counter() - start)
    _write_manifest(summary, info, tokens, input_format, max_length, train_on)
    return summary


def _unique_inputs(inputs: list[Path]) -> list[Path]:
    paths = list(dict.fromkeys(Path(p).resolve() for p in inputs))
    if not paths:
        raise ValueError("no input files given; pass Parquet or JSONL files with --input")
    stems: dict[str, Path] = {}
    for path in paths:
        stem = input_stem(path)
        if stem in stems:
            raise ValueError(f"inputs {stems[stem]} and {path} would both write {stem}.parquet;"
                             " rename one or tokenize them into separate outputs")
        stems[stem] = path
    return paths


class _FileJob:
    """One input file → its shard and rejected rows."""

    def __init__(self, kind, path, info, tokens, out_dir, input_format, max_length, train_on):
        self.kind, self.path, self.info, self.tokens = kind, path, info, tokens
        self.max_length, self.train_on = max_length, train_on
        self.source = RecordFile(path)
        columns = self.source.columns()
        if columns:
            self.format = detect_format(kind, columns, path, input_format)
        else:  # an empty file: nothing to detect or check, an empty shard to write
            self.format = None if input_format == "auto" else input_format
        self.has_id = "id" in columns
        self.stem = stem = input_stem(path)
        self.shard = _AtomicParquet(out_dir / f"{stem}.parquet")
        self.rejects = _AtomicParquet(out_dir / "rejected" / f"{stem}.parquet")
        self.summary = FileSummary(input=str(path), output=f"{stem}.parquet", format=self.format,
                                   trainable_tokens=0 if kind == "sft" else None)

    def run(self, progress: _Progress) -> FileSummary:
        task = progress.add(self.path.name,
                            self.source.num_rows() if progress.enabled else None)
        try:
            if self.format is not None:
                for records in self.source.batches(BATCH_ROWS, read_columns(self.format)):
                    self._batch(records)
                    progress.advance(task, len(records))
            self.shard.close(self._schema())
            if self.rejects.close(REJECTED_SCHEMA, keep_empty=False):
                self.summary.rejected_output = f"rejected/{self.stem}.parquet"
        except BaseException:
            self.shard.abort()
            self.rejects.abort()
            raise
        s = self.summary
        if s.rows_in != s.written + s.rejected:
            raise AssertionError(f"{self.path}: {s.rows_in} rows in but {s.written} written + "
                                 f"{s.rejected} rejected")
        return s

    def _batch(self, records: list[dict]) -> None:
        first = self.summary.rows_in
        parsed = parse_rows(self.format, records, self.path, first)
        render = self._render_sft if self.kind == "sft" else self._render_preference
        kept, rejected = render(parsed, first)
        self.summary.rows_in += len(records)
        if kept:
            self.shard.write(self._table(kept, records, first))
            self.summary.written += len(kept)
        if rejected:
            self.rejects.write(self._rejected_table(rejected, records, first))
            self.summary.rejected += len(rejected)
            for _, reason, _ in rejected:
                key = reason.split(":", 1)[0]
                by = self.summary.rejected_by_reason
                by[key] = by.get(key, 0) + 1

    def _render_sft(self, parsed: list, first: int):
        index = [i for i, p in enumerate(parsed) if not isinstance(p, Rejected)]
        results = render_chats(self.info, [parsed[i] for i in index], train_on=self.train_on,
                               return_exceptions=True)
        kept, rejected = [], [(i, p.reason, None) for i, p in enumerate(parsed)
                              if isinstance(p, Rejected)]
        for i, result in zip(index, results):
            if isinstance(result, SpecialTokenInText):
                rejected.append((i, f"special_token_in_text: {result}", None))
                continue
            if isinstance(result, ChatError):
                raise ValueError(f"{self.path}: row {first + i}: {result}") from result
            ids, mask = result
            if ids[0] != self.tokens.bos or ids.count(self.tokens.bos) != 1:
                raise AssertionError(f"{self.path}: row {first + i}: an SFT example must hold "
                                     "exactly one BOS, at the start")
            if self.max_length is not None and len(ids) > self.max_length:
                rejected.append((i, f"too_long: {len(ids)} tokens > max_length "
                                    f"{self.max_length}", len(ids)))
                continue
            kept.append((i, ids, mask))
            self.summary.tokens += len(ids)
            self.summary.trainable_tokens += sum(mask)
        return kept, sorted(rejected)

    def _render_preference(self, parsed: list, first: int):
        index = [i for i, p in enumerate(parsed) if not isinstance(p, Rejected)]
        pairs = [parsed[i] for i in index]
        prompts = render_prompts(self.info, [p.prompt for p in pairs], return_exceptions=True)
        replies = render_completions(self.info, [r for p in pairs for r in (p.chosen, p.rejected)],
                                     return_exceptions=True)
        kept, rejected = [], [(i, p.reason, None) for i, p in enumerate(parsed)
                              if isinstance(p, Rejected)]
        for n, i in enumerate(index):
            prompt, chosen, worse = prompts[n], replies[2 * n], replies[2 * n + 1]
            bad = next((x for x in (prompt, chosen, worse) if isinstance(x, Exception)), None)
            if isinstance(bad, SpecialTokenInText):
                part = ("prompt " if bad is prompt else
                        "chosen reply " if bad is chosen else "rejected reply ")
                rejected.append((i, f"special_token_in_text: {part}{bad}", None))
                continue
            if bad is not None:
                raise ValueError(f"{self.path}: row {first + i}: {bad}") from bad
            if prompt.count(self.tokens.bos) != 1 or self.tokens.bos in chosen + worse:
                raise AssertionError(f"{self.path}: row {first + i}: a preference pair must "
                                     "hold exactly one BOS, at the start of the prompt")
            length = len(prompt) + max(len(chosen), len(worse))
            if self.max_length is not None and length > self.max_length:
                rejected.append((i, f"too_long: {length} tokens > max_length "
                                    f"{self.max_length}", length))
                continue
            kept.append((i, prompt, chosen, worse))
            self.summary.tokens += len(prompt) + len(chosen) + len(worse)
        return kept, sorted(rejected)

    def _schema(self) -> pa.Schema:
        ids = pa.list_(pa.int32())
        if self.kind == "sft":
            fields = [("input_ids", ids), ("loss_mask", pa.list_(pa.uint8())),
                      ("num_tokens", pa.int32()), ("num_trainable", pa.int32())]
        else:
            fields = [("prompt_ids", ids), ("chosen_ids", ids), ("rejected_ids", ids),
                      ("prompt_tokens", pa.int32()), ("chosen_tokens", pa.int32()),
                      ("rejected_tokens", pa.int32())]
        if self.has_id:
            fields.append(("id", pa.string()))
        fields += [("source_file", pa.string()), ("source_row", pa.int64())]
        return pa.schema(fields)

    def _table(self, kept: list[tuple], records: list[dict], first: int) -> pa.Table:
        columns = {}
        if self.kind == "sft":
            columns["input_ids"] = _list_array([k[1] for k in kept], np.int32)
            columns["loss_mask"] = _list_array([k[2] for k in kept], np.uint8)
            columns["num_tokens"] = [len(k[1]) for k in kept]
            columns["num_trainable"] = [sum(k[2]) for k in kept]
        else:
            for j, name in enumerate(("prompt", "chosen", "rejected"), 1):
                columns[f"{name}_ids"] = _list_array([k[j] for k in kept], np.int32)
            for j, name in enumerate(("prompt", "chosen", "rejected"), 1):
                columns[f"{name}_tokens"] = [len(k[j]) for k in kept]
        rows = [k[0] for k in kept]
        if self.has_id:
            columns["id"] = [_id(records[i]) for i in rows]
        columns["source_file"] = [self.path.name] * len(rows)
        columns["source_row"] = [first + i for i in rows]
        schema = self._schema()
        return pa.Table.from_arrays([pa.array(columns[f.name], f.type) for f in schema],
                                    schema=schema)

    def _rejected_table(self, rejected: list[tuple], records: list[dict], first: int
                        ) -> pa.Table:
        return pa.Table.from_pydict({
            "source_file": [self.path.name] * len(rejected),
            "source_row": [first + i for i, _, _ in rejected],
            "id": [_id(records[i]) for i, _, _ in rejected],
            "reason": [reason for _, reason, _ in rejected],
            "num_tokens": [n for _, _, n in rejected],
            "row": [json.dumps(records[i], ensure_ascii=False, default=str)
                    for i, _, _ in rejected],
        }, schema=REJECTED_SCHEMA)


def _id(record: dict) -> str | None:
    value = record.get("id")
    return None if value is None else str(value)


def _list_array(seqs: list[list[int]], dtype) -> pa.ListArray:
    """A list array built from flat numpy buffers (much faster than from nested lists)."""
    offsets = np.zeros(len(seqs) + 1, dtype=np.int32)
    np.cumsum([len(s) for s in seqs], out=offsets[1:])
    values = np.fromiter(itertools.chain.from_iterable(seqs), dtype=dtype, count=int(offsets[-1]))
    return pa.ListArray.from_arrays(pa.array(offsets), pa.array(values))


class _AtomicParquet:
    """A Parquet file written through ``<name>.tmp`` and renamed into place when closed."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.tmp = path.with_name(path.name + ".tmp")
        self.writer: pq.ParquetWriter | None = None

    def write(self, table: pa.Table) -> None:
        """Appends a table (one row group), opening the temp file on first use."""
        if self.writer is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.writer = pq.ParquetWriter(self.tmp, table.schema, compression="zstd")
        self.writer.write_table(table)

    def close(self, schema: pa.Schema, *, keep_empty: bool = True) -> bool:
        """Renames the file into place; with nothing written, writes an empty file
        (``keep_empty``) or removes any stale one. Returns whether the file exists."""
        if self.writer is None:
            if not keep_empty:
                self.path.unlink(missing_ok=True)
                return False
            self.write(schema.empty_table())
        self.writer.close()
        self.writer = None
        os.replace(self.tmp, self.path)
        return True

    def abort(self) -> None:
        """Drops the temp file; the previous complete file, if any, stays."""
        if self.writer is not None:
            self.writer.close()
            self.writer = None
        self.tmp.unlink(missing_ok=True)


class _Progress:
    """A rich progress bar per input file, over rows (silent when disabled or when stderr is
    not a terminal)."""

    def __init__(self, enabled: bool) -> None:
        from rich.console import Console
        from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn,
                                   TimeElapsedColumn, TimeRemainingColumn)

        console = Console(file=sys.stderr)
        self.enabled = enabled and console.is_terminal
        self.progress = Progress(TextColumn("{task.description}"), BarColumn(),
                                 MofNCompleteColumn(), TimeElapsedColumn(), TimeRemainingColumn(),
                                 console=console, disable=not self.enabled)

    def __enter__(self) -> _Progress:
        self.progress.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self.progress.__exit__(*exc)

    def add(self, name: str, total: int | None):
        """A bar for one file (``total`` rows, when known)."""
        return self.progress.add_task(f"tokenize {name}", total=total)

    def advance(self, task, rows: int) -> None:
        """Moves a file's bar on by ``rows``."""
        self.progress.advance(task, rows)


def _write_manifest(summary: ExamplesSummary, info, tokens: ChatTokens, input_format: str,
                    max_length: int | None, train_on: str) -> None:
    from importlib import metadata

    from curation.manifest import library_versions

    versions = library_versions()
    versions["tokenizers"] = metadata.version("tokenizers")
    template = chat_template_jinja()
    data = {
        "format": FORMAT,
        "kind": summary.kind,
        "status": "complete",
        "tokenizer": {"path": str(Path(info.path).resolve()), "sha256": info.sha256,
                      "vocab_size": info.vocab_size},
        "chat_template": {"sha256": hashlib.sha256(template.encode()).hexdigest(),
                          "bos_id": tokens.bos, "end_of_turn_id": tokens.end,
                          "role_ids": tokens.roles},
        "config": {"input_format": input_format, "max_length": max_length,
                   "train_on": train_on if summary.kind == "sft" else None},
        "files": [asdict(f) for f in summary.files],
        "totals": {"rows_in": summary.rows_in, "written": summary.written,
                   "rejected": summary.rejected, "tokens": summary.tokens},
        "versions": versions,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "seconds": round(summary.seconds, 3),
    }
    path = summary.out_dir / MANIFEST
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=1) + "\n")
    os.replace(tmp, path)

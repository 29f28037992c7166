"""``crucible tokenize`` for pre-training: curated Parquet shards → Megatron indexed datasets.

One task per source shard, run on the curation executors (local processes or Ray). A task reads
its shard one record batch at a time, encodes the texts with the tokenizer's batch encoder,
appends the document-end id to every document and streams the ids into one indexed dataset per
group (``OUT/<group>/<source>-<shard>.bin|.idx``); the files appear by rename only when complete.
The driver records each finished shard in ``OUT/manifest.json`` (atomically), so a rerun with the
same arguments skips finished shards and redoes the rest; the manifest says ``complete`` only
when every shard is in.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from curation.tokens.indexed import IndexedWriter, token_dtype
from curation.tokens.layout import FORMAT, MANIFEST, write_token_manifest

SKIPPED_DIRS = ("rejected", "_work", "dedup")  # what `crucible curate` writes beside its shards


@dataclass(frozen=True)
class Source:
    """A named input: every Parquet file under ``path`` belongs to source ``name``."""

    name: str
    path: str


@dataclass
class TokenizeConfig:
    """What a pre-training tokenize job reads and how it writes."""

    sources: list[Source]
    """Inputs; each source's name is its default group (``NAME=PATH`` on the command line)."""
    output: str
    """Output directory (token shards + manifest.json)."""
    tokenizer: str
    """tokenizer.json (or a directory holding one)."""
    text_column: str = "text"
    """Parquet column holding the documents."""
    group_by: str | None = None
    """A column of the curated shards whose values name the groups (e.g. ``ppl_bucket``);
    None groups by source."""
    eos_token: str | None = None
    """The document-end token appended to every document (default: the tokenizer's)."""
    batch_size: int = 1024
    """Rows encoded per call of the batch encoder."""
    executor: str = "local"
    """``local`` worker processes or ``ray``."""
    workers: int = 0
    """Parallel shard tasks (0: one per core)."""
    ray_address: str | None = None
    """Ray cluster address for ``executor: ray``."""

    def __post_init__(self) -> None:
        if not self.sources:
            raise ValueError("no inputs: give at least one --input PATH or NAME=PATH")
        names = [s.name for s in self.sources]
        if len(set(names)) != len(names):
            raise ValueError(f"source names must be unique (got {', '.join(names)}); name them "
                             "with NAME=PATH")
        for s in self.sources:
            if not s.name or "/" in s.name or s.name.startswith((".", "_")):
                raise ValueError(f"source name {s.name!r} is not a valid folder name")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1 (got {self.batch_size})")
        if self.workers < 0:
            raise ValueError(f"workers must be >= 0 (got {self.workers})")

    def resolved_workers(self) -> int:
        """Worker count with 0 meaning one per available core."""
        return self.workers or len(os.sched_getaffinity(0))


def parse_source(arg: str) -> Source:
    """``NAME=PATH`` or ``PATH`` (named after the folder or file stem)."""
    if "=" in arg and not os.path.exists(arg):
        name, path = arg.split("=", 1)
        return Source(name=name, path=path)
    path = Path(arg.rstrip("/"))
    return Source(name=path.stem if path.is_file() else path.name, path=arg)


@dataclass
class ShardTokens:
    """What one finished shard task wrote."""

    shard: str
    source: str
    rows: int = 0
    empty: int = 0                        # null or empty texts (no tokens, skipped, counted)
    groups: dict[str, dict[str, Any]] = field(default_factory=dict)  # group -> prefix/docs/tokens
    seconds: float = 0.0


@dataclass
class TokenizeSummary:
    """The job's totals."""

    out_dir: Path
    shards_done: int
    shards_skipped: int
    rows: int
    documents: int
    tokens: int
    seconds: float
    groups: dict[str, dict[str, int]]


def source_shards(source: Source) -> list[Path]:
    """The Parquet files of a source, sorted. For the output folder of ``crucible curate``
    (it holds a curation ``manifest.json``) these are exactly the curated shards the manifest
    lists, never its ``rejected/``, ``dedup/`` or ``_work/`` files."""
    from curation.io.reader import discover_inputs

    root = Path(source.path)
    manifest = root / "manifest.json"
    if root.is_dir() and manifest.exists():
        data = json.loads(manifest.read_text())
        if "segments" in data:  # a curation job's manifest
            if data.get("status") != "done":
                raise ValueError(f"{root}: the curation job has not finished (status "
                                 f"{data.get('status')!r}); finish it with `crucible curate "
                                 "--resume` first")
            files = sorted({(root / Path(out).name).resolve()
                            for shard in data["segments"][-1]["shards"].values()
                            for out in shard.get("outputs", [])})
            missing = [f for f in files if not f.exists()]
            if missing:
                raise FileNotFoundError(f"{root}: curated shard {missing[0].name} listed in "
                                        "manifest.json is missing")
            if not files:
                raise FileNotFoundError(f"{root}: the curation job kept no rows")
            return files
    files = discover_inputs([source.path])
    if root.is_dir():
        files = [f for f in files
                 if not any(part in SKIPPED_DIRS for part in f.relative_to(root.resolve()).parts)]
    if not files:
        raise FileNotFoundError(f"input {source.path!r} has no Parquet shards outside "
                                f"{'/'.join(SKIPPED_DIRS)}")
    return files


def tokenize_shard(shard: str, source: str, stem: str, out_dir: str, tokenizer_path: str,
                   eos_token: str | None, text_column: str, group_by: str | None,
                   batch_size: int) -> ShardTokens:
    """Tokenizes one shard into ``out_dir/<group>/<stem>.bin|.idx`` (one dataset per group).
    Runs in a worker process; module-level so executors can pickle it."""
    threads = os.environ.get("CRUCIBLE_THREADS")
    if threads:  # the batch encoder's thread pool gets this worker's share of the cores
        os.environ.setdefault("RAYON_NUM_THREADS", threads)
    import pyarrow.parquet as pq

    start = time.perf_counter()
    info = _worker_tokenizer(tokenizer_path, eos_token, os.stat(tokenizer_path).st_mtime_ns)
    dtype = token_dtype(info.vocab_size)
    eos = np.array([info.eos_id], dtype=np.int64)
    pf = pq.ParquetFile(shard)
    names = pf.schema_arrow.names
    for column in (text_column, group_by):
        if column and column not in names:
            raise ValueError(f"shard {shard}: column {column!r} is missing (found: "
                             f"{', '.join(names)}); set --text-column / --group-by")
    result = ShardTokens(shard=shard, source=source)
    writers: dict[str, IndexedWriter] = {}
    try:
        columns = [text_column] + ([group_by] if group_by else [])
        for batch in pf.iter_batches(batch_size=batch_size, columns=columns):
            texts = batch.column(0).to_pylist()
            groups = (["null" if g is None else str(g) for g in batch.column(1).to_pylist()]
                      if group_by else None)
            result.rows += len(texts)
            keep = [i for i, t in enumerate(texts) if t]
            result.empty += len(texts) - len(keep)
            ids = info.encode_batch([texts[i] for i in keep])
            docs = [np.concatenate([np.asarray(x, dtype=np.int64), eos]) for x in ids]
            by_group: dict[str, list[np.ndarray]] = {}
            for i, doc in zip(keep, docs):
                by_group.setdefault(groups[i] if groups else source, []).append(doc)
            for group, group_docs in by_group.items():
                if group not in writers:
                    _check_group_name(group, shard)
                    writers[group] = IndexedWriter(Path(out_dir) / group / stem, dtype)
                writers[group].add_many(group_docs)
        for group, writer in writers.items():
            documents, tokens = writer.finish()
            result.groups[group] = {"prefix": f"{group}/{stem}", "documents": documents,
                                    "tokens": tokens}
    except BaseException:
        for writer in writers.values():
            writer.abort()
        raise
    result.seconds = time.perf_counter() - start
    return result


@lru_cache(maxsize=4)
def _worker_tokenizer(path: str, eos_token: str | None, mtime_ns: int):
    """A worker loads the tokenizer once for all the shards it runs (parsing a 32k vocabulary
    takes ~50 ms; ``mtime_ns`` keys the cache to the file's version)."""
    from curation.tokens.tokenizer import load_tokenizer

    return load_tokenizer(path, eos_token)


def _check_group_name(group: str, shard: str) -> None:
    if not group or "/" in group or group.startswith((".", "_")) or group in SKIPPED_DIRS:
        raise ValueError(f"shard {shard}: group value {group!r} cannot name a folder; map the "
                         "--group-by column to plain names first")


def run_tokenize(config: TokenizeConfig, *, show_progress: bool = True,
                 log: Callable[[str], None] | None = None) -> TokenizeSummary:
    """Runs (or finishes) a pre-training tokenize job; returns its totals."""
    from curation.tokens.tokenizer import load_tokenizer

    start = time.perf_counter()
    out_dir = Path(config.output)
    info = load_tokenizer(config.tokenizer, config.eos_token)  # fail early on a bad tokenizer
    tasks = []
    for source in config.sources:
        root = Path(source.path)
        for shard in source_shards(source):
            rel = shard.relative_to(root.resolve()) if root.is_dir() else Path(shard.name)
            stem = f"{source.name}-" + "-".join(rel.with_suffix("").parts)
            tasks.append((str(shard), source.name, stem))
    stems = [t[2] for t in tasks]
    if len(set(stems)) != len(stems):
        raise ValueError("two inputs map to the same shard name; give the sources distinct "
                         "names with NAME=PATH")
    fingerprint = _fingerprint(config, info.sha256, [t[0] for t in tasks])
    manifest = _open_manifest(out_dir, config, fingerprint, info, tasks)
    done = manifest["shards"]
    todo = [t for t in tasks if done.get(t[2], {}).get("status") != "done"]
    if log and len(todo) < len(tasks):
        log(f"resuming: {len(tasks) - len(todo)} of {len(tasks)} shards already done")
    from curation.executors import make_executor

    executor = make_executor(config.executor, config.resolved_workers(), config.ray_address)
    args = [(shard, source, stem, str(out_dir), str(info.path), config.eos_token,
             config.text_column, config.group_by, config.batch_size)
            for shard, source, stem in todo]
    with _progress(show_progress, len(todo)) as advance:
        for (_, _, stem), result in zip(todo, executor.run_tasks(tokenize_shard, args)):
            done[stem] = {"status": "done", **asdict(result)}
            _refresh_groups(manifest)
            write_token_manifest(out_dir, manifest)
            advance(result)
    manifest["complete"] = True
    manifest["finished"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    _refresh_groups(manifest)
    write_token_manifest(out_dir, manifest)
    groups = {g: {"documents": v["documents"], "tokens": v["tokens"]}
              for g, v in manifest["groups"].items()}
    return TokenizeSummary(
        out_dir=out_dir, shards_done=len(todo), shards_skipped=len(tasks) - len(todo),
        rows=sum(s["rows"] for s in done.values()),
        documents=sum(g["documents"] for g in groups.values()),
        tokens=sum(g["tokens"] for g in groups.values()),
        seconds=time.perf_counter() - start, groups=groups)


def _fingerprint(config: TokenizeConfig, tokenizer_sha: str, shards: list[str]) -> str:
    what = {"tokenizer": tokenizer_sha, "text_column": config.text_column,
            "group_by": config.group_by, "eos_token": config.eos_token,
            "sources": [asdict(s) for s in config.sources], "shards": shards}
    return hashlib.sha256(json.dumps(what, sort_keys=True).encode()).hexdigest()[:16]


def _open_manifest(out_dir: Path, config: TokenizeConfig, fingerprint: str, info,
                   tasks: list[tuple[str, str, str]]) -> dict[str, Any]:
    path = out_dir / MANIFEST
    if path.exists():
        data = json.loads(path.read_text())
        if data.get("format") != FORMAT or data.get("fingerprint") != fingerprint:
            raise ValueError(f"{out_dir} holds token shards of a different job (other inputs, "
                             "tokenizer or options); choose a new --output or delete it")
        return data
    if out_dir.exists() and any(out_dir.iterdir()):
        raise ValueError(f"{out_dir} is not empty and has no {MANIFEST}; choose a new --output")
    out_dir.mkdir(parents=True, exist_ok=True)
    from curation.manifest import library_versions

    versions = library_versions()
    try:
        from importlib import metadata

        versions["tokenizers"] = metadata.version("tokenizers")
    except Exception:  # noqa: BLE001 - a version we cannot read is recorded as unknown
        versions["tokenizers"] = None
    data = {
        "format": FORMAT, "fingerprint": fingerprint, "complete": False,
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "finished": None,
        "dtype": str(token_dtype(info.vocab_size)),
        "tokenizer": {"path": str(info.path), "sha256": info.sha256,
                      "vocab_size": info.vocab_size, "eos_id": info.eos_id},
        "config": {k: v for k, v in asdict(config).items()
                   if k not in ("executor", "workers", "ray_address")},
        "versions": versions,
        "sources": {shard: {"source": source, "stem": stem} for shard, source, stem in tasks},
        "shards": {}, "groups": {},
    }
    write_token_manifest(out_dir, data)
    return data


def _refresh_groups(manifest: dict[str, Any]) -> None:
    groups: dict[str, dict[str, Any]] = {}
    for stem in sorted(manifest["shards"]):
        for group, g in manifest["shards"][stem]["groups"].items():
            entry = groups.setdefault(group, {"prefixes": [], "documents": 0, "tokens": 0})
            entry["prefixes"].append(g["prefix"])
            entry["documents"] += g["documents"]
            entry["tokens"] += g["tokens"]
    manifest["groups"] = groups


class _progress:
    """A rich progress bar over shards with a running token rate (silent when disabled or
    when stderr is not a terminal)."""

    def __init__(self, enabled: bool, total: int) -> None:
        from rich.console import Console
        from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn,
                                   TimeElapsedColumn, TimeRemainingColumn)

        console = Console(file=sys.stderr)
        self.enabled = enabled and console.is_terminal and total > 0
        self.progress = Progress(TextColumn("tokenize"), BarColumn(), MofNCompleteColumn(),
                                 TextColumn("{task.fields[rate]}"), TimeElapsedColumn(),
                                 TimeRemainingColumn(), console=console,
                                 disable=not self.enabled)
        self.total = total
        self.tokens = 0
        self.start = time.perf_counter()

    def __enter__(self) -> Callable[[ShardTokens], None]:
        self.progress.__enter__()
        task = self.progress.add_task("shards", total=self.total, rate="")

        def advance(result: ShardTokens) -> None:
            self.tokens += sum(g["tokens"] for g in result.groups.values())
            rate = self.tokens / max(time.perf_counter() - self.start, 1e-9)
            self.progress.update(task, advance=1, rate=f"{rate / 1e6:.2f}M tok/s")

        return advance

    def __exit__(self, *exc) -> None:
        self.progress.__exit__(*exc)

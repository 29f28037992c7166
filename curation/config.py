"""Curation job configuration: typed dataclasses loaded from YAML, presets, CLI overrides.

A job file looks like::

    preset: fineweb            # optional: start from a published rule set
    input:
      paths: [data/raw/]       # files, folders or globs
      text_column: text
    output:
      dir: out/
    executor:
      kind: local              # or ray
      workers: 4
    pipeline:                  # replaces the preset's pipeline when given
      - step: language_id
        keep_languages: [en]

Unknown keys are rejected with the list of valid ones, at every level.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import os
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from curation.registry import build_config

PRESETS = ("default", "fineweb", "gopher", "c4")


@dataclass
class InputConfig:
    """Where the raw shards are and how to read them."""

    paths: list[str] = field(default_factory=list)
    """Parquet files, folders (searched recursively) or glob patterns."""
    text_column: str = "text"
    """Column holding the document text (utf8)."""
    id_column: str = "id"
    """Column holding a unique document id; generated as ``<shard>:<row>`` when absent."""
    batch_size: int = 4096
    """Rows per record batch: bounds memory per worker."""
    max_doc_bytes: int = 10_000_000
    """Documents above this size are rejected as ``input:too_long``."""

    def __post_init__(self) -> None:
        if self.batch_size <= 0:
            raise ValueError(f"batch_size must be > 0 (got {self.batch_size})")


@dataclass
class OutputConfig:
    """Where and how curated shards are written."""

    dir: str = ""
    """Output directory: curated shards, rejected/, manifest.json, stats.json, report.html."""
    max_part_mb: float = 256.0
    """An input shard's kept rows are split into parts of about this many MB (in memory)."""
    row_group_rows: int = 65536
    """Rows per Parquet row group."""
    compression: str = "zstd"
    """Parquet codec (zstd, snappy, gzip, lz4, none)."""
    compression_level: int = 3
    """Codec level (zstd: 1-22)."""

    def __post_init__(self) -> None:
        if self.max_part_mb <= 0:
            raise ValueError(f"max_part_mb must be > 0 (got {self.max_part_mb})")
        if self.compression not in ("zstd", "snappy", "gzip", "lz4", "brotli", "none"):
            raise ValueError(f"compression {self.compression!r} is not one of zstd, snappy, "
                             "gzip, lz4, brotli, none")


@dataclass
class ExecutorConfig:
    """Which executor runs the shards."""

    kind: str = "local"
    """``local`` (worker processes on this machine) or ``ray`` (a Ray cluster)."""
    workers: int = 0
    """Parallel shard tasks; 0 = one per core."""
    ray_address: str | None = None
    """Ray cluster address (``auto`` or ``host:port``); None starts a local Ray instance."""

    def __post_init__(self) -> None:
        if self.kind not in ("local", "ray"):
            raise ValueError(f"executor.kind must be 'local' or 'ray' (got {self.kind!r})")
        if self.workers < 0:
            raise ValueError(f"executor.workers must be >= 0 (got {self.workers})")

    def resolved_workers(self) -> int:
        return self.workers or len(os.sched_getaffinity(0))


@dataclass
class JobConfig:
    """A whole curation job."""

    preset: str | None = None
    """Published rule set to start from: default, fineweb, gopher or c4."""
    input: InputConfig = field(default_factory=InputConfig)
    output: OutputConfig = field(default_factory=OutputConfig)
    executor: ExecutorConfig = field(default_factory=ExecutorConfig)
    pipeline: list[dict[str, Any]] = field(default_factory=list)
    """Steps in order, each ``{step: <name>, <option>: <value>, ...}``."""
    plugins: list[str] = field(default_factory=list)
    """Python modules to import (in the driver and every worker) before building steps: the
    way to add your own steps (classes decorated with ``curation.registry.register``)."""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def fingerprint(self) -> str:
        """Hash of everything that changes the output (not paths' spelling of workers)."""
        material = {"input": {k: v for k, v in dataclasses.asdict(self.input).items()},
                    "output": {k: v for k, v in dataclasses.asdict(self.output).items()
                               if k != "dir"},
                    "pipeline": self.pipeline, "plugins": self.plugins}
        blob = json.dumps(material, sort_keys=True, default=str).encode()
        return hashlib.sha256(blob).hexdigest()[:16]


def preset_pipeline(name: str) -> list[dict[str, Any]]:
    """The step list of a preset (``curation/presets/<name>.yaml``)."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; available presets: {', '.join(PRESETS)}")
    text = resources.files("curation.presets").joinpath(f"{name}.yaml").read_text()
    return yaml.safe_load(text)["pipeline"]


def load_config(path: str | Path | None, *, inputs: list[str] | None = None,
                output: str | None = None, executor: str | None = None,
                workers: int | None = None, ray_address: str | None = None,
                preset: str | None = None) -> JobConfig:
    """Loads a job from YAML (or the default job when ``path`` is None) and applies overrides.

    Raises:
        ValueError: invalid YAML, unknown keys or values, with the file and key named.
        FileNotFoundError: the config file does not exist.
    """
    raw: dict[str, Any] = {}
    where = "config"
    if path is not None:
        path = Path(path)
        where = str(path)
        if not path.is_file():
            raise FileNotFoundError(f"config file {path} does not exist")
        try:
            raw = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as exc:
            raise ValueError(f"{path}: not valid YAML ({exc})") from exc
        if not isinstance(raw, dict):
            raise ValueError(f"{path}: the top level must be a mapping of "
                             "input/output/executor/pipeline/preset")
    raw = copy.deepcopy(raw)
    if preset is not None:
        raw["preset"] = preset
    if inputs:
        raw.setdefault("input", {})["paths"] = list(inputs)
    if output is not None:
        raw.setdefault("output", {})["dir"] = output
    if executor is not None:
        raw.setdefault("executor", {})["kind"] = executor
    if workers is not None:
        raw.setdefault("executor", {})["workers"] = workers
    if ray_address is not None:
        raw.setdefault("executor", {})["ray_address"] = ray_address
    config = build_config(JobConfig, raw, where)
    if not config.pipeline:
        config.pipeline = preset_pipeline(config.preset or "default")
    if not config.input.paths:
        raise ValueError(f"{where}: no inputs; set input.paths or pass --input PATH")
    if not config.output.dir:
        raise ValueError(f"{where}: no output directory; set output.dir or pass --output DIR")
    return config

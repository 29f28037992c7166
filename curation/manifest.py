"""The job manifest: the single record of what a curation job did, and what resume reads.

``manifest.json`` in the output directory holds the config and its hash, library versions, the
input shards, and per segment the result of every shard (status, rows in/kept/rejected per step,
files written, seconds). Only the driver writes it, atomically (temp file + rename), after each
shard result; a shard is "done" only once its files are in place *and* the manifest says so, so
a crash at any moment leaves either a finished shard or one that resume redoes from scratch.
"""

from __future__ import annotations

import json
import os
import platform
import time
from importlib import metadata
from pathlib import Path
from typing import Any

MANIFEST = "manifest.json"


def library_versions() -> dict[str, str | None]:
    """Versions of the libraries that shape the output bytes."""
    out: dict[str, str | None] = {"python": platform.python_version()}
    for name in ("crucible", "pyarrow", "polars", "numpy", "fasttext"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


class Manifest:
    """In-memory manifest with atomic saves."""

    def __init__(self, path: Path, data: dict[str, Any]) -> None:
        self.path = path
        self.data = data

    @classmethod
    def create(cls, out_dir: Path, config: dict[str, Any], fingerprint: str,
               inputs: list[dict[str, Any]], segments: list[list[str]]) -> Manifest:
        data = {
            "format": 1,
            "config_hash": fingerprint,
            "config": config,
            "versions": library_versions(),
            "status": "running",
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "finished": None,
            "inputs": inputs,
            "segments": [{"steps": names, "shards": {}} for names in segments],
            "plans": {},
        }
        manifest = cls(out_dir / MANIFEST, data)
        manifest.save()
        return manifest

    @classmethod
    def load(cls, out_dir: Path) -> Manifest | None:
        path = out_dir / MANIFEST
        if not path.exists():
            return None
        try:
            return cls(path, json.loads(path.read_text()))
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}: not valid JSON ({exc}); the manifest is written "
                             "atomically, so this file was edited or damaged by hand") from exc

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text(json.dumps(self.data, indent=1, sort_keys=False) + "\n")
        os.replace(tmp, self.path)

    def shard_result(self, segment: int, shard: str) -> dict[str, Any] | None:
        return self.data["segments"][segment]["shards"].get(shard)

    def is_done(self, segment: int, shard: str) -> bool:
        """Done in the manifest, with its outputs still on disk where anything needs them:
        the last segment's outputs always, an earlier segment's only while the next segment
        has not finished the shard (work files go once the job is complete)."""
        result = self.shard_result(segment, shard)
        if not result or result["status"] != "done":
            return False
        last = segment == len(self.data["segments"]) - 1
        if not last and self._status(segment + 1, shard) == "done":
            return True
        return all(Path(p).exists() for p in result["outputs"])

    def _status(self, segment: int, shard: str) -> str | None:
        result = self.shard_result(segment, shard)
        return result["status"] if result else None

    def record(self, segment: int, result: dict[str, Any]) -> None:
        self.data["segments"][segment]["shards"][result["shard"]] = result
        self.save()

    def reset_segments_from(self, segment: int) -> None:
        """Forgets the results of ``segment`` and later ones (their global plan changed)."""
        for seg in self.data["segments"][segment:]:
            seg["shards"] = {}
        self.save()

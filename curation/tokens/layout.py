"""The layout of a token-shard directory, shared by ``crucible tokenize`` and ``engine.data``.

    OUT/manifest.json            what is here and what made it (see :class:`TokenManifest`)
    OUT/<group>/<stem>.bin|.idx  one Megatron indexed dataset per (group, source shard)

A *group* is the unit a mixture weighs: by default the source a shard came from, or the values of
a column of the curated shards (``--group-by ppl_bucket`` gives ``head``/``middle``/``tail``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

FORMAT = "crucible.tokens/1"
MANIFEST = "manifest.json"


@dataclass
class TokenGroup:
    """One group's datasets: path prefixes relative to the directory, with their counts."""

    prefixes: list[str] = field(default_factory=list)
    documents: int = 0
    tokens: int = 0


@dataclass
class TokenManifest:
    """The parts of ``manifest.json`` a reader needs (the file holds more: config, sources,
    versions, per-shard status)."""

    root: Path
    dtype: str
    vocab_size: int
    eos_id: int
    tokenizer_sha256: str
    groups: dict[str, TokenGroup]
    raw: dict[str, Any]

    def prefixes(self, group: str) -> list[Path]:
        """Absolute path prefixes of ``group``'s datasets, in a stable order."""
        if group not in self.groups:
            raise KeyError(f"{self.root}: no token group {group!r} (groups: "
                           f"{', '.join(sorted(self.groups)) or 'none'})")
        return [self.root / p for p in self.groups[group].prefixes]


def read_token_manifest(root: str | Path) -> TokenManifest:
    """Reads ``root/manifest.json`` written by ``crucible tokenize``; clear errors when the
    directory is not a finished token-shard directory."""
    root = Path(root)
    path = root / MANIFEST
    if not path.exists():
        raise FileNotFoundError(f"{root}: no {MANIFEST}; is this the output directory of "
                                "`crucible tokenize`?")
    data = json.loads(path.read_text())
    if data.get("format") != FORMAT:
        raise ValueError(f"{path}: format {data.get('format')!r}, expected {FORMAT!r}")
    if not data.get("complete", False):
        raise ValueError(f"{path}: the tokenize job has not finished; rerun `crucible tokenize` "
                         "with the same arguments to complete it")
    groups = {name: TokenGroup(prefixes=list(g["prefixes"]), documents=int(g["documents"]),
                               tokens=int(g["tokens"]))
              for name, g in data["groups"].items()}
    tok = data["tokenizer"]
    return TokenManifest(root=root, dtype=data["dtype"], vocab_size=int(tok["vocab_size"]),
                         eos_id=int(tok["eos_id"]), tokenizer_sha256=tok["sha256"],
                         groups=groups, raw=data)


def write_token_manifest(root: Path, data: dict[str, Any]) -> None:
    """Writes ``root/manifest.json`` atomically (temp file + rename)."""
    path = root / MANIFEST
    tmp = path.with_name(MANIFEST + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    tmp.replace(path)

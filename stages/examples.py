"""Reading the tokenized examples ``crucible tokenize --kind sft|preference`` writes.

    sft = read_sft("out/sft")                  # SFTExamples: ids and loss masks, checked
    pairs = read_preferences("out/pref")       # PreferencePairs: prompt, chosen, rejected ids

A path is one Parquet shard or the output directory (every ``*.parquet`` in it, sorted; the
``rejected/`` folder is not read). When the directory has the ``manifest.json`` of
:mod:`curation.tokens.examples`, its ``kind`` must match and its end-of-turn id is used to check
every SFT example: the loss mask is never empty, ``mask[0]`` (BOS) is 0, and every trained span
ends on ``<|end|>`` (the model must learn to stop).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

SFT_COLUMNS = ("input_ids", "loss_mask")
PREFERENCE_COLUMNS = ("prompt_ids", "chosen_ids", "rejected_ids")


@dataclass
class SFTExamples:
    """Token ids and loss masks of SFT examples (``mask[i] = 1``: token ``i`` is a target)."""

    input_ids: list[np.ndarray]
    """One int64 array per example."""
    loss_mask: list[np.ndarray]
    """One uint8 array per example, as long as its ids."""
    end_id: int | None = None
    """The end-of-turn id (from the manifest), when known."""

    def __len__(self) -> int:
        return len(self.input_ids)

    def subset(self, index) -> SFTExamples:
        """The examples at ``index`` (an iterable of ints), in that order."""
        index = list(index)
        return SFTExamples([self.input_ids[i] for i in index],
                           [self.loss_mask[i] for i in index], self.end_id)


@dataclass
class PreferencePairs:
    """Preference pairs: the prompt (ending in the generation prompt) and both replies."""

    prompt_ids: list[np.ndarray]
    chosen_ids: list[np.ndarray]
    rejected_ids: list[np.ndarray]
    margin: np.ndarray | None = None
    """Optional per-pair reward margin (a ``margin`` column), for the reward model."""

    def __len__(self) -> int:
        return len(self.prompt_ids)

    def subset(self, index) -> PreferencePairs:
        """The pairs at ``index`` (an iterable of ints), in that order."""
        index = list(index)
        return PreferencePairs([self.prompt_ids[i] for i in index],
                               [self.chosen_ids[i] for i in index],
                               [self.rejected_ids[i] for i in index],
                               None if self.margin is None else self.margin[index])


def _shards(path: str | Path, kind: str) -> tuple[list[Path], dict | None]:
    path = Path(path)
    if path.is_file():
        manifest_path = path.parent / "manifest.json"
        files = [path]
    elif path.is_dir():
        manifest_path = path / "manifest.json"
        files = sorted(path.glob("*.parquet"))
        if not files:
            raise FileNotFoundError(f"{path}: no *.parquet shards; run `crucible tokenize "
                                    f"--kind {kind} --output {path}` first")
    else:
        raise FileNotFoundError(f"{path} does not exist; give a Parquet shard or the output "
                                f"directory of `crucible tokenize --kind {kind}`")
    manifest = json.loads(manifest_path.read_text()) if manifest_path.exists() else None
    if manifest is not None and manifest.get("kind") != kind:
        raise ValueError(f"{manifest_path}: these are {manifest.get('kind')!r} examples, not "
                         f"{kind!r}; tokenize with `crucible tokenize --kind {kind}`")
    return files, manifest


def _read_columns(files: list[Path], columns: tuple[str, ...], optional: tuple[str, ...] = ()
                  ) -> dict[str, list]:
    import pyarrow.parquet as pq

    out: dict[str, list] = {c: [] for c in columns + optional}
    for f in files:
        names = pq.ParquetFile(f).schema_arrow.names
        missing = [c for c in columns if c not in names]
        if missing:
            raise ValueError(f"shard {f}: column(s) {', '.join(missing)} missing (found: "
                             f"{', '.join(names)}); is it the output of `crucible tokenize`?")
        present = [c for c in optional if c in names]
        table = pq.read_table(f, columns=list(columns) + present)
        for c in columns + tuple(present):
            col = table.column(c)
            if c in optional:
                out[c] += col.to_pylist()
                continue
            for chunk in col.chunks:
                offsets = chunk.offsets.to_numpy()
                values = chunk.values.to_numpy(zero_copy_only=False)
                out[c] += [values[offsets[i]:offsets[i + 1]] for i in range(len(chunk))]
        for c in optional:
            if c not in present:
                out[c] += [None] * table.num_rows
    return out


def check_sft_example(ids: np.ndarray, mask: np.ndarray, end_id: int | None, where: str
                      ) -> None:
    """Raises a ``ValueError`` naming ``where`` when an example cannot be trained on: lengths
    differ, the mask is empty, BOS is trained, or (``end_id`` given) a trained span does not
    end on the end-of-turn token."""
    if len(ids) != len(mask):
        raise ValueError(f"{where}: {len(ids)} ids but {len(mask)} loss-mask entries")
    if len(ids) < 2 or not mask[1:].any():
        raise ValueError(f"{where}: the loss mask has no trained token; re-tokenize with "
                         "train_on='assistant' or 'all', or drop the example")
    if mask[0]:
        raise ValueError(f"{where}: mask[0] is 1, but token 0 (BOS) is never a target")
    if end_id is not None:
        ends = np.flatnonzero(np.diff(np.append(mask.astype(np.int8), 0)) == -1)
        bad = [int(i) for i in ends if ids[i] != end_id]
        if bad:
            raise ValueError(f"{where}: the trained span ending at token {bad[0]} does not end "
                             f"on the end-of-turn id {end_id}; the model would never learn to "
                             "stop (re-tokenize with `crucible tokenize --kind sft`)")


def read_sft(path: str | Path) -> SFTExamples:
    """SFT examples of a shard or an output directory, each checked by
    :func:`check_sft_example`."""
    files, manifest = _shards(path, "sft")
    end_id = manifest["chat_template"]["end_of_turn_id"] if manifest else None
    cols = _read_columns(files, SFT_COLUMNS)
    ids = [a.astype(np.int64) for a in cols["input_ids"]]
    masks = [a.astype(np.uint8) for a in cols["loss_mask"]]
    for i, (x, m) in enumerate(zip(ids, masks)):
        check_sft_example(x, m, end_id, f"{path}: example {i}")
    return SFTExamples(ids, masks, end_id)


def read_preferences(path: str | Path) -> PreferencePairs:
    """Preference pairs of a shard or an output directory (a ``margin`` column is kept)."""
    files, _ = _shards(path, "preference")
    cols = _read_columns(files, PREFERENCE_COLUMNS, optional=("margin",))
    for i, (c, r) in enumerate(zip(cols["chosen_ids"], cols["rejected_ids"])):
        if len(c) == 0 or len(r) == 0:
            raise ValueError(f"{path}: pair {i} has an empty reply; re-tokenize it")
    margins = cols["margin"]
    margin = None if all(m is None for m in margins) else np.array(
        [0.0 if m is None else m for m in margins], dtype=np.float32)
    return PreferencePairs(*[[a.astype(np.int64) for a in cols[c]]
                             for c in PREFERENCE_COLUMNS], margin=margin)

"""Training checkpoints with torch.distributed.checkpoint: atomic, checksummed, keep-last-K.

A checkpoint is a directory ``<out>/checkpoints/step-XXXXXXXX/`` holding

* the DCP shards of ``{"model": ..., "optim": ...}`` (full or sharded state dicts, whatever the
  parallelism: ``get_state_dict`` handles DDP and FSDP2);
* ``rank-R.pt``, one per rank: the step, the scheduler step, the RNG states, the loader position
  and the guard window (tensors and plain values only, loaded with ``weights_only=True``);
* ``meta.json``: step, world size, and the SHA-256 of every other file, written last.

It is written under ``step-XXXXXXXX.tmp`` and renamed into place by rank 0 once every rank has
finished, so a crash leaves either a complete checkpoint or a ``.tmp`` directory that is ignored
and removed. Loading verifies every checksum before reading anything.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

META = "meta.json"


def _rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def _barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


@contextmanager
def _quiet_single_process():
    """DCP warns that it 'assumes the intent is to save in a single process' when
    torch.distributed is not initialised; that is exactly our intent."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        yield


def rng_state() -> dict[str, Any]:
    """Every RNG a training step may draw from."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state = {"torch": torch.get_rng_state(), "python": random.getstate(),
             "numpy": (kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss)}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restores :func:`rng_state`."""
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def checkpoint_dirs(root: Path) -> list[Path]:
    """Complete checkpoints under ``root``, oldest first."""
    if not root.exists():
        return []
    return sorted(p for p in root.iterdir()
                  if p.is_dir() and p.name.startswith("step-") and not p.name.endswith(".tmp")
                  and (p / META).exists())


def save_checkpoint(root: Path, step: int, model: torch.nn.Module,
                    optimizer: torch.optim.Optimizer, extra: dict[str, Any], keep_last: int
                    ) -> Path:
    """Saves the training state after ``step`` steps (collective: every rank calls it)."""
    final = root / f"step-{step:08d}"
    tmp = root / f"step-{step:08d}.tmp"
    if _rank() == 0:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    _barrier()
    model_sd, optim_sd = get_state_dict(model, optimizer)
    with _quiet_single_process():
        dcp.save({"model": model_sd, "optim": optim_sd}, checkpoint_id=str(tmp))
    torch.save({"step": step, **extra, "rng": rng_state()}, tmp / f"rank-{_rank()}.pt")
    _barrier()
    if _rank() == 0:
        files = {p.name: _sha256(p) for p in sorted(tmp.iterdir()) if p.is_file()}
        world = dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
        meta = {"step": step, "world_size": world, "sha256": files}
        with open(tmp / META, "w") as f:
            json.dump(meta, f, indent=1)
            f.flush()
            os.fsync(f.fileno())
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        for old in checkpoint_dirs(root)[:-keep_last] if keep_last > 0 else []:
            shutil.rmtree(old, ignore_errors=True)
        for stale in root.glob("step-*.tmp"):
            shutil.rmtree(stale, ignore_errors=True)
    _barrier()
    return final


def verify_checkpoint(path: Path) -> dict[str, Any]:
    """Checks every file against meta.json; returns the meta. Raises on any mismatch."""
    meta_path = path / META
    if not meta_path.exists():
        raise FileNotFoundError(f"checkpoint {path} has no {META}: it is incomplete")
    meta = json.loads(meta_path.read_text())
    for name, digest in meta["sha256"].items():
        file = path / name
        if not file.exists():
            raise ValueError(f"checkpoint {path}: {name} is missing")
        if _sha256(file) != digest:
            raise ValueError(f"checkpoint {path}: {name} does not match its checksum; the "
                             "checkpoint is corrupt, resume from an older one")
    return meta


def load_checkpoint(path: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer
                    ) -> dict[str, Any]:
    """Loads model and optimizer state in place, restores the RNGs, and returns this rank's
    extras (step, loader state, ...). Collective."""
    meta = verify_checkpoint(path)
    world = dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
    if meta["world_size"] != world:
        raise ValueError(f"checkpoint {path} was written by {meta['world_size']} ranks, this "
                         f"run has {world}; resume with the same world size")
    model_sd, optim_sd = get_state_dict(model, optimizer)
    state = {"model": model_sd, "optim": optim_sd}
    with _quiet_single_process():
        dcp.load(state, checkpoint_id=str(path))
    set_state_dict(model, optimizer, model_state_dict=state["model"],
                   optim_state_dict=state["optim"])
    extra = torch.load(path / f"rank-{_rank()}.pt", weights_only=True)
    set_rng_state(extra.pop("rng"))
    return extra

"""The training config: typed dataclasses with a docstring per field, loaded from YAML.

    model: tiny                 # a preset of engine.model.PRESETS ...
    model_overrides: {dim: 96}  # ... with fields changed
    data: {tokens: out/demo-tokens/pretrain, seq_len: 128, batch_size: 8}
    optim: {lr: 1e-3, warmup_steps: 20}
    steps: 200

Command-line overrides use dotted keys: ``optim.lr=3e-4 steps=500``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from engine.model.config import ModelConfig, preset


@dataclass
class DataConfig:
    """Where the tokens come from and how they are batched."""

    tokens: str = ""
    """Token-shard directory written by ``crucible tokenize`` (its manifest.json)."""
    seq_len: int = 256
    """Tokens per packed row (the context length)."""
    batch_size: int = 8
    """Rows per micro-batch, per rank."""
    mixture: str | None = None
    """Mixture/curriculum YAML (engine.data.Mixture); None weighs groups by their size."""
    eval_tokens: str | None = None
    """A held-out token-shard directory for periodic evaluation; None disables eval."""
    eval_batches: int = 8
    """Micro-batches per evaluation (the same ones every time)."""
    seed: int = 0
    """Seed of the document order."""
    prefetch: int = 2
    """Batches prepared ahead by the loader's background thread."""

    def __post_init__(self) -> None:
        for name in ("seq_len", "batch_size", "eval_batches"):
            if getattr(self, name) < 1:
                raise ValueError(f"data.{name} must be >= 1 (got {getattr(self, name)})")


@dataclass
class OptimConfig:
    """FusedAdamW and the learning-rate schedule (linear warmup, cosine decay)."""

    lr: float = 3e-4
    """Peak learning rate."""
    min_lr_ratio: float = 0.1
    """The cosine decays to lr * min_lr_ratio at the last step."""
    warmup_steps: int = 100
    """Linear warmup from lr / warmup_steps."""
    betas: tuple[float, float] = (0.9, 0.95)
    """Adam betas."""
    eps: float = 1e-8
    """Adam epsilon."""
    weight_decay: float = 0.1
    """Decoupled weight decay of matrices (norms and embeddings... are not decayed: only
    tensors with 2+ dims except the embedding)."""
    max_grad_norm: float | None = 1.0
    """Global gradient-norm clip, fused into the update; None disables it."""

    def __post_init__(self) -> None:
        self.betas = tuple(self.betas)
        if self.lr <= 0 or not 0 <= self.min_lr_ratio <= 1 or self.warmup_steps < 0:
            raise ValueError("optim: need lr > 0, 0 <= min_lr_ratio <= 1, warmup_steps >= 0")


@dataclass
class CheckpointConfig:
    """torch.distributed.checkpoint snapshots of the whole training state."""

    every: int = 0
    """Save every N steps (0: only at the end)."""
    keep_last: int = 3
    """Checkpoints kept; older ones are deleted after a new one is complete."""
    resume: bool = True
    """Continue from the newest complete checkpoint in out_dir if there is one."""


@dataclass
class PipelineConfig:
    """Pipeline parallelism (``parallel: pipeline``): the model's blocks split over ranks."""

    schedule: str = "1f1b"
    """gpipe, 1f1b, interleaved-1f1b or zb-h1 (see ``crucible pipeline plan``)."""
    microbatches: int = 4
    """Micro-batches each batch is cut into; data.batch_size must be a multiple."""
    virtual_stages: int = 2
    """Model chunks per rank for interleaved-1f1b."""
    size: int = 0
    """Pipeline ranks per replica (0: all ranks); the world / size replicas are data parallel."""
    timeout_s: float = 300.0
    """Longest wait for a tensor from another stage before the step fails."""

    def __post_init__(self) -> None:
        schedules = ("gpipe", "1f1b", "interleaved-1f1b", "zb-h1")
        if self.schedule not in schedules:
            raise ValueError(f"pipeline.schedule must be one of {', '.join(schedules)} "
                             f"(got {self.schedule!r})")
        if self.microbatches < 1 or self.size < 0 or self.virtual_stages < 1:
            raise ValueError("pipeline.microbatches and pipeline.virtual_stages must be >= 1 "
                             "and pipeline.size >= 0")


@dataclass
class GuardConfig:
    """Loss-spike and NaN guard."""

    action: str = "skip"
    """What to do on a spike or a non-finite loss: ``skip`` the step (no update; its data is
    consumed), ``rollback`` to the last checkpoint and skip the offending data, or ``off``."""
    window: int = 50
    """Steps of loss history the z-score is computed over."""
    z_threshold: float = 6.0
    """A loss more than this many standard deviations above the window mean is a spike."""
    min_history: int = 20
    """Spikes are only detected once the window holds this many steps."""
    max_consecutive: int = 10
    """Abort after this many guarded steps in a row (the run is diverging, not spiking)."""

    def __post_init__(self) -> None:
        if self.action not in ("skip", "rollback", "off"):
            raise ValueError(f"guard.action must be skip, rollback or off (got {self.action!r})")


@dataclass
class TrainConfig:
    """A training run."""

    model: str = "tiny"
    """Model preset (engine.model.PRESETS)."""
    model_overrides: dict[str, Any] = field(default_factory=dict)
    """ModelConfig fields changed from the preset (e.g. vocab_size to match the tokenizer)."""
    attention: str = "crucible"
    """Attention kernel: ``crucible`` (our fused op) or ``sdpa`` (torch's)."""
    data: DataConfig = field(default_factory=DataConfig)
    """The token data."""
    optim: OptimConfig = field(default_factory=OptimConfig)
    """Optimizer and schedule."""
    steps: int = 1000
    """Optimizer steps."""
    grad_accum: int = 1
    """Micro-batches per optimizer step (per rank)."""
    dtype: str = "float32"
    """Compute dtype: ``float32`` or ``bfloat16`` (autocast; weights and optimizer in fp32)."""
    activation_checkpointing: bool = False
    """Recompute each block's activations in the backward pass instead of storing them."""
    compile: bool = False
    """torch.compile the model."""
    parallel: str = "auto"
    """``auto`` (DDP when launched on several ranks), ``none``, ``ddp``, ``fsdp`` (FSDP2
    fully_shard), ``deepspeed`` (ZeRO, see deepspeed_stage) or ``pipeline`` (see pipeline)."""
    deepspeed_stage: int = 1
    """ZeRO stage 1-3 for parallel: deepspeed."""
    eval_every: int = 0
    """Evaluate every N steps (0: never; needs data.eval_tokens)."""
    log_every: int = 10
    """Log every N steps (always the first and the last)."""
    out_dir: str = "out/train"
    """Logs (metrics.jsonl, TensorBoard), checkpoints/ and the exported model."""
    seed: int = 0
    """Seed of the weight init."""
    tensorboard: bool = True
    """Also write TensorBoard event files (when the tensorboard package is installed)."""
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    """Checkpointing."""
    guard: GuardConfig = field(default_factory=GuardConfig)
    """Loss-spike and NaN guard."""
    pipeline: PipelineConfig = field(default_factory=PipelineConfig)
    """Pipeline stages, for parallel: pipeline."""

    def __post_init__(self) -> None:
        if self.steps < 1 or self.grad_accum < 1:
            raise ValueError("steps and grad_accum must be >= 1")
        if self.dtype not in ("float32", "bfloat16"):
            raise ValueError(f"dtype must be float32 or bfloat16 (got {self.dtype!r})")
        if self.parallel not in ("auto", "none", "ddp", "fsdp", "deepspeed", "pipeline"):
            raise ValueError(f"parallel must be auto, none, ddp, fsdp, deepspeed or pipeline "
                             f"(got {self.parallel!r})")
        if self.parallel == "pipeline" and (self.activation_checkpointing or self.compile):
            raise ValueError("parallel: pipeline does not combine with activation_checkpointing "
                             "or compile yet; set both to false")
        if self.parallel == "pipeline" and self.data.batch_size % self.pipeline.microbatches:
            raise ValueError(f"data.batch_size {self.data.batch_size} is not a multiple of "
                             f"pipeline.microbatches {self.pipeline.microbatches}")
        if self.deepspeed_stage not in (1, 2, 3):
            raise ValueError(f"deepspeed_stage must be 1, 2 or 3 (got {self.deepspeed_stage})")
        if self.attention not in ("crucible", "sdpa"):
            raise ValueError(f"attention must be crucible or sdpa (got {self.attention!r})")

    def model_config(self) -> ModelConfig:
        """The model's config: the preset with the overrides applied."""
        return preset(self.model, **self.model_overrides)


_SECTIONS = {"data": DataConfig, "optim": OptimConfig, "checkpoint": CheckpointConfig,
             "guard": GuardConfig, "pipeline": PipelineConfig}


def train_config_from_dict(data: dict[str, Any]) -> TrainConfig:
    """A TrainConfig from a plain dict; unknown keys are errors that list the known ones."""
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    unknown = set(data) - known
    if unknown:
        raise ValueError(f"unknown config keys {sorted(unknown)}; known: {sorted(known)}")
    kwargs = dict(data)
    for name, cls in _SECTIONS.items():
        section = kwargs.get(name) or {}
        if isinstance(section, cls):
            continue
        fields = {f.name for f in dataclasses.fields(cls)}
        bad = set(section) - fields
        if bad:
            raise ValueError(f"unknown keys {sorted(bad)} in {name}; known: {sorted(fields)}")
        kwargs[name] = cls(**_coerce(cls, section, f"{name}."))
    return TrainConfig(**_coerce(TrainConfig, kwargs, ""))


def _parse_value(text: str) -> Any:
    return yaml.safe_load(text)


def _coerce(cls, values: dict[str, Any], where: str) -> dict[str, Any]:
    """YAML reads ``1e-3`` (no dot) as a string: convert strings in float/int fields."""
    types = {f.name: str(f.type) for f in dataclasses.fields(cls)}
    out = dict(values)
    for key, value in values.items():
        kind = types.get(key, "")
        if isinstance(value, str) and (kind.startswith("float") or kind.startswith("int")):
            try:
                out[key] = float(value) if kind.startswith("float") else int(value)
            except ValueError:
                raise ValueError(f"{where}{key}: {value!r} is not a number") from None
    return out


def load_train_config(path: str | Path | None, overrides: list[str] = ()) -> TrainConfig:
    """Reads a YAML config and applies ``key.sub=value`` overrides (values parsed as YAML)."""
    data: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(f"training config {path} does not exist")
        data = yaml.safe_load(path.read_text()) or {}
        if not isinstance(data, dict):
            raise ValueError(f"{path}: the config must be a mapping")
    for item in overrides:
        if "=" not in item:
            raise ValueError(f"override {item!r} is not KEY=VALUE (e.g. optim.lr=3e-4)")
        key, value = item.split("=", 1)
        target = data
        parts = key.split(".")
        for part in parts[:-1]:
            target = target.setdefault(part, {})
        target[parts[-1]] = _parse_value(value)
    return train_config_from_dict(data)


def config_to_dict(config: TrainConfig) -> dict[str, Any]:
    """A JSON/YAML-able dict of the config."""
    return dataclasses.asdict(config)

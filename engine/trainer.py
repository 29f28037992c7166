"""The trainer: owns the loop. Data (the packed loader), model (parallelized from outside),
FusedAdamW with fused clipping, the warmup + cosine schedule, bf16 autocast, gradient
accumulation, periodic eval, checkpoints that resume exactly, the spike/NaN guard, metrics.

    trainer = Trainer(load_train_config("train.yaml"))
    trainer.train()
"""

from __future__ import annotations

import contextlib
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.distributed as dist

from engine.checkpoint import checkpoint_dirs, load_checkpoint, save_checkpoint
from engine.config import TrainConfig, config_to_dict
from engine.distributed.parallel import DistInfo, init_distributed, parallelize
from engine.guard import SpikeGuard
from engine.metrics import MetricsLogger, device_peak, mfu
from engine.model import Transformer, flops_per_token
from engine.optim import FusedAdamW
from engine.schedule import lr_at

IGNORE = -100


@dataclass
class TrainResult:
    """What a finished run reports."""

    steps: int
    losses: dict[int, float] = field(default_factory=dict)      # step -> train loss
    eval_losses: dict[int, float] = field(default_factory=dict)
    guarded: dict[int, str] = field(default_factory=dict)       # step -> reason
    tokens_per_s: float = 0.0
    mfu: float = 0.0


def _all_mean(value: torch.Tensor, info: DistInfo) -> float:
    if info.world_size > 1:
        value = value.detach().clone()
        dist.all_reduce(value)
        value /= info.world_size
    return float(value)


class Trainer:
    """One training run (one process = one rank)."""

    def __init__(self, config: TrainConfig, info: DistInfo | None = None) -> None:
        from curation.tokens.layout import read_token_manifest
        from engine.data import Mixture, PackedLoader

        self.config = config
        self.info = info or init_distributed()
        self.mode = config.parallel if config.parallel != "auto" else (
            "ddp" if self.info.world_size > 1 else "none")
        self.out_dir = Path(config.out_dir)
        manifest = read_token_manifest(config.data.tokens)
        model_config = config.model_config()
        if model_config.vocab_size < manifest.vocab_size:
            raise ValueError(f"model vocab_size {model_config.vocab_size} < the tokenizer's "
                             f"{manifest.vocab_size} ({config.data.tokens}); set "
                             f"model_overrides.vocab_size: {manifest.vocab_size}")
        torch.manual_seed(config.seed)
        self.model = Transformer(model_config, config.attention).to(self.info.device)
        self.flops_per_token = flops_per_token(model_config, config.data.seq_len)
        self.pipeline = None
        if self.mode == "pipeline":
            from engine.distributed.pipeline import build_pipeline

            pc = config.pipeline
            self.pipeline = build_pipeline(self.model, pc.schedule, pc.microbatches,
                                           virtual_stages=pc.virtual_stages, pp_size=pc.size,
                                           timeout_s=pc.timeout_s)
            self.train_model = self.pipeline.module  # this rank's stages, the model's names
        else:
            # FSDP2 replaces the parameters with sharded ones: build the optimizer after it.
            self.train_model = parallelize(
                self.model, self.mode, self.info,
                activation_checkpointing=config.activation_checkpointing,
                compile=config.compile)
        # Pipeline ranks of one replica read the same data shard.
        self.data_rank, self.data_world = ((self.pipeline.replica, self.pipeline.replicas)
                                           if self.pipeline else
                                           (self.info.rank, self.info.world_size))
        self.optimizer = FusedAdamW(  # a pipeline clips over all its stages itself
            self._param_groups(), lr=config.optim.lr, betas=config.optim.betas,
            eps=config.optim.eps,
            max_grad_norm=None if self.mode in ("deepspeed", "pipeline")
            else config.optim.max_grad_norm)
        if self.mode == "deepspeed":
            from engine.distributed.deepspeed import initialize_deepspeed

            self.train_model = initialize_deepspeed(self.train_model, self.optimizer, config,
                                                    self.info.world_size)
        mixture = Mixture.from_yaml(config.data.mixture) if config.data.mixture else None
        self.loader = PackedLoader(manifest, config.data.seq_len, config.data.batch_size,
                                   mixture=mixture, seed=config.data.seed, rank=self.data_rank,
                                   world_size=self.data_world,
                                   prefetch=config.data.prefetch)
        self.guard = SpikeGuard(config.guard)
        self._rollbacks = 0  # since the last checkpoint
        self.step = 0
        self.ckpt_root = self.out_dir / "checkpoints"
        self.logger = MetricsLogger(self.out_dir, enabled=self.info.is_main,
                                    tensorboard=config.tensorboard, total_steps=config.steps)
        self.peak_name, self.peak = device_peak(self.info.device)
        if config.checkpoint.resume and checkpoint_dirs(self.ckpt_root):
            self._restore(checkpoint_dirs(self.ckpt_root)[-1], restore_loader=True)

    def _param_groups(self) -> list[dict]:
        decay, no_decay = [], []
        model = self.pipeline.module if self.pipeline is not None else self.model
        for name, p in model.named_parameters():
            (decay if p.dim() >= 2 and name != "embed.weight" else no_decay).append(p)
        return [{"params": decay, "weight_decay": self.config.optim.weight_decay},
                {"params": no_decay, "weight_decay": 0.0}]

    def _autocast(self):
        if self.config.dtype == "bfloat16":
            return torch.autocast(self.info.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def micro_loss(self, batch, step_tokens: int) -> torch.Tensor:
        """Summed token cross-entropy of one micro-batch over the step's target tokens on this
        rank (so accumulated micro-batches give the step's per-token mean)."""
        with self._autocast():
            loss = self.train_model(batch.input_ids, batch.position_ids, batch.cu_seqlens,
                                    batch.max_seqlen, labels=batch.labels)
        return loss / step_tokens

    def _backward_step(self, batches: list) -> torch.Tensor:
        step_tokens = max(1, int(sum((b.labels != IGNORE).sum() for b in batches)))
        if self.pipeline is not None:
            total = torch.zeros((), device=self.info.device)
            for batch in batches:
                with self._autocast():
                    total += self.pipeline.step(batch.input_ids, batch.labels,
                                                batch.position_ids, batch.cu_seqlens,
                                                token_count=step_tokens).loss
            return total
        total = torch.zeros((), device=self.info.device)
        for i, batch in enumerate(batches):
            last = i == len(batches) - 1
            sync = contextlib.nullcontext()
            if self.mode == "ddp" and not last:
                sync = self.train_model.no_sync()
            with sync:
                loss = self.micro_loss(batch, step_tokens)
                if self.mode == "deepspeed":
                    self.train_model.backward(loss * len(batches))
                else:
                    loss.backward()
            total += loss.detach()
        return total

    def train(self) -> TrainResult:
        """Runs until ``config.steps`` (or until the data ends); returns the losses."""
        cfg = self.config
        result = TrainResult(steps=self.step)
        if self.info.is_main:
            print(f"train: {sum(p.numel() for p in self.model.parameters()):,} parameters, "
                  f"{self.flops_per_token / 1e6:.1f} MFLOP/token, {self.mode} on "
                  f"{self.info.world_size} rank(s), peak {self.peak / 1e12:.2f} TFLOP/s "
                  f"({self.peak_name}), from step {self.step}", file=sys.stderr)
        tokens_per_step = (cfg.data.batch_size * cfg.data.seq_len * cfg.grad_accum
                           * self.data_world)
        data = iter(self.loader)
        window_start, window_steps = time.perf_counter(), 0
        while self.step < cfg.steps:
            lr = lr_at(self.step, lr=cfg.optim.lr, warmup_steps=cfg.optim.warmup_steps,
                       total_steps=cfg.steps, min_lr_ratio=cfg.optim.min_lr_ratio)
            for group in self.optimizer.param_groups:
                group["lr"] = lr
            try:
                batches = [next(data).to(self.info.device) for _ in range(cfg.grad_accum)]
            except StopIteration:
                if self.info.is_main:
                    print(f"train: the data ended at step {self.step}", file=sys.stderr)
                break
            loss = _all_mean(self._backward_step(batches), self.info)
            reason = self.guard.check(loss)
            if reason is not None:
                self._guarded(reason, loss, result)
                data = iter(self.loader) if cfg.guard.action == "rollback" else data
                continue
            if self.mode == "deepspeed":
                self.train_model.step()
                grad_norm = float(self.train_model.get_global_grad_norm() or 0.0)
            elif self.pipeline is not None:
                grad_norm = self.pipeline.clip_grad_norm_(cfg.optim.max_grad_norm)
                self.optimizer.step()
                self.optimizer.zero_grad(set_to_none=True)
            else:
                norm = self.optimizer.step()
                grad_norm = float(norm) if norm is not None else 0.0
                self.optimizer.zero_grad(set_to_none=True)
            self.step += 1
            window_steps += 1
            result.losses[self.step] = loss
            if self.step % cfg.log_every == 0 or self.step in (1, cfg.steps):
                elapsed = time.perf_counter() - window_start
                tps = tokens_per_step * window_steps / max(elapsed, 1e-9)
                result.tokens_per_s = tps
                result.mfu = mfu(tps, self.flops_per_token, self.peak, self.info.world_size)
                self.logger.log({"step": self.step, "loss": loss, "grad_norm": grad_norm,
                                 "lr": lr, "tokens_per_s": tps, "mfu": result.mfu,
                                 "phase": batches[-1].phase})
                window_start, window_steps = time.perf_counter(), 0
            if cfg.eval_every and cfg.data.eval_tokens and (
                    self.step % cfg.eval_every == 0 or self.step == cfg.steps):
                result.eval_losses[self.step] = self.evaluate()
                self.logger.log({"step": self.step, "event": "eval",
                                 "eval_loss": result.eval_losses[self.step]})
            if cfg.checkpoint.every and self.step % cfg.checkpoint.every == 0:
                self.save()
        if not cfg.checkpoint.every or self.step % cfg.checkpoint.every:
            self.save()
        result.steps = self.step
        self.loader.close()
        self.logger.close()
        return result

    def _guarded(self, reason: str, loss: float, result: TrainResult) -> None:
        """A spike or NaN: drop the gradients; skip the step or roll back to the checkpoint."""
        self.optimizer.zero_grad(set_to_none=True)
        action = self.config.guard.action
        ckpts = checkpoint_dirs(self.ckpt_root)
        if action == "rollback" and ckpts:
            self._rollbacks += 1
            if self._rollbacks > self.config.guard.max_consecutive:
                raise RuntimeError(f"{self._rollbacks} rollbacks without a new checkpoint (last: "
                                   f"{reason} at step {self.step + 1}); the run keeps diverging "
                                   "after fresh data: lower optim.lr or check the model")
            position = self.loader.state_dict()  # after the offending batch: skip its data
            at = self.step
            self._restore(ckpts[-1], restore_loader=False)
            self.loader.load_state_dict(position)
            event = f"rollback to step {self.step} (from {at})"
        else:
            self.step += 1  # the step is spent; its data is consumed
            event = "skipped step"
        result.guarded[self.step] = reason
        self.logger.log({"step": self.step, "event": event, "reason": reason, "loss": loss})

    @torch.no_grad()
    def evaluate(self) -> float:
        """Mean token loss over the first ``eval_batches`` batches of the held-out shards."""
        from engine.data import PackedLoader

        cfg = self.config
        self.train_model.eval()
        total = torch.zeros(2, dtype=torch.float64, device=self.info.device)
        with PackedLoader(cfg.data.eval_tokens, cfg.data.seq_len, cfg.data.batch_size,
                          seed=cfg.data.seed, rank=self.data_rank,
                          world_size=self.data_world, prefetch=0) as loader:
            for i, batch in enumerate(loader):
                if i == cfg.data.eval_batches:
                    break
                batch = batch.to(self.info.device)
                n = int((batch.labels != IGNORE).sum())
                if self.pipeline is not None:
                    total[0] += self.pipeline.evaluate(batch.input_ids, batch.labels,
                                                       batch.position_ids, batch.cu_seqlens,
                                                       token_count=1)
                else:
                    total[0] += float(self.micro_loss(batch, 1))
                total[1] += n
        if self.info.world_size > 1:
            dist.all_reduce(total)
        self.train_model.train()
        return float(total[0] / total[1].clamp(min=1))

    def save(self) -> Path:
        """Checkpoints the whole training state after the current step."""
        self._rollbacks = 0
        extra = {"loader": self.loader.state_dict(), "guard": self.guard.state_dict(),
                 "config": config_to_dict(self.config)}
        return save_checkpoint(self.ckpt_root, self.step, self.train_model, self.optimizer,
                               extra, self.config.checkpoint.keep_last)

    def _restore(self, path: Path, *, restore_loader: bool) -> None:
        extra = load_checkpoint(path, self.train_model, self.optimizer)
        self.step = int(extra["step"])
        self.guard.load_state_dict(extra["guard"])
        if restore_loader:
            self.loader.load_state_dict(extra["loader"])
        if self.info.is_main:
            print(f"train: resumed from {path}", file=sys.stderr)

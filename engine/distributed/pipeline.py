"""Pipeline-parallel runtime: splits the Transformer into stages and runs a schedule's actions
(engine/distributed/schedules.py) with torch.distributed point-to-point ops (gloo on CPU, NCCL
on GPU), zero-bubble backward split included; composes with data parallelism.

    schedule = build_schedule("1f1b", stages=pp_size, microbatches=8)
    runtime = PipelineRuntime(model, schedule, pp_group=pp, dp_group=dp)
    result = runtime.step(input_ids, labels)     # grads are in runtime.parameters()
    optimizer.step()

The trainer runs it with ``parallel: pipeline`` (see engine/config.py's PipelineConfig).
Every pipeline rank calls ``step`` with the same batch (the first stage reads the tokens, the
last the labels; ranks of one data-parallel replica share one data shard). A stage that raises
records the failure in the process group's store; the other ranks see it while they wait for a
tensor and raise PipelineError naming the failed rank, so a step ends everywhere instead of
hanging. Waits also end after ``timeout_s``.
"""

from __future__ import annotations

import concurrent.futures
import time
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import timedelta

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from engine.distributed.schedules import Action, Op, Schedule
from engine.distributed.stages import PipelineStage, RankModule
from engine.distributed.weight_grad import WeightGradCapture, autograd_weight_grads
from engine.model import Transformer

IGNORE = -100


class PipelineError(RuntimeError):
    """A pipeline step that could not finish: a stage raised, or a transfer timed out."""


class PeerFailedError(PipelineError):
    """This rank stopped because another pipeline rank failed (its message says which)."""


@dataclass
class PipelineStepResult:
    """What one pipeline step reports on every rank."""

    loss: float
    """Mean token cross-entropy of the whole batch (broadcast from the last stage)."""
    seconds: float
    """Wall time of the step on this rank."""
    compute_seconds: dict[str, float] = field(default_factory=dict)
    """This rank's time per compute op (F, B, I, W), summed over the step."""
    counts: dict[str, int] = field(default_factory=dict)
    """How many of each compute op this rank ran."""


@dataclass
class _MicroBatches:
    """A batch cut into the schedule's micro-batches along its rows."""

    tokens: tuple[torch.Tensor, ...]
    labels: tuple[torch.Tensor, ...]
    positions: tuple[torch.Tensor, ...]
    cu_seqlens: list[torch.Tensor | None]
    max_seqlen: list[int | None]
    token_count: int  # the loss is the token sum divided by this

    @classmethod
    def split(cls, m: int, input_ids, labels, position_ids, cu_seqlens, token_count
              ) -> _MicroBatches:
        if input_ids.dim() != 2 or input_ids.shape != labels.shape:
            raise ValueError(f"input_ids {tuple(input_ids.shape)} and labels "
                             f"{tuple(labels.shape)} must both be (batch, seq_len)")
        B, T = input_ids.shape
        if B % m:
            raise ValueError(f"batch size {B} is not a multiple of the schedule's {m} "
                             f"micro-batches; use a batch of k * {m} rows")
        if position_ids is None:
            position_ids = torch.arange(T, device=input_ids.device).expand(B, T)
        cu, longest = [None] * m, [None] * m
        if cu_seqlens is not None:
            span = B // m * T
            for i in range(m):
                lo, hi = i * span, (i + 1) * span
                part = cu_seqlens[(cu_seqlens >= lo) & (cu_seqlens <= hi)] - lo
                if part.numel() < 2 or int(part[0]) != 0 or int(part[-1]) != span:
                    raise ValueError(f"cu_seqlens has no segment boundary at micro-batch {i}'s "
                                     f"first or last token ({lo}, {hi}); packed rows must not "
                                     "continue a document across rows")
                cu[i] = part.to(torch.int32)
                longest[i] = int((part[1:] - part[:-1]).max())
        if token_count is None:
            token_count = int((labels != IGNORE).sum())
        return cls(input_ids.chunk(m), labels.chunk(m), position_ids.chunk(m), cu, longest,
                   max(1, int(token_count)))


@dataclass
class _MicroState:
    """What a stage keeps for one micro-batch between its F and its backward."""

    input: torch.Tensor | None = None     # detached stage input (requires grad), not stage 0
    output: torch.Tensor | None = None    # stage output, or the scaled loss on the last stage
    grad_output: torch.Tensor | None = None
    weights: WeightGradCapture | None = None  # split backward: what W needs from I


class PipelineRuntime:
    """Runs ``schedule`` on this rank's stages of ``model``.

    ``pp_group`` holds the pipeline ranks in stage order (default: the whole world);
    ``dp_group`` the ranks that hold the same stages in other data-parallel replicas, whose
    gradients are averaged after each step. ``store`` carries failure notices (default: the
    process group's store); ``timeout_s`` bounds every wait for a tensor;
    ``recv_lookahead`` receives are kept posted ahead of the one being waited for (each holds
    a buffer of one micro-batch's activations)."""

    def __init__(self, model: Transformer, schedule: Schedule, *,
                 pp_group: dist.ProcessGroup | None = None,
                 dp_group: dist.ProcessGroup | None = None,
                 store: dist.Store | None = None, timeout_s: float = 60.0,
                 recv_lookahead: int = 2) -> None:
        schedule.check()
        self.schedule, self.pp_group, self.dp_group = schedule, pp_group, dp_group
        self.replicas = 1 if dp_group is None else dist.get_world_size(dp_group)
        """Data-parallel replicas of the pipeline (each loads its own data shard)."""
        self.replica = 0 if dp_group is None else dist.get_rank(dp_group)
        """This rank's replica: its data shard index."""
        self.rank = dist.get_rank(pp_group)
        world = dist.get_world_size(pp_group)
        if world != schedule.ranks:
            raise ValueError(f"the {schedule.kind} schedule has {schedule.ranks} ranks but the "
                             f"pipeline group has {world}; build the schedule with "
                             f"stages={world}")
        self.store = store if store is not None else dist.distributed_c10d._get_default_store()
        if recv_lookahead < 1:
            raise ValueError(f"recv_lookahead must be >= 1 (got {recv_lookahead})")
        self.timeout_s, self.recv_lookahead = timeout_s, recv_lookahead
        n = schedule.num_stages
        self.stages = {s: PipelineStage(model, s, n) for s in schedule.rank_stages(self.rank)}
        self.module = RankModule(self.stages.values())
        """This rank's stages as one module under the model's parameter names: give it to
        the optimizer and to engine.checkpoint's save/load (each rank saves its own slice)."""
        self.actions = schedule.actions(self.rank)
        # Split backward: W from the layer inputs and output gradients I recorded.
        self._capture = {s: schedule.split_backward and WeightGradCapture.supports(stage)
                         for s, stage in self.stages.items()}
        self.dim = model.config.dim
        self.dtype = next(model.parameters()).dtype
        self.device = next(model.parameters()).device
        self._step = 0
        self._waiter = concurrent.futures.ThreadPoolExecutor(1, "pipeline-wait")

    def parameters(self) -> list[nn.Parameter]:
        """This rank's parameters (what its optimizer updates)."""
        return list(self.module.parameters())

    def _peer(self, stage: int) -> int:
        rank = self.schedule.stage_rank(stage)
        return rank if self.pp_group is None else dist.get_global_rank(self.pp_group, rank)

    def _tag(self, direction: int, stage: int, mb: int) -> int:
        return (direction * self.schedule.num_stages + stage) * self.schedule.microbatches + mb

    def _failure_key(self) -> str:
        return f"crucible/pipeline/{self._step}/failed"

    def _wait(self, work: dist.Work, what: str) -> None:
        """Waits for a transfer, watching for a failed peer and the timeout. Gloo's transfers
        neither report completion nor survive a timed-out wait, so a helper thread blocks in
        ``wait()`` while this one polls the store."""
        done = self._waiter.submit(work.wait)
        deadline = time.monotonic() + self.timeout_s
        while True:
            try:
                done.result(timeout=0.02)
                return
            except concurrent.futures.TimeoutError:
                pass
            except Exception as exc:
                self._raise_if_peer_failed(what)
                raise PipelineError(f"pipeline rank {self.rank}: waiting for {what} failed "
                                    f"(step {self._step}): {exc}") from exc
            self._raise_if_peer_failed(what)
            if time.monotonic() > deadline:
                raise PipelineError(f"pipeline rank {self.rank}: {what} did not arrive within "
                                    f"{self.timeout_s:g}s (step {self._step}); a peer rank is "
                                    "stuck or gone; raise timeout_s if stages are this slow")

    def _raise_if_peer_failed(self, what: str) -> None:
        key = self._failure_key()
        if self.store.check([key]):
            raise PeerFailedError(f"pipeline rank {self.rank}: step {self._step} aborted "
                                  f"while waiting for {what}, because "
                                  f"{self.store.get(key).decode()}")

    def step(self, input_ids: torch.Tensor, labels: torch.Tensor,
             position_ids: torch.Tensor | None = None, cu_seqlens: torch.Tensor | None = None,
             *, token_count: int | None = None) -> PipelineStepResult:
        """Forward and backward of one batch (B, T) split into the schedule's micro-batches
        along B. Gradients accumulate into this rank's parameters (averaged over
        ``dp_group``). The loss is the token cross-entropy summed over the batch (labels ==
        -100 ignored) divided by ``token_count`` (default: the batch's target tokens, i.e. the
        mean): the same number and gradients as the unsplit model on the whole batch. Packed
        batches pass ``position_ids`` and ``cu_seqlens`` (every row boundary a segment
        boundary, as engine.data's loader makes them)."""
        start = time.perf_counter()
        batch = _MicroBatches.split(self.schedule.microbatches, input_ids, labels, position_ids,
                                    cu_seqlens, token_count)
        loss, times, counts = self._guarded_run(batch, forward_only=False)
        self._reduce_data_parallel()
        loss = self._broadcast_loss(loss)
        return PipelineStepResult(loss, time.perf_counter() - start, dict(times), dict(counts))

    @torch.no_grad()
    def evaluate(self, input_ids: torch.Tensor, labels: torch.Tensor,
                 position_ids: torch.Tensor | None = None,
                 cu_seqlens: torch.Tensor | None = None, *, token_count: int | None = None
                 ) -> float:
        """The loss of ``step`` from the forwards alone (no gradients), on every rank."""
        batch = _MicroBatches.split(self.schedule.microbatches, input_ids, labels, position_ids,
                                    cu_seqlens, token_count)
        loss, _, _ = self._guarded_run(batch, forward_only=True)
        return self._broadcast_loss(loss)

    def clip_grad_norm_(self, max_norm: float | None) -> float:
        """The global L2 norm of the gradients of every stage (all pipeline ranks), and, with
        ``max_norm``, every gradient scaled by ``min(1, max_norm / (norm + 1e-6))`` as
        ``torch.nn.utils.clip_grad_norm_`` does on the unsplit model. Collective over the
        pipeline group."""
        grads = [p.grad for p in self.parameters() if p.grad is not None]
        local = torch.zeros((), dtype=torch.float64, device=self.device)
        for g in grads:
            local += g.detach().double().pow(2).sum()
        dist.all_reduce(local, group=self.pp_group)
        norm = float(local.sqrt())
        if max_norm is not None and norm + 1e-6 > max_norm:
            coef = max_norm / (norm + 1e-6)
            for g in grads:
                g.mul_(coef)
        return norm

    def _guarded_run(self, batch: _MicroBatches, forward_only: bool):
        """``_run`` with failures recorded for, and read from, the other ranks."""
        self._step += 1
        try:
            return self._run(batch, forward_only)
        except PeerFailedError:
            raise
        except PipelineError as exc:  # a timeout: tell the others, who may wait on this rank
            self.store.compare_set(self._failure_key(), "", str(exc))
            raise
        except BaseException as exc:
            # A transfer can also fail because a failed peer's process is gone: report the
            # peer's failure, not the broken connection.
            self._raise_if_peer_failed("its transfers")
            notice = (f"pipeline rank {self.rank} (stages {sorted(self.stages)}) failed: "
                      f"{type(exc).__name__}: {exc}")
            self.store.compare_set(self._failure_key(), "", notice)
            raise PipelineError(notice) from exc

    def _run(self, batch: _MicroBatches, forward_only: bool):
        states: dict[tuple[int, int], _MicroState] = defaultdict(_MicroState)
        # (stage, mb) -> a tensor that stage consumes (inbox) or hands to a peer (outbox).
        inbox_f: dict[tuple[int, int], torch.Tensor] = {}
        inbox_b: dict[tuple[int, int], torch.Tensor] = {}
        outbox: dict[tuple[Op, int, int], torch.Tensor] = {}
        sends: list[dist.Work] = []
        loss = torch.zeros((), dtype=torch.float32)
        times: dict[str, float] = defaultdict(float)
        counts: dict[str, int] = defaultdict(int)
        actions = [a for a in self.actions
                   if not forward_only or a.op in (Op.FORWARD, Op.SEND_F, Op.RECV_F)]
        recvs = [i for i, a in enumerate(actions) if a.op in (Op.RECV_F, Op.RECV_B)]
        posted: dict[int, tuple[dist.Work, torch.Tensor]] = {}
        next_recv = 0
        for i, action in enumerate(actions):
            # Keep the next few receives posted, so data lands while this rank computes.
            while next_recv < len(recvs) and len(posted) < self.recv_lookahead:
                j = recvs[next_recv]
                posted[j] = self._post_recv(actions[j], batch.tokens)
                next_recv += 1
            t0 = time.perf_counter()
            if action.op is Op.FORWARD:
                loss += self._forward(action, states, inbox_f, outbox, batch)
            elif action.op in (Op.FULL_BACKWARD, Op.BACKWARD_INPUT):
                self._backward_input(action, states, inbox_b, outbox)
            elif action.op is Op.BACKWARD_WEIGHT:
                self._backward_weight(action, states)
            elif action.op in (Op.SEND_F, Op.SEND_B):
                sends.append(self._send(action, outbox))
            else:
                self._recv(action, posted.pop(i), inbox_f, inbox_b)
            if action.op.is_compute:
                times[action.op.value] += time.perf_counter() - t0
                counts[action.op.value] += 1
        for work in sends:
            self._wait(work, "a send to finish")
        return loss, times, counts

    def _forward(self, a: Action, states, inbox_f, outbox, batch: _MicroBatches
                 ) -> torch.Tensor:
        s, mb = a.stage, a.microbatch
        st = states[(s, mb)]
        if s == 0:
            x = batch.tokens[mb]
        else:
            x = st.input = inbox_f.pop((s, mb)).detach().requires_grad_(torch.is_grad_enabled())
        args = (x, batch.positions[mb], batch.cu_seqlens[mb], batch.max_seqlen[mb])
        if s > 0 and self._capture[s] and torch.is_grad_enabled():
            st.weights = WeightGradCapture()
            with st.weights.recording(self.stages[s]):
                out = self.stages[s](*args)
        else:
            out = self.stages[s](*args)
        if s == self.schedule.num_stages - 1:
            # Summed over the micro-batch, divided by the batch's tokens: the micro-batch
            # losses add up to the batch mean, and so do their gradients.
            out = F.cross_entropy(out.float().flatten(0, 1), batch.labels[mb].flatten(),
                                  ignore_index=IGNORE, reduction="sum") / batch.token_count
            st.output = out
            return out.detach().cpu()
        st.output = out
        if self.schedule.stage_rank(s + 1) == self.rank:
            inbox_f[(s + 1, mb)] = out
        else:
            outbox[(Op.SEND_F, s, mb)] = out.detach()
        return torch.zeros(())

    def _backward_input(self, a: Action, states, inbox_b, outbox) -> None:
        """B (full backward) or I (input gradient only, the graph kept for W)."""
        s, mb = a.stage, a.microbatch
        st = states[(s, mb)]
        st.grad_output = None if s == self.schedule.num_stages - 1 else inbox_b.pop((s, mb))
        if a.op is Op.FULL_BACKWARD:
            st.output.backward(st.grad_output)
            grad_in = st.input.grad if st.input is not None else None
            del states[(s, mb)]
        elif st.input is not None:
            # With a weight capture W needs no graph; otherwise W walks this one again.
            (grad_in,) = torch.autograd.grad(st.output, st.input, st.grad_output,
                                             retain_graph=st.weights is None)
        else:
            grad_in = None  # the first stage's input is token ids: W does all the work
        if grad_in is None:
            return
        if self.schedule.stage_rank(s - 1) == self.rank:
            inbox_b[(s - 1, mb)] = grad_in
        else:
            outbox[(Op.SEND_B, s, mb)] = grad_in

    def _backward_weight(self, a: Action, states) -> None:
        """W: the weight gradients of a stage whose I already ran."""
        st = states.pop((a.stage, a.microbatch))
        if st.weights is not None:
            st.weights.apply()
        else:
            autograd_weight_grads(st.output, st.grad_output, self.stages[a.stage])

    def _send(self, a: Action, outbox) -> dist.Work:
        s, mb = a.stage, a.microbatch
        tensor = outbox.pop((a.op, s, mb)).contiguous()
        if a.op is Op.SEND_F:
            return dist.isend(tensor, self._peer(s + 1), tag=self._tag(0, s + 1, mb))
        return dist.isend(tensor, self._peer(s - 1), tag=self._tag(1, s - 1, mb))

    def _post_recv(self, a: Action, tokens) -> tuple[dist.Work, torch.Tensor]:
        s, mb = a.stage, a.microbatch
        buf = torch.empty(tokens[mb].shape + (self.dim,), dtype=self.dtype, device=self.device)
        if a.op is Op.RECV_F:
            return dist.irecv(buf, self._peer(s - 1), tag=self._tag(0, s, mb)), buf
        return dist.irecv(buf, self._peer(s + 1), tag=self._tag(1, s, mb)), buf

    def _recv(self, a: Action, posted: tuple[dist.Work, torch.Tensor], inbox_f, inbox_b
              ) -> None:
        work, buf = posted
        s, mb = a.stage, a.microbatch
        if a.op is Op.RECV_F:
            self._wait(work, f"the activations of stage {s - 1}, micro-batch {mb}")
            inbox_f[(s, mb)] = buf
        else:
            self._wait(work, f"the gradient from stage {s + 1}, micro-batch {mb}")
            inbox_b[(s, mb)] = buf

    def _reduce_data_parallel(self) -> None:
        if self.dp_group is None or dist.get_world_size(self.dp_group) == 1:
            return
        grads = [p.grad for p in self.parameters() if p.grad is not None]
        flat = torch.cat([g.flatten() for g in grads])
        dist.all_reduce(flat, group=self.dp_group)
        flat /= dist.get_world_size(self.dp_group)
        offset = 0
        for g in grads:
            g.copy_(flat[offset:offset + g.numel()].view_as(g))
            offset += g.numel()

    def _broadcast_loss(self, loss: torch.Tensor) -> float:
        value = loss.to(self.device).reshape(1).clone()
        dist.broadcast(value, self._peer(self.schedule.num_stages - 1), group=self.pp_group)
        return float(value)


def init_pipeline_groups(pp_size: int, timeout_s: float = 60.0
                         ) -> tuple[dist.ProcessGroup, dist.ProcessGroup | None]:
    """Splits the world into data-parallel replicas of ``pp_size`` pipeline ranks: global
    rank = replica * pp_size + pipeline rank. Returns (this rank's pipeline group, its
    data-parallel group or None when there is one replica). Every rank must call it."""
    world, rank = dist.get_world_size(), dist.get_rank()
    if world % pp_size:
        raise ValueError(f"world size {world} is not a multiple of pp_size {pp_size}")
    timeout = timedelta(seconds=timeout_s)
    pp_group = dp_group = None
    for replica in range(world // pp_size):
        ranks = list(range(replica * pp_size, (replica + 1) * pp_size))
        group = dist.new_group(ranks, timeout=timeout)
        if rank in ranks:
            pp_group = group
    if world // pp_size > 1:
        for stage_rank in range(pp_size):
            ranks = list(range(stage_rank, world, pp_size))
            group = dist.new_group(ranks, timeout=timeout)
            if rank in ranks:
                dp_group = group
    return pp_group, dp_group


def build_pipeline(model: Transformer, schedule: str, microbatches: int, *,
                   virtual_stages: int = 2, pp_size: int = 0, timeout_s: float = 300.0
                   ) -> PipelineRuntime:
    """The runtime for this rank under an initialised process group: the world split into
    data-parallel replicas of ``pp_size`` pipeline ranks (0: one replica of all ranks), the
    ``schedule`` (gpipe, 1f1b, interleaved-1f1b with ``virtual_stages``, zb-h1) generated for
    them. Collective: every rank calls it."""
    from engine.distributed.schedules import build_schedule

    if not dist.is_initialized():
        raise RuntimeError("a pipeline needs torch.distributed: launch with torchrun "
                           "(--nproc_per_node = pipeline ranks x data-parallel replicas)")
    pp_size = pp_size or dist.get_world_size()
    pp_group, dp_group = init_pipeline_groups(pp_size, timeout_s)
    v = virtual_stages if schedule == "interleaved-1f1b" else 1
    return PipelineRuntime(model, build_schedule(schedule, pp_size, microbatches, v),
                           pp_group=pp_group, dp_group=dp_group, timeout_s=timeout_s)

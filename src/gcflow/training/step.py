"""One training step: this process's draws, the pairs, the loss, the gradient and the update.

`TrainStep` is the hot path of the bundled trainer and the object benchmarks/step.py times. It only
composes library parts (sigmas, pairs, loss, EMA); what it adds is scheduling:

* **Randomness of the global batch.** Levels, noise and the GC selection are drawn for the whole
  global batch from the (seed, step, stream) generators and sliced to this process's rows, so W
  processes see exactly the single-process batch. The dropout seed is per process.
* **No host–device synchronisation on CUDA.** Draws made on the host (levels, GC selection) reach
  the device through pinned memory without blocking; the GC selection stays on the host, so the
  size of the predictor's subset is known without reading the device; the loss and gradient norm
  are returned as device tensors for the caller to check when it syncs anyway.
* **The OT assignment off the critical path.** The exact assignment runs on the CPU (SciPy). On
  CUDA the step draws step k+1's batch before queueing step k's work and solves its assignment in a
  worker thread while the GPU computes step k (SciPy releases the GIL); the result is identical to
  solving it in place. With several processes each couples its own slice of the batch (minibatch OT
  within B/W samples, not B).
* **Mixed precision and layout.** The network passes (teacher, student, GC predictor) run under
  bf16/fp16 autocast as train.precision says (auto: bf16 while its check passes, see
  precision_policy.py); the preconditioning's skip path, the distance and the loss stay in float32.
  The predictor and teacher passes run under no_grad.
* **Few shapes for the GC predictor.** It runs on the μ-selected rows only (a binomial number of
  them); on CUDA those rows are padded to a multiple of b/16, so cuDNN autotuning and
  torch.compile meet ~4 batch sizes instead of ~70 (at most b/16 − 1 extra rows per step).
* **Optional torch.compile** of the passes (train.compile).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from gcflow.distances import get_distance
from gcflow.dropout import SharedDropout
from gcflow.ema import EmaSchedule, ema_step
from gcflow.loss import consistency_loss
from gcflow.pairs import PairRecipe, build_pairs
from gcflow.pairs.coupling import ot_assignment
from gcflow.pairs.gc import select_gc
from gcflow.pairs.types import PointFn
from gcflow.randomness import step_generator, stream_seed
from gcflow.schedules import MuSchedule
from gcflow.sigmas import ict_num_scales, sample_noise_levels
from gcflow.training.config import Config
from gcflow.training.distributed import World
from gcflow.training.objectives import get_objective
from gcflow.training.precision_policy import PrecisionPolicy


def to_device(t: Tensor, device: torch.device) -> Tensor:
    """Copy a host tensor to `device`; to CUDA through pinned memory, without waiting for the device."""
    if device.type == "cuda":
        return t.pin_memory().to(device, non_blocking=True)
    return t.to(device)


@dataclass
class StepInputs:
    """Everything training step k consumes on this process (b = global batch / processes).

    Attributes:
        step: k (0-based).
        n_scales: N(k), the curriculum's number of grid intervals.
        x0: (b, *D) this process's slice of global data batch k; labels: (b,) int64 or None.
        z: (b, *D) its slice of the global noise, as drawn (before any coupling).
        sigma_i, sigma_next, weight: (b,) its slice of the global levels and weights λ_i.
        gc_mask: (b,) bool on the host (True = GC pair), or None when μ = 0.
        dropout: the shared dropout seed of this step and process.
        perm: the OT permutation of z's rows ((b,) int64), a Future of (perm, ready event), or None.
    """

    step: int
    n_scales: int
    x0: Tensor
    labels: Tensor | None
    z: Tensor
    sigma_i: Tensor
    sigma_next: Tensor
    weight: Tensor
    gc_mask: Tensor | None
    dropout: SharedDropout
    perm: Any = None


def mu_schedule(cfg: Config) -> MuSchedule:
    """μ(k) from method.gc_mu, gc_mu_end (-1 = constant) and gc_start."""
    m = cfg.method
    return MuSchedule(m.gc_mu, None if m.gc_mu_end == -1.0 else m.gc_mu_end, m.gc_start)


def ema_schedule(cfg: Config, decay: float) -> EmaSchedule:
    """The EMA schedule of optim.ema_*; `decay` is the constant schedule's β (from ema_decay or ema_half_life)."""
    o = cfg.optim
    start = None if o.ema_start < 0 else o.ema_start
    if o.ema_schedule == "warmup":
        return EmaSchedule(o.ema_decay, True, o.ema_update_every, start, o.ema_inv_gamma, o.ema_power)
    return EmaSchedule(decay, False, o.ema_update_every, start)


def draw_inputs(
    cfg: Config, source: Any, step: int, device: torch.device, world: World = World(), channels_last: bool = False
) -> StepInputs:
    """Draw step `step`'s global levels, noise and GC selection and keep this process's rows."""
    t, m = cfg.train, cfg.method
    n_scales = ict_num_scales(step, t.steps, m.s0, m.s1)
    x0, labels = source.batch(step)
    b = x0.shape[0]
    lo = world.rank * b
    levels = sample_noise_levels(
        n_scales,
        t.batch_size,
        sigma_min=m.sigma_min,
        sigma_max=m.sigma_max,
        rho=m.rho,
        p_mean=m.p_mean,
        p_std=m.p_std,
        generator=step_generator(t.seed, step, "levels"),
        device=None,
    )
    sig_i, sig_n, weight = to_device(torch.stack(levels)[:, lo : lo + b], device).unbind(0)
    z = torch.randn(
        (t.batch_size, *x0.shape[1:]), generator=step_generator(t.seed, step, "noise", device), device=device
    )[lo : lo + b]
    gc_mask, mu = None, mu_schedule(cfg)
    if mu.ever_gc:  # a constant μ draws exactly as before schedules existed
        gc_mask = select_gc(t.batch_size, mu.at(step, t.steps), step_generator(t.seed, step, "gc"))[lo : lo + b]
    if channels_last and x0.ndim == 4:
        x0, z = x0.contiguous(memory_format=torch.channels_last), z.contiguous(memory_format=torch.channels_last)
    dropout = SharedDropout(stream_seed(t.seed, step, "dropout", world.rank), device)
    return StepInputs(step, n_scales, x0, labels, z, sig_i, sig_n, weight, gc_mask, dropout)


class TrainStep:
    """gcflow's training step on one process: `forward_backward(k)`, then `update()` or `discard()`.

    Args:
        cfg: the run's config (method, optim.grad_clip, train.{precision, compile, channels_last}).
        source: the data source (`batch(step)`, `state_dict()`, `load_state_dict()`).
        model: the online consistency model f_θ (already on `device`, in its memory format).
        ema: the EMA copy, updated after optimizer steps by the schedule of optim.ema_* (`ema_schedule`).
        opt: the optimizer over `model`'s parameters.
        device: the device of this process.
        decay: the constant EMA schedule's per-step decay (ignored by optim.ema_schedule=warmup).
        world: this process's place in a data-parallel run (wraps the model in DDP when size > 1).
        predictor: the GC predictor f_η (x, σ[, class_labels]) -> x̂, or None.
        velocity: the CD velocity, or None.
        loss_fn: the per-sample consistency loss (the trainer passes gcflow.loss.consistency_loss).
        overlap_ot: solve step k+1's OT assignment during step k (default: on CUDA).
        pad_predictor: run the GC predictor on its rows padded to a multiple of b/16 (default: on
            CUDA), so that cuDNN autotuning and torch.compile meet a few batch sizes, not ~70.
    """

    def __init__(
        self,
        cfg: Config,
        source: Any,
        model: nn.Module,
        ema: nn.Module,
        opt: torch.optim.Optimizer,
        *,
        device: torch.device,
        decay: float,
        world: World = World(),
        predictor: Callable[..., Tensor] | None = None,
        velocity: PointFn | None = None,
        loss_fn: Callable[..., Tensor] = consistency_loss,
        overlap_ot: bool | None = None,
        pad_predictor: bool | None = None,
    ) -> None:
        t, m = cfg.train, cfg.method
        self.cfg, self.source, self.model, self.ema, self.opt = cfg, source, model, ema, opt
        self.device, self.decay, self.world, self.loss_fn = device, decay, world, loss_fn
        self.velocity = velocity
        self.ema_schedule = ema_schedule(cfg, decay)
        self.precision = PrecisionPolicy(cfg, device, world)  # fixed, or train.precision=auto's checks
        self._step = -1
        self.channels_last = bool(t.channels_last and cfg.network.kind == "songunet")
        # The coupling is applied here (see _coupled_noise: the OT assignment may be solved a step
        # ahead in a worker thread) and the GC mask is drawn for the global batch (draw_inputs);
        # build_pairs gets both, as in a user's own loop.
        self.recipe = PairRecipe(kind="cd" if m.pairs == "cd" else "ct", cd_solver=m.cd_solver)
        self.objective = get_objective(m.pairs)  # training/objectives.py: ct/cd pairs, edm, ect
        self.ot = m.coupling == "ot"
        self.distance = get_distance(m.distance)
        self.max_norm = cfg.optim.grad_clip if cfg.optim.grad_clip > 0 else math.inf
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.n_scales = 0
        self.mu_schedule = mu_schedule(cfg)
        self.mu, self.gc_rows = self.mu_schedule.at(0, t.steps), 0

        # The student pass goes through DDP (gradient averaging) with several processes; the
        # no-grad passes use the plain module.
        grad_net: nn.Module = model
        if world.distributed:
            from torch.nn.parallel import DistributedDataParallel as DDP

            grad_net = DDP(
                model,
                device_ids=[device.index] if device.type == "cuda" else None,
                broadcast_buffers=False,
                gradient_as_bucket_view=True,
            )
        nograd_net: nn.Module = model
        if t.compile:
            grad_net = torch.compile(grad_net)  # type: ignore[assignment]
            nograd_net = torch.compile(model) if world.distributed else grad_net  # type: ignore[assignment]
        self._grad_net, self._nograd_net = grad_net, nograd_net
        pad = device.type == "cuda" if pad_predictor is None else pad_predictor
        self.predictor_rows = max(8, t.batch_size // world.size // 16) if pad else 1
        self.predictor = self._autocast_fn(predictor) if predictor is not None else None

        self.overlap_ot = self.ot and (device.type == "cuda" if overlap_ot is None else overlap_ot)
        self._pool: ThreadPoolExecutor | None = None
        self._side = torch.cuda.Stream(device) if (self.overlap_ot and device.type == "cuda") else None
        self._next: tuple[StepInputs, dict] | None = None  # step k+1's inputs and the source state after them

    # -- Inputs --------------------------------------------------------------------------------

    def inputs(self, step: int) -> StepInputs:
        """Draw step `step`'s inputs on this process (and start or solve its OT assignment)."""
        inp = draw_inputs(self.cfg, self.source, step, self.device, self.world, self.channels_last)
        if self.ot:
            inp.perm = self._assign(inp.x0, inp.z)
        return inp

    def _assign(self, x0: Tensor, z: Tensor) -> Any:
        if not self.overlap_ot:
            return ot_assignment(x0, z)
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="gcflow-ot")
        ready = None
        if self._side is not None:
            ready = torch.cuda.Event()
            ready.record()  # x0 and z are queued on the current stream before this point
        return self._pool.submit(self._assign_worker, x0, z, ready)

    def _assign_worker(self, x0: Tensor, z: Tensor, ready: Any) -> tuple[Tensor, Any]:
        if ready is None:
            return ot_assignment(x0, z), None
        with torch.cuda.stream(self._side):  # the cost matrix and its copy wait only for x0 and z
            self._side.wait_event(ready)
            perm = ot_assignment(x0, z)
            done = torch.cuda.Event()
            done.record(self._side)
        return perm, done

    def _coupled_noise(self, inp: StepInputs) -> Tensor:
        """z with its rows matched to x0 by the coupling (independent: as drawn)."""
        if not self.ot:
            return inp.z
        perm = inp.perm
        if isinstance(perm, Future):
            perm, done = perm.result()
            if done is not None:
                stream = torch.cuda.current_stream(self.device)
                stream.wait_event(done)
                perm.record_stream(stream)
        return inp.z[perm]

    def _take(self, step: int) -> StepInputs:
        nxt, self._next = self._next, None
        if nxt is not None and nxt[0].step == step:
            inp, after = nxt
            self.source.load_state_dict(after)  # where batch(step) leaves the source
        else:
            inp = self.inputs(step)
        if self.overlap_ot and step + 1 < self.cfg.train.steps:
            # Queue step k+1's batch now, ahead of step k's work, and solve its assignment meanwhile.
            # The source's state is put back: a checkpoint after step k records step k's place.
            state = self.source.state_dict()
            ahead = self.inputs(step + 1)
            self._next = (ahead, self.source.state_dict())
            self.source.load_state_dict(state)
        return inp

    # -- Passes --------------------------------------------------------------------------------

    @property
    def dtype(self) -> torch.dtype:
        """The network passes' dtype now (train.precision=auto changes it at its checks)."""
        return self.precision.dtype

    def _autocast(self) -> contextlib.AbstractContextManager:
        return self.precision.autocast()

    def _autocast_fn(self, fn: Callable[..., Tensor]) -> Callable[..., Tensor]:
        def run(x: Tensor, s: Tensor, *rest: Any) -> Tensor:
            n = x.shape[0]
            pad = -n % self.predictor_rows
            if pad:  # repeat the first row; the padded rows' outputs are dropped (every op is per-sample)
                x, s, *rest = (torch.cat([t, t[:1].expand(pad, *t.shape[1:])]) for t in (x, s, *rest))
            with self._autocast():
                return fn(x, s, *rest)[:n]

        return run

    def _step_predictor(self, inp: StepInputs) -> PointFn | None:
        """The GC predictor for this step. It sees only the GC rows, in mask order; class-conditional
        runs pass those rows' labels along (gathered with host-side indices: no device sync)."""
        predictor = self.predictor
        if predictor is None or inp.labels is None or inp.gc_mask is None:
            return predictor
        rows = to_device(inp.gc_mask.nonzero(as_tuple=True)[0], self.device)
        gc_labels = inp.labels.index_select(0, rows)
        return lambda x, s: predictor(x, s, gc_labels)

    def _model_fn(self, labels: Tensor | None) -> PointFn:
        """f_θ(x, σ) for the loss: the DDP/compiled module when gradients flow, the plain one otherwise."""

        def f(x: Tensor, s: Tensor) -> Tensor:
            net = self._grad_net if torch.is_grad_enabled() else self._nograd_net
            with self._autocast():
                return net(x, s, labels) if labels is not None else net(x, s)

        return f

    def pairs(self, inp: StepInputs, z: Tensor) -> Any:
        """This step's CT/CD pairs (GC rows where inp.gc_mask): the library call a user's own loop makes."""
        return build_pairs(
            self.recipe,
            inp.x0,
            z,
            inp.sigma_i,
            inp.sigma_next,
            inp.weight,
            gc_mask=inp.gc_mask,
            predictor=self._step_predictor(inp),
            velocity=self.velocity,
        )

    def forward_backward(self, step: int) -> tuple[Tensor, Tensor]:
        """Loss and gradient on global batch `step` (this process's slice); returns (loss, gradient norm).

        Both are 0-d device tensors; nothing here waits for the device. With several processes the
        gradients are averaged over processes when this returns (DDP), and the gradient norm is
        that of the averaged gradient, the same on every process.
        """
        inp = self._take(step)
        self.n_scales, self._step = inp.n_scales, step
        # Read by the training-curve monitor: μ(k) and the GC rows (the mask lives on the host: no sync).
        self.mu = self.mu_schedule.at(step, self.cfg.train.steps)
        self.gc_rows = 0 if inp.gc_mask is None else int(inp.gc_mask.sum())
        z = self._coupled_noise(inp)
        self.precision.before_step(self.model, inp, z, self.opt)
        loss = self.objective(self, inp, z).mean()
        self.opt.zero_grad(set_to_none=True)
        self.precision.backward(loss, self.params)
        if math.isinf(self.max_norm):  # no clipping: only the norm, for the non-finite check
            grad_norm = torch.nn.utils.get_total_norm([p.grad for p in self.params if p.grad is not None], foreach=True)
        else:
            grad_norm = torch.nn.utils.clip_grad_norm_(self.params, self.max_norm, foreach=True)
        return loss.detach(), grad_norm

    def update(self) -> None:
        """Apply the gradient (optimizer step) and the EMA schedule's step: foreach kernels, no host sync."""
        self.opt.step()
        ema_step(self.ema, self.model, self.ema_schedule, self._step + 1)

    def discard(self) -> None:
        """Drop the gradient of a skipped step."""
        self.opt.zero_grad(set_to_none=True)

    def close(self) -> None:
        """Stop the OT worker thread (if any)."""
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None
        self._next = None

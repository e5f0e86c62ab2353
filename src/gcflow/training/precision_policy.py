"""train.precision: the dtype of the network passes, and `auto`'s measured switching (issue 11).

* fp32: no autocast. On CUDA, convolutions use PyTorch's defaults (TF32 for cuDNN convolutions,
  `torch.backends.cudnn.allow_tf32 = True`; float32 matmuls in full precision,
  `torch.backends.cuda.matmul.allow_tf32 = False`), which is how the paper's released code ran.
  gcflow changes neither setting.
* bf16 / fp16: autocast of the network passes (teacher, student, GC predictor); the skip path, the
  distance and the loss stay in float32. fp16 scales the loss per step (start 2^16, halved until the
  gradient is finite), so fp16 needs no state beyond the step and resumes bit-identically.
* auto: bf16 only while a check says it is safe, fp32 otherwise, on every device (on the CPU through
  CPU autocast). The check runs one training batch (this step's CT pairs, dropout off) in fp32 and in
  bf16 (`gcflow.precision.precision_agrees`): bf16 is used when the Lion update signs agree on ≥ 99 %
  of the entries and the loss is within 1 %. It runs at the first step, at every curriculum stage
  change and every train.precision_check_every steps. Each decision that changes the precision (and
  the first) is appended to metrics.jsonl as an event record
  {"step": k, "event": "precision", "precision": ..., "sign_agreement": ..., "loss_rel_err": ...};
  readers of evaluation records skip records with an "event" key. On resume the precision in force
  is read back from those records, so a resumed run takes the same decisions as an uninterrupted one.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from gcflow.precision import Probe, precision_agrees
from gcflow.sigmas import ict_num_scales
from gcflow.training.config import Config, ConfigError
from gcflow.training.distributed import World

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
NAMES = {v: k for k, v in DTYPES.items()}
EVENT = "precision"


def fixed_dtype(name: str, device: torch.device) -> torch.dtype:
    """The dtype of a fixed train.precision (fp32, bf16, fp16); bf16 on a CUDA device without it is an error."""
    if name == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise ConfigError(
            f"train.precision=bf16 but {torch.cuda.get_device_name(device)} has no bfloat16 support; "
            "use train.precision=fp32"
        )
    return DTYPES[name]


def is_event(record: Any) -> bool:
    """Whether a metrics.jsonl record is an event (e.g. a precision switch), not an evaluation."""
    return isinstance(record, dict) and "event" in record


def precision_events(run_dir: Path) -> list[dict[str, Any]]:
    """The precision event records of a run's metrics.jsonl, oldest first (torn lines skipped)."""
    path = Path(run_dir) / "metrics.jsonl"
    out = []
    for line in path.read_text().splitlines() if path.is_file() else []:
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if is_event(record) and record.get("event") == EVENT:
            out.append(record)
    return out


class PrecisionPolicy:
    """The network passes' precision for each step of one run (see the module docstring).

    Args:
        cfg: the run's config (train.precision, train.precision_check_every, the curriculum).
        device: the training device.
        world: the data-parallel processes (auto's decision is agreed: fp32 if any process disagrees).
    """

    def __init__(self, cfg: Config, device: torch.device, world: World = World()) -> None:
        self.cfg, self.device, self.world = cfg, device, world
        self.auto = cfg.train.precision == "auto"
        self.current: str | None = None if self.auto else cfg.train.precision
        self.low = "bf16"
        self.sink: Callable[[dict[str, Any]], None] | None = None
        self._prev: str | None = None  # the last decision (taken up from metrics.jsonl on resume)
        if not self.auto:
            fixed_dtype(cfg.train.precision, device)

    @property
    def dtype(self) -> torch.dtype:
        """The dtype of the passes now (fp32 before auto's first check)."""
        return DTYPES[self.current or "fp32"]

    def autocast(self) -> contextlib.AbstractContextManager:
        """The context of a network pass: none for fp32, autocast otherwise."""
        if self.dtype == torch.float32:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.dtype)

    def attach(self, run_dir: Path, start: int, write: bool = True) -> None:
        """Log auto's decisions to run_dir/metrics.jsonl (when `write`) and take up its decision at `start`."""
        if not self.auto:
            return
        if write:
            from gcflow.training.run_state import append_metrics

            self.sink = lambda record: append_metrics(Path(run_dir), record)
        for record in precision_events(run_dir):
            if record["step"] <= start and record.get("precision") in DTYPES:
                self.current = self._prev = record["precision"]

    def due(self, step: int) -> bool:
        """Whether auto checks at step `step` (0-based): the first step, a stage change, every precision_check_every."""
        t, m = self.cfg.train, self.cfg.method
        if step == 0 or step % t.precision_check_every == 0 or self.current is None:
            return True
        return ict_num_scales(step, t.steps, m.s0, m.s1) != ict_num_scales(step - 1, t.steps, m.s0, m.s1)

    def before_step(self, model: nn.Module, inp: Any, z: Tensor, opt: torch.optim.Optimizer | None = None) -> None:
        """auto: check this step's batch (`inp`: StepInputs, z its coupled noise) when due; switch and log."""
        if not self.auto or not self.due(inp.step):
            return
        probe = Probe(inp.x0.double(), z.double(), inp.sigma_i.double(), inp.sigma_next.double(), inp.weight.double())
        ok, stats = precision_agrees(model, probe, self.low, "fp32", momentum=_lion_momentum(model, opt))
        (bad,) = self.world.any(not ok)
        chosen = "fp32" if bad else self.low
        # Log the first decision and every switch; a run resumed at a checked step finds that step's
        # decision already taken up by `attach`, so it is not logged twice.
        if chosen != self._prev and self.sink is not None:
            self.sink(
                {
                    "step": inp.step,
                    "event": EVENT,
                    "precision": chosen,
                    "n_scales": inp.n_scales,
                    "sign_agreement": stats.sign_agreement,
                    "loss_rel_err": stats.loss_rel_err,
                    "grad_cosine": stats.grad_cosine,
                }
            )
        self.current = self._prev = chosen

    def backward(self, loss: Tensor, params: list[Tensor]) -> None:
        """loss.backward(); in fp16 with a per-step loss scale (2^16, halved until the gradient is finite)."""
        if self.dtype != torch.float16:
            loss.backward()
            return
        scale = 2.0**16
        while True:
            for p in params:
                p.grad = None
            (loss * scale).backward(retain_graph=scale > 1.0)
            grads = [p.grad for p in params if p.grad is not None]
            if scale <= 1.0 or bool(torch.stack([torch.isfinite(g).all() for g in grads]).all()):
                break
            scale /= 2.0
        if scale != 1.0:
            torch._foreach_div_(grads, scale)


def _lion_momentum(model: nn.Module, opt: torch.optim.Optimizer | None) -> Tensor | None:
    """Lion's momentum m over model.parameters() as one float64 vector (P,), or None (no Lion state yet)."""
    if opt is None or type(opt).__name__ != "Lion" or not any("exp_avg" in s for s in opt.state.values()):
        return None
    parts = [opt.state.get(p, {}).get("exp_avg", torch.zeros_like(p)).reshape(-1).double() for p in model.parameters()]
    return torch.cat(parts)

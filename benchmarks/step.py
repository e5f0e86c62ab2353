"""Milliseconds per training step and images per second: gcflow's step next to a plain reference step.

    python benchmarks/step.py --size cpu                     # the CPU-sized network (any machine)
    python benchmarks/step.py --size cifar10                 # the paper's CIFAR-10 network, batch 512 (GPU)
    python benchmarks/step.py --size cifar10 --ablate        # + gcflow's GC step in fp32, NCHW, unpadded (GPU)
    python benchmarks/step.py --size cifar10 --compile       # gcflow's steps with train.compile=true (GPU)
    python benchmarks/step.py --from-json FILE               # re-render a saved result into BENCHMARKS.md
    python benchmarks/step.py --tiny                         # a seconds-long smoke run (tests)

For IC, OT and GC (μ = 0.5) it times gcflow's step (gcflow.training.step.TrainStep, exactly what
`gcflow train` runs per step, with the trainer's per-step bookkeeping) and the reference step of
tests/reference_step.py (the same algorithm written plainly in fp32 eager PyTorch), on random
in-memory images of the network's shape. All variants run in one process, interleaved: each round
times every variant for --steps steps, in an order that rotates from round to round, so a slow
phase of a shared machine hits all of them alike; each figure is the median over --rounds rounds.
On CUDA the clock is wall time between device syncs; on the CPU it is the process's CPU time
(with --threads intra-op threads; one by default), which other tenants of the machine disturb less.

On CUDA it also reports model-FLOP utilisation: FLOPs of one step counted with
torch.utils.flop_counter.FlopCounterMode, divided by the step time and by this device's measured
bf16 matmul rate.

Targets (issue 5) are printed and stored, never asserted: on the cifar10 size on a GPU, gcflow's
GC step ≥ 2× the reference's throughput, GC ≤ 10 % slower than IC, and the OT assignment ≤ 10 %
of the step (measured as the OT step's extra time over the IC step, i.e. the assignment's cost on
the critical path; the assignment's own solve time is reported next to it); on the cpu size,
gcflow's step no slower than the reference for each method.

Writes benchmarks/results/step_<device>.json (one file per device, sizes merged) and, unless
--no-markdown, the measured table into BENCHMARKS.md between its `step:<device>` markers.
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import re
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # RandomImages etc. for the tests
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))  # the reference step

from reference_step import reference_draw, reference_step  # noqa: E402

from gcflow.data import DeviceBatches, ImageDataset  # noqa: E402
from gcflow.ema import make_ema  # noqa: E402
from gcflow.pairs.coupling import ot_assignment  # noqa: E402
from gcflow.sigmas import ict_num_scales  # noqa: E402
from gcflow.training.builders import build_model, build_optimizer, set_memory_format  # noqa: E402
from gcflow.training.config import Config, apply_overrides  # noqa: E402
from gcflow.training.faults import new_fault_record, record_fault  # noqa: E402
from gcflow.training.predictor import build_gc_predictor  # noqa: E402
from gcflow.training.presets import load_preset  # noqa: E402
from gcflow.training.step import TrainStep  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
METHODS = {"IC": (), "OT": ("method.coupling=ot",), "GC": ("method.gc_mu=0.5",)}

# Network sizes. cifar10: the paper's CIFAR-10 network (the cifar10 preset) at its batch of 512.
# cpu: a small 32×32 SongUNet a CPU steps through in about a second. tiny: smoke test only.
SIZES: dict[str, dict] = {
    "cifar10": {"preset": "cifar10-ic", "shape": (3, 32, 32), "batch": 512, "overrides": ()},
    "cpu": {
        "preset": "cifar10-ic",
        "shape": (3, 32, 32),
        "batch": 32,
        "overrides": (
            "network.channels=32",
            "network.channel_mult=1,2,2",
            "network.num_blocks=1",
            "network.attn_resolutions=16",
        ),
    },
    "tiny": {
        "preset": "cifar10-ic",
        "shape": (1, 8, 8),
        "batch": 8,
        "overrides": (
            "network.channels=8",
            "network.channel_mult=1,2",
            "network.num_blocks=1",
            "network.attn_resolutions=4",
        ),
    },
}


class RandomImages:
    """A data source of random uint8 images held on the device (what `gcflow train` uses for in-memory data)."""

    def __init__(self, shape: tuple[int, ...], batch: int, device: torch.device, seed: int = 0) -> None:
        g = torch.Generator().manual_seed(seed)
        images = torch.randint(0, 256, (8 * batch, *shape), generator=g, dtype=torch.uint8)
        self.loader = DeviceBatches(ImageDataset(images, None, 0, "random"), batch, device=device, seed=seed, flip=True)
        self.shape, self.num_classes = tuple(shape), 0

    def batch(self, step: int):
        return self.loader.batch(step)

    def state_dict(self) -> dict:
        return self.loader.state_dict()

    def load_state_dict(self, state: dict) -> None:
        if state:
            self.loader.load_state_dict(state)


@dataclass
class Variant:
    name: str  # e.g. "gcflow GC"
    method: str
    impl: str  # "gcflow" or "reference"
    run: Callable[[int], None]  # one training step number k
    close: Callable[[], None] = lambda: None


def make_config(size: str, method: str, extra: tuple[str, ...] = ()) -> Config:
    spec = SIZES[size]
    over = [
        *spec["overrides"],
        *METHODS[method],
        f"train.batch_size={spec['batch']}",
        "train.steps=1000000",
        "network.dropout=0",
        *extra,
    ]
    return apply_overrides(load_preset(spec["preset"]), over)


def gcflow_variant(
    size: str,
    method: str,
    device: torch.device,
    extra: tuple[str, ...] = (),
    label: str = "",
    pad_predictor: bool | None = None,
) -> Variant:
    """gcflow's step, with the trainer's per-step bookkeeping (non-finite flag or check, loss window)."""
    cfg = make_config(size, method, (f"train.device={device}", *extra))
    torch.manual_seed(0)
    model = set_memory_format(build_model(cfg, SIZES[size]["shape"], 0).to(device), cfg)
    ema = make_ema(model)
    opt = build_optimizer(model, cfg)
    predictor = build_gc_predictor(cfg, model, ema, device) if cfg.method.gc_mu > 0 else None
    source = RandomImages(SIZES[size]["shape"], cfg.train.batch_size, device)
    step = TrainStep(
        cfg,
        source,
        model,
        ema,
        opt,
        device=device,
        decay=cfg.optim.ema_decay,
        predictor=predictor,
        pad_predictor=pad_predictor,
    )
    fault = new_fault_record(device)
    loss_sum = torch.zeros((), device=device)
    model.train()

    def run(k: int) -> None:
        nonlocal loss_sum
        loss, grad_norm = step.forward_backward(k)
        if device.type == "cuda":
            record_fault(fault, k + 1, loss, grad_norm)
        elif not bool(torch.isfinite(loss) & torch.isfinite(grad_norm)):
            raise RuntimeError(f"non-finite loss at step {k + 1}")
        step.update()
        loss_sum += loss

    return Variant(label or f"gcflow {method}", method, "gcflow", run, step.close)


def reference_variant(size: str, method: str, device: torch.device) -> Variant:
    cfg = make_config(size, method)
    from lion_pytorch import Lion

    torch.manual_seed(0)
    model = build_model(cfg, SIZES[size]["shape"], 0).to(device)
    ema = copy.deepcopy(model).eval().requires_grad_(False)
    opt = Lion(model.parameters(), lr=cfg.optim.lr, betas=tuple(cfg.optim.betas))
    g = torch.Generator().manual_seed(1)
    data = (
        torch.randint(0, 256, (8 * cfg.train.batch_size, *SIZES[size]["shape"]), generator=g).float() / 127.5 - 1
    ).to(device)
    model.train()

    def run(k: int) -> None:
        n = ict_num_scales(k, cfg.train.steps)
        b = reference_draw(data, cfg.train.batch_size, n, cfg.method.gc_mu)
        reference_step(model, ema, opt, b, coupling=cfg.method.coupling, ema_decay=cfg.optim.ema_decay)

    return Variant(f"reference {method}", method, "reference", run)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_variants(
    variants: list[Variant], device: torch.device, steps: int, rounds: int, warmup: int
) -> dict[str, dict]:
    """Interleaved timing: per round, each variant runs `steps` steps; medians over rounds."""
    counters = {v.name: 0 for v in variants}
    for v in variants:  # warm-up (cuDNN autotuning, compilation, caches)
        for _ in range(warmup):
            v.run(counters[v.name])
            counters[v.name] += 1
    sync(device)
    wall: dict[str, list[float]] = {v.name: [] for v in variants}
    cpu: dict[str, list[float]] = {v.name: [] for v in variants}
    for r in range(rounds):
        order = variants[r % len(variants) :] + variants[: r % len(variants)]
        for v in order:
            sync(device)
            w0, c0 = time.perf_counter(), time.process_time()
            for _ in range(steps):
                v.run(counters[v.name])
                counters[v.name] += 1
            sync(device)
            wall[v.name].append((time.perf_counter() - w0) / steps * 1e3)
            cpu[v.name].append((time.process_time() - c0) / steps * 1e3)
        shown = cpu if device.type != "cuda" else wall
        print(
            f"  round {r + 1}/{rounds}: " + ", ".join(f"{v.name} {shown[v.name][-1]:.1f} ms" for v in variants),
            flush=True,
        )
    return {
        v.name: {
            "wall_ms": statistics.median(wall[v.name]),
            "cpu_ms": statistics.median(cpu[v.name]),
            "wall_ms_all": [round(x, 3) for x in wall[v.name]],
            "cpu_ms_all": [round(x, 3) for x in cpu[v.name]],
        }
        for v in variants
    }


def count_flops(variant: Variant, k: int) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        variant.run(k)
    return int(counter.get_total_flops())


def bf16_matmul_rate(device: torch.device, n: int = 8192, iters: int = 20) -> float:
    """This device's measured dense bf16 matmul rate in FLOP/s (the MFU denominator)."""
    a = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    sync(device)
    t0 = time.perf_counter()
    for _ in range(iters):
        a @ b
    sync(device)
    return 2 * n**3 * iters / (time.perf_counter() - t0)


def ot_solve_ms(size: str, device: torch.device, reps: int = 5) -> float:
    """Median time of one exact OT assignment (cost on the device + SciPy solve) at this size's batch."""
    shape, batch = SIZES[size]["shape"], SIZES[size]["batch"]
    x0 = torch.rand(batch, *shape, device=device) * 2 - 1
    z = torch.randn(batch, *shape, device=device)
    times = []
    for _ in range(reps + 1):
        sync(device)
        t0 = time.perf_counter()
        ot_assignment(x0, z)
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times[1:])


def bf16_check(size: str, device: torch.device) -> dict:
    """One GC step's loss and gradient under bf16 autocast against fp32, from the same weights and inputs.

    The weights are re-drawn with unit-scale residual branches (at initialisation EDM's networks
    scale them by 1e-5, which would hide the network's share of the numerics).
    """
    out = {}
    for precision in ("fp32", "bf16"):
        cfg = make_config(size, "GC", (f"train.device={device}", f"train.precision={precision}"))
        torch.manual_seed(0)
        model = set_memory_format(build_model(cfg, SIZES[size]["shape"], 0).to(device), cfg)
        g = torch.Generator().manual_seed(1)
        with torch.no_grad():
            for p in model.parameters():
                if p.ndim > 1:
                    p.copy_((torch.randn(p.shape, generator=g) / p[0].numel() ** 0.5).to(device))
        ema = make_ema(model)
        step = TrainStep(
            cfg,
            RandomImages(SIZES[size]["shape"], cfg.train.batch_size, device),
            model,
            ema,
            build_optimizer(model, cfg),
            device=device,
            decay=cfg.optim.ema_decay,
            predictor=build_gc_predictor(cfg, model, ema, device),
        )
        loss, grad_norm = step.forward_backward(7)
        grads = torch.cat([p.grad.reshape(-1).float() for p in model.parameters()])
        out[precision] = (loss.item(), grad_norm.item(), grads)
        step.close()
    (l32, n32, g32), (l16, n16, g16) = out["fp32"], out["bf16"]
    cos = float(torch.nn.functional.cosine_similarity(g16, g32, dim=0))
    return {
        "loss_fp32": l32,
        "loss_bf16": l16,
        "loss_rel_diff": abs(l16 - l32) / abs(l32),
        "grad_norm_fp32": n32,
        "grad_norm_bf16": n16,
        "grad_cosine": cos,
        "tolerance": "loss within 1 %, gradient cosine > 0.99",
        "within_tolerance": bool(abs(l16 - l32) <= 0.01 * abs(l32) and cos > 0.99),
    }


def device_key(device: torch.device) -> str:
    if device.type != "cuda":
        return "cpu"
    name = torch.cuda.get_device_name(device).lower()
    return re.sub(r"[^a-z0-9]+", "-", name.replace("nvidia", "")).strip("-")


def device_label(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} thread(s))"


def bench_size(size: str, device: torch.device, args: argparse.Namespace) -> dict:
    batch = SIZES[size]["batch"]
    clock = "wall_ms" if device.type == "cuda" else "cpu_ms"
    variants: list[Variant] = []
    for method in METHODS:
        variants.append(gcflow_variant(size, method, device, extra=("train.compile=true",) if args.compile else ()))
        variants.append(reference_variant(size, method, device))
    if args.ablate:
        variants.append(gcflow_variant(size, "GC", device, ("train.precision=fp32",), "gcflow GC fp32"))
        variants.append(gcflow_variant(size, "GC", device, ("train.channels_last=false",), "gcflow GC nchw"))
        variants.append(gcflow_variant(size, "GC", device, (), "gcflow GC unpadded", pad_predictor=False))
    params = sum(p.numel() for p in build_model(make_config(size, "IC"), SIZES[size]["shape"], 0).parameters())
    print(f"{size}: {params / 1e6:.2f} M parameters, batch {batch}, {device_label(device)}", flush=True)
    flops: dict[str, int] = {}
    if device.type == "cuda" and not args.no_flops:
        for v in variants:
            if v.impl == "reference" or not (args.compile or "compiled" in v.name):  # FLOPs are counted eagerly
                flops[v.name] = count_flops(v, 0)
    times = time_variants(variants, device, args.steps, args.rounds, args.warmup)
    for v in variants:
        v.close()
    rows = []
    for method in METHODS:
        g, r = times[f"gcflow {method}"], times[f"reference {method}"]
        rows.append(
            {
                "method": method,
                "gcflow_ms": g[clock],
                "reference_ms": r[clock],
                "gcflow_img_s": batch / g[clock] * 1e3,
                "reference_img_s": batch / r[clock] * 1e3,
                "speedup": r[clock] / g[clock],
                "gcflow": g,
                "reference": r,
            }
        )
    by = {row["method"]: row for row in rows}
    out: dict = {
        "size": size,
        "batch": batch,
        "parameters": params,
        "clock": clock,
        "steps_per_round": args.steps,
        "rounds": args.rounds,
        "rows": rows,
        "ablation": {
            name: t
            for name, t in times.items()
            if name not in {f"{i} {m}" for i in ("gcflow", "reference") for m in METHODS}
        },
        "gc_over_ic": {
            "gcflow": by["GC"]["gcflow_ms"] / by["IC"]["gcflow_ms"],
            "reference": by["GC"]["reference_ms"] / by["IC"]["reference_ms"],
        },
        "ot_overhead": {
            "gcflow": 1 - by["IC"]["gcflow_ms"] / by["OT"]["gcflow_ms"],
            "reference": 1 - by["IC"]["reference_ms"] / by["OT"]["reference_ms"],
        },
        "ot_solve_ms": ot_solve_ms(size, device),
    }
    if flops:
        rate = bf16_matmul_rate(device)
        out["bf16_matmul_tflops"] = rate / 1e12
        out["flops_per_step"] = flops
        out["mfu"] = {name: flops[name] / (times[name]["wall_ms"] / 1e3) / rate for name in flops}
    if device.type == "cuda" and size != "tiny":
        out["bf16_check"] = bf16_check(size, device)
    out["targets"] = targets(size, device, out)
    return out


def targets(size: str, device: torch.device, res: dict) -> list[dict]:
    by = {row["method"]: row for row in res["rows"]}
    checks = []
    if size == "cifar10" and device.type == "cuda":
        checks.append(("GC step throughput vs reference GC step", by["GC"]["speedup"], ">=", 2.0))
        checks.append(("GC step time / IC step time (gcflow)", res["gc_over_ic"]["gcflow"], "<=", 1.10))
        checks.append(("OT extra time / OT step time (gcflow)", res["ot_overhead"]["gcflow"], "<=", 0.10))
    if size == "cpu":
        for m in METHODS:
            checks.append((f"{m} step throughput vs reference (cpu network)", by[m]["speedup"], ">=", 1.0))
    return [
        {
            "target": name,
            "value": round(v, 4),
            "threshold": f"{op} {thr}",
            "met": bool(v >= thr if op == ">=" else v <= thr),
        }
        for name, v, op, thr in checks
    ]


def markdown(results: dict) -> str:
    lines = [
        f"Device: {results['device']}; date {results['date']}; torch {results['torch']}.",
        f"Command: `{results['command']}`",
        "",
    ]
    for size, res in results["sizes"].items():
        clock = "CPU time" if res["clock"] == "cpu_ms" else "wall time"
        lines += [
            f"**{size}** network ({res['parameters'] / 1e6:.2f} M parameters), batch {res['batch']}; "
            f"median of {res['rounds']} interleaved rounds of {res['steps_per_round']} steps ({clock}).",
            "",
            "| method | gcflow ms/step | gcflow img/s | reference ms/step | reference img/s | speed-up |",
            "|---|---|---|---|---|---|",
        ]
        for r in res["rows"]:
            lines.append(
                f"| {r['method']} | {r['gcflow_ms']:.1f} | {r['gcflow_img_s']:.0f} | {r['reference_ms']:.1f} | "
                f"{r['reference_img_s']:.0f} | {r['speedup']:.2f}× |"
            )
        lines += [
            "",
            f"GC / IC step time: gcflow {res['gc_over_ic']['gcflow']:.3f}, "
            f"reference {res['gc_over_ic']['reference']:.3f}. "
            f"OT extra time / OT step: gcflow {res['ot_overhead']['gcflow']:.3f}, "
            f"reference {res['ot_overhead']['reference']:.3f}; "
            f"one OT assignment alone: {res['ot_solve_ms']:.1f} ms.",
        ]
        if "mfu" in res:
            lines.append(
                f"MFU (counted FLOPs / step time / measured bf16 matmul rate {res['bf16_matmul_tflops']:.0f} TFLOP/s): "
                + ", ".join(f"{k} {v:.1%}" for k, v in res["mfu"].items())
                + "."
            )
        if res["ablation"]:
            lines.append(
                "Ablation (gcflow GC step): "
                + ", ".join(f"{k} {v[res['clock']]:.1f} ms" for k, v in res["ablation"].items())
                + "."
            )
        if "bf16_check" in res:
            c = res["bf16_check"]
            lines.append(
                f"bf16 autocast vs fp32, one GC step from the same weights: "
                f"loss {c['loss_bf16']:.5g} vs {c['loss_fp32']:.5g} "
                f"({c['loss_rel_diff']:.2%}), gradient cosine {c['grad_cosine']:.4f} ({c['tolerance']}: "
                f"{'within' if c['within_tolerance'] else 'OUTSIDE'})."
            )
        for t in res["targets"]:
            lines.append(
                f"- target: {t['target']} = {t['value']} ({t['threshold']}): **{'met' if t['met'] else 'NOT met'}**"
            )
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"


def update_benchmarks_md(path: Path, key: str, body: str) -> None:
    """Replace the block between `<!-- step:KEY -->` and `<!-- /step:KEY -->`
    (added under the step section if missing).
    """
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    start, end = f"<!-- step:{key} -->", f"<!-- /step:{key} -->"
    block = f"{start}\n{body}{end}"
    if start in text and end in text:
        text = text[: text.index(start)] + block + text[text.index(end) + len(end) :]
    else:
        anchor = "<!-- step:results -->"
        text = text.replace(anchor, f"{anchor}\n\n{block}", 1) if anchor in text else text.rstrip() + f"\n\n{block}\n"
    path.write_text(text)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--size",
        nargs="+",
        choices=sorted(SIZES),
        default=None,
        help="network sizes (default: cifar10 and cpu on CUDA, cpu on the CPU)",
    )
    p.add_argument("--tiny", action="store_true", help="smoke run: the tiny network, 2 rounds of 1 step, no markdown")
    p.add_argument("--device", default="auto")
    p.add_argument(
        "--steps", type=int, default=None, help="steps per variant per round (default 10 on CUDA, 2 on the CPU)"
    )
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument(
        "--warmup", type=int, default=None, help="warm-up steps per variant (default 5 on CUDA, 1 on the CPU)"
    )
    p.add_argument("--threads", type=int, default=1, help="CPU intra-op threads")
    p.add_argument("--compile", action="store_true", help="time gcflow's step with train.compile=true")
    p.add_argument(
        "--ablate",
        action="store_true",
        help="also time gcflow's GC step in fp32, in NCHW, and without predictor padding",
    )
    p.add_argument("--no-flops", action="store_true", help="skip the FLOP count and MFU (CUDA)")
    p.add_argument("--out", type=Path, default=None, help="JSON output (default benchmarks/results/step_<device>.json)")
    p.add_argument(
        "--markdown", type=Path, default=ROOT / "BENCHMARKS.md", help="file whose step:<device> block is updated"
    )
    p.add_argument("--no-markdown", action="store_true")
    p.add_argument(
        "--from-json",
        type=Path,
        default=None,
        help="no timing: copy a result file (e.g. from a GPU session) "
        "into benchmarks/results and render it into BENCHMARKS.md",
    )
    args = p.parse_args(argv)
    if args.from_json is not None:
        results = json.loads(args.from_json.read_text())
        out = args.out or ROOT / "benchmarks" / "results" / f"step_{results['device_key']}.json"
        if out.resolve() != args.from_json.resolve():
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(json.dumps(results, indent=2) + "\n")
        update_benchmarks_md(args.markdown, results["device_key"], markdown(results))
        print(f"wrote {out} and the step:{results['device_key']} block of {args.markdown}")
        return 0
    torch.set_num_threads(args.threads)
    device = torch.device(
        "cuda"
        if args.device == "auto" and torch.cuda.is_available()
        else ("cpu" if args.device == "auto" else args.device)
    )
    if device.type == "cuda":
        # cuDNN autotuning for every variant (as EDM-style training scripts set it); TF32 stays at
        # PyTorch's defaults (convolutions may use it, matmuls not), as a plain fp32 script gets them.
        torch.backends.cudnn.benchmark = True
    sizes = args.size or (["cifar10", "cpu"] if device.type == "cuda" else ["cpu"])
    if args.tiny:
        sizes, args.no_markdown = ["tiny"], True
        args.steps, args.rounds, args.warmup = (
            args.steps or 1,
            min(args.rounds, 2),
            1 if args.warmup is None else args.warmup,
        )
    args.steps = args.steps or (10 if device.type == "cuda" else 2)
    args.warmup = (5 if device.type == "cuda" else 1) if args.warmup is None else args.warmup
    if "cifar10" in sizes and device.type != "cuda":
        print("note: the cifar10 size (batch 512) is meant for a GPU; on the CPU it takes minutes per step", flush=True)
    key = device_key(device) + ("-compiled" if args.compile else "")
    results = {
        "device": device_label(device),
        "device_key": key,
        "date": time.strftime("%Y-%m-%d"),
        "torch": torch.__version__,
        "precision": Config().train.precision,  # the variants' default (fp32); the fp32 rows say so
        "command": " ".join(["python", "benchmarks/step.py", *(argv if argv is not None else sys.argv[1:])]),
        "sizes": {},
    }
    for size in sizes:
        results["sizes"][size] = bench_size(size, device, args)
    out = args.out or ROOT / "benchmarks" / "results" / f"step_{key}{'_tiny' if args.tiny else ''}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    previous = json.loads(out.read_text()) if out.exists() and not args.tiny else {}
    if previous.get("device_key") == key:  # keep other sizes measured earlier on this device
        results["sizes"] = {**previous.get("sizes", {}), **results["sizes"]}
    out.write_text(json.dumps(results, indent=2) + "\n")
    text = markdown(results)
    print(text)
    if not args.no_markdown:
        update_benchmarks_md(args.markdown, key, text)
    print(f"wrote {out}" + ("" if args.no_markdown else f" and the step:{key} block of {args.markdown}"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

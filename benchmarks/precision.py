"""Is low precision safe for consistency training? Loss and gradient of fp32, bf16 and fp16 against float64.

    python benchmarks/precision.py                 # the full measurement (~8 min on one core)
    python benchmarks/precision.py --tiny          # a seconds-long smoke run (writes nothing unless --out)
    python benchmarks/precision.py --markdown benchmarks/results/precision.json   # the headline table
    python benchmarks/precision.py --device cuda --out out/precision_cuda.json      # GPU autocast (gpu_session.sh)

For each model, curriculum stage N ∈ {10, 80, 320, 1280} and σ band (of the pair's lower level σ_i;
"all" draws levels as training does), one batch of CT pairs is built with the library
(gcflow.sigmas, gcflow.pairs.ct_pairs, gcflow.loss.consistency_loss, pseudo-Huber) and its loss and
gradient are computed in float64 and under fp32, bf16 autocast and fp16 autocast (CPU autocast
emulates the rounding; see gcflow.precision). Reported: loss relative error, gradient cosine, and
the agreement of the signs Lion applies (zero momentum: sign(g)). Models:

* cifar-random: a small SongUNet on 3×32×32 (32 channels, mult 1,2,2, attention at 16) with random
  weights (PyTorch's default init; EDM's init would make f_θ almost its skip path), smooth random images;
* toy-trained: the toy-ic preset's MLP trained 1 500 steps on the 8-mode ring;
* digits-trained: the digits-gc preset's SongUNet (8×8 digits) trained 600 steps.

Trained weights are cached under $TMPDIR/gcflow-precision-cache. Writes benchmarks/results/precision.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from gcflow.data.common import to_unit_range
from gcflow.data.digits import load_digits
from gcflow.networks.songunet import SongUNet
from gcflow.precision import SIGMA_BANDS, draw_probe, measure, reset_weights
from gcflow.precond import ConsistencyModel
from gcflow.toy.mixture import make_toy
from gcflow.training.builders import build_model
from gcflow.training.config import Config, apply_overrides
from gcflow.training.presets import load_preset
from gcflow.training.trainer import train

STAGES = (10, 80, 320, 1280)
OUT = Path(__file__).resolve().parent / "results" / "precision.json"


def _trained(preset: str, overrides: list[str], shape: tuple[int, ...], cache: Path) -> ConsistencyModel:
    """The online model of a short library training run, cached by preset and overrides."""
    cfg: Config = apply_overrides(load_preset(preset), overrides)
    key = cache / (preset + "-" + "-".join(o.replace("=", "_").replace(".", "_") for o in overrides) + ".pt")
    model = build_model(cfg, shape)
    if key.exists():
        model.load_state_dict(torch.load(key, weights_only=True))
        return model
    res = train(cfg, Path(tempfile.mkdtemp(prefix="gcflow-precision-")) / "run", progress=False, log=lambda *_: None)
    assert res.model is not None
    model.load_state_dict(res.model.state_dict())
    cache.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), key)
    return model


def cifar_random(batch: int) -> tuple[ConsistencyModel, torch.Tensor]:
    net = SongUNet(
        img_resolution=32,
        in_channels=3,
        out_channels=3,
        model_channels=32,
        channel_mult=(1, 2, 2),
        num_blocks=1,
        attn_resolutions=(16,),
        dropout=0.0,
        embedding_type="positional",
        noise_label_scale=1.0,
    )
    model = reset_weights(ConsistencyModel(net), seed=0)
    g = torch.Generator().manual_seed(0)
    # Smooth random "images" in [-1, 1]: 8×8 noise upsampled bilinearly.
    coarse = torch.randn(batch, 3, 8, 8, generator=g)
    x0 = torch.tanh(F.interpolate(coarse, size=32, mode="bilinear", align_corners=False))
    return model, x0


def toy_trained(batch: int, cache: Path, steps: int) -> tuple[ConsistencyModel, torch.Tensor]:
    model = _trained(
        "toy-ic",
        [f"train.steps={steps}", "train.eval_every=0", "train.eval_samples=200", "train.checkpoint_every=0"],
        (2,),
        cache,
    )
    return model, make_toy("ring8").sample(batch, torch.Generator().manual_seed(0)).float()


def digits_trained(batch: int, cache: Path, steps: int) -> tuple[ConsistencyModel, torch.Tensor]:
    model = _trained(
        "digits-gc",
        [f"train.steps={steps}", "train.eval_every=0", "train.eval_samples=200", "train.checkpoint_every=0"],
        (1, 8, 8),
        cache,
    )
    images = load_digits(None, "test", None).images[:batch]
    return model, to_unit_range(images)


def run(
    models: dict[str, Callable[[], tuple[ConsistencyModel, torch.Tensor]]],
    stages: tuple[int, ...],
    bands: tuple[str, ...],
    log: Callable[[str], None] = print,
    device: str = "cpu",
) -> list[dict[str, Any]]:
    """One row per (model, N, band, precision); the passes run on `device` (CUDA: real GPU autocast)."""
    rows = []
    for name, make in models.items():
        model, x0 = make()
        model = model.to(device)
        for n in stages:
            for band in bands:
                probe = draw_probe(x0, n, torch.Generator().manual_seed(n), SIGMA_BANDS[band])
                if probe is None:
                    continue
                for precision, a in measure(model, probe).items():
                    rows.append(
                        {
                            "model": name,
                            "n": n,
                            "band": band,
                            "precision": precision,
                            "batch": x0.shape[0],
                            "loss_ref": a.loss_ref,
                            "loss_rel_err": a.loss_rel_err,
                            "grad_cosine": a.grad_cosine,
                            "sign_agreement": a.sign_agreement,
                        }
                    )
                log(
                    f"{name:15s} N={n:5d} {band:10s} "
                    + "  ".join(
                        f"{r['precision']}: {r['loss_rel_err']:.2e} {r['grad_cosine']:.4f} {r['sign_agreement']:.4f}"
                        for r in rows[-3:]
                    )
                )
    return rows


def headline(rows: list[dict[str, Any]]) -> str:
    """A markdown table: per model, N and precision, the "all" band's three measures and the worst bands."""
    lines = [
        (
            "| model | N | precision | loss rel. err (all) | grad cosine (all) | Lion sign agr. (all) "
            "| largest band loss rel. err | lowest band sign agr. |"
        ),
        "|---|---|---|---|---|---|---|---|",
    ]
    keys = sorted(
        {(r["model"], r["n"], r["precision"]) for r in rows},
        key=lambda k: (k[0], k[1], ("fp32", "bf16", "fp16").index(k[2])),
    )
    for model, n, precision in keys:
        sel = [r for r in rows if (r["model"], r["n"], r["precision"]) == (model, n, precision)]
        a = next((r for r in sel if r["band"] == "all"), sel[0])
        worst = max(sel, key=lambda r: r["loss_rel_err"])
        low = min(sel, key=lambda r: r["sign_agreement"])
        lines.append(
            f"| {model} | {n} | {precision} | {a['loss_rel_err']:.2%} | {a['grad_cosine']:.4f} "
            f"| {a['sign_agreement']:.2%} | {worst['loss_rel_err']:.2%} ({worst['band']}) "
            f"| {low['sign_agreement']:.2%} ({low['band']}) |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tiny", action="store_true", help="a seconds-long smoke run (no training, one stage)")
    ap.add_argument("--out", type=Path, default=None, help=f"where to write the JSON (default: {OUT}, not with --tiny)")
    ap.add_argument("--markdown", type=Path, default=None, help="print the headline table of a saved JSON and exit")
    ap.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "gcflow-precision-cache")
    ap.add_argument("--device", default="cpu", help="cpu (autocast emulates GPU rounding) or cuda (real GPU autocast)")
    args = ap.parse_args(argv)
    if args.markdown is not None:
        print(headline(json.loads(args.markdown.read_text())["rows"]))
        return 0
    t0 = time.time()
    if args.tiny:
        models = {"cifar-random": lambda: cifar_random(2)}
        rows = run(models, (1280,), ("5-80",), device=args.device)
    else:
        models = {
            "cifar-random": lambda: cifar_random(16),
            "toy-trained": lambda: toy_trained(256, args.cache, 1500),
            "digits-trained": lambda: digits_trained(64, args.cache, 600),
        }
        rows = run(models, STAGES, tuple(SIGMA_BANDS), device=args.device)
    out = args.out if args.out is not None else (None if args.tiny else OUT)
    if out is not None:
        where = torch.cuda.get_device_name(0) if args.device.startswith("cuda") else platform.machine()
        meta = {
            "torch": torch.__version__,
            "machine": where,
            "device": args.device,
            "seconds": round(time.time() - t0, 1),
            "reference": "fp64",
            "fp16": "CPU autocast, convolutions emulated (fp16 operands, fp32 accumulation)",
            "sign": "Lion update sign with zero momentum: sign(grad)",
        }
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps({"meta": meta, "rows": rows}, indent=1) + "\n")
        print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    torch.set_num_threads(1)  # the figures are per core; small ops gain nothing from threads on shared CPUs
    sys.exit(main())

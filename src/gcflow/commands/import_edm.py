"""`gcflow import-edm FILE.pkl --out teacher.safetensors`: import an NVlabs EDM (or ECT) network safely.

The pickle is read with gcflow's restricted unpickler (gcflow.teacher.edm_pickle), which rebuilds
tensors and plain containers and never executes the Python source such files embed. The DDPM++
SongUNet's weights are renamed onto gcflow's SongUNet and written as safetensors, with the
network and preconditioning config in its metadata and in a JSON file beside it.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from gcflow.commands.errors import report, run_guarded


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("file", type=Path, help="EDM network snapshot (.pkl), e.g. edm-cifar10-32x32-uncond-vp.pkl")
    p.add_argument("--out", type=Path, default=None, help="output .safetensors (default: FILE with .safetensors)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output file")


def run(args: argparse.Namespace) -> int:
    from gcflow.teacher.edm_pickle import EDMPickleError

    try:
        return run_guarded(lambda: _run(args))
    except EDMPickleError as exc:
        return report(RuntimeError(f"{args.file} cannot be imported: {exc}"))


def _run(args: argparse.Namespace) -> int:
    from gcflow.teacher.import_edm import import_edm_bytes, write_teacher

    out: Path = args.out or args.file.with_suffix(".safetensors")
    if out.suffix != ".safetensors":
        return report(RuntimeError(f"--out {out} must end in .safetensors"))
    side = out.with_suffix(".json")
    for path in (out, side):
        if path.exists() and not args.overwrite:
            return report(RuntimeError(f"{path} already exists; pass --overwrite to replace it"))
    if not args.file.is_file():
        return report(RuntimeError(f"{args.file} does not exist; give the path of an EDM .pkl network snapshot"))
    data = args.file.read_bytes()
    tensors, meta = import_edm_bytes(data, source=args.file.name)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_teacher(out, tensors, meta)
    n = sum(t.numel() for t in tensors.values())
    print(f"gcflow: imported {meta['precond']['class']} ({n} parameters) from {args.file} to {out} and {side}")
    return 0

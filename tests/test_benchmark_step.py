"""benchmarks/step.py runs end to end at a tiny size and writes its JSON and its BENCHMARKS.md block."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parent.parent / "benchmarks" / "step.py"


def _load():
    spec = importlib.util.spec_from_file_location("gcflow_benchmark_step", BENCH)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # (dataclasses look their module up there)
    spec.loader.exec_module(module)
    return module


def test_tiny_benchmark_end_to_end(tmp_path, capsys):
    bench = _load()
    out = tmp_path / "step.json"
    assert bench.main(["--tiny", "--device", "cpu", "--out", str(out)]) == 0
    res = json.loads(out.read_text())
    tiny = res["sizes"]["tiny"]
    assert [r["method"] for r in tiny["rows"]] == ["IC", "OT", "GC"]
    for r in tiny["rows"]:
        assert r["gcflow_ms"] > 0 and r["reference_ms"] > 0 and r["speedup"] == r["reference_ms"] / r["gcflow_ms"]
        assert r["gcflow_img_s"] == tiny["batch"] / r["gcflow_ms"] * 1e3
    assert {"gc_over_ic", "ot_overhead", "ot_solve_ms", "targets"} <= tiny.keys()
    printed = capsys.readouterr().out
    assert "| GC |" in printed and "speed-up" in printed

    # The markdown block is replaced in place between its markers, the rest of the file kept.
    md = tmp_path / "BENCHMARKS.md"
    md.write_text("# Benchmarks\n\n## Step\n<!-- step:results -->\n\n## Other\nkeep me\n")
    bench.update_benchmarks_md(md, "cpu", "first\n")
    bench.update_benchmarks_md(md, "cpu", bench.markdown(res))
    text = md.read_text()
    assert (
        text.count("<!-- step:cpu -->") == 1 and "first" not in text and "| IC |" in text and text.endswith("keep me\n")
    )


def test_targets_are_judged_not_asserted():
    bench = _load()
    rows = [{"method": m, "speedup": s} for m, s in (("IC", 1.2), ("OT", 0.9), ("GC", 2.5))]
    cpu = bench.targets("cpu", bench.torch.device("cpu"), {"rows": rows})
    assert [t["met"] for t in cpu] == [True, False, True]
    gpu = bench.targets(
        "cifar10",
        bench.torch.device("cuda"),
        {"rows": rows, "gc_over_ic": {"gcflow": 1.12}, "ot_overhead": {"gcflow": 0.02}},
    )
    assert [(t["target"].split()[0], t["met"]) for t in gpu] == [("GC", True), ("GC", False), ("OT", True)]

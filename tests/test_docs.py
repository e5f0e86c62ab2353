"""The README's promises point at tests that exist."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_every_cited_test_exists():
    readme = (ROOT / "README.md").read_text()
    cited = set(re.findall(r"(test_[a-z0-9_]+\.py)::(test_[A-Za-z0-9_]+)", readme))
    assert len(cited) >= 10
    for file, name in cited:
        source = (ROOT / "tests" / file).read_text()
        assert re.search(rf"def {name}\b", source), f"README cites {file}::{name}, which does not exist"


def test_readme_starts_with_the_two_commands():
    lines = [line for line in (ROOT / "README.md").read_text().splitlines() if line.strip()]
    block = lines[lines.index("```bash") + 1 : lines.index("```bash") + 3]
    assert block[0].endswith(".venv/bin/gcflow train")
    assert "pytest" in block[1]
    ci = (ROOT / ".ci" / "run").read_text()
    assert block[1] in ci  # CI runs exactly the README test command


def test_readme_speedups_are_the_benchmarks_measured_ones():
    """The CPU speed-ups quoted in the README are those in benchmarks/results/step_cpu.json."""
    import json

    readme = (ROOT / "README.md").read_text()
    rows = json.loads((ROOT / "benchmarks" / "results" / "step_cpu.json").read_text())["sizes"]["cpu"]["rows"]
    for row in rows:
        quoted = f"{row['speedup']:.2f}× ({row['method']})"
        assert quoted in readme, f"README should quote {quoted} from step_cpu.json"

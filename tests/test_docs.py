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


def _theory_section(readme: str) -> str:
    start = readme.index("## The paper's theory, measured")
    return readme[start : readme.index("\n## ", start + 1)]


def test_readme_theory_numbers_are_the_measured_ones():
    """Every decimal number and verdict in the README's theory table is in benchmarks/results/theory.json."""
    import json

    section = _theory_section((ROOT / "README.md").read_text())
    studies = json.loads((ROOT / "benchmarks" / "results" / "theory.json").read_text())["studies"]
    table = [
        [c.strip() for c in line.strip().strip("|").split("|")]
        for line in section.splitlines()
        if line.startswith("| ") and "---" not in line
    ]
    rows = [cells for cells in table if len(cells) == 4][1:]  # the claims table, without its header
    assert len(rows) >= 8
    for cells in rows:
        folder, verdict = cells[1].strip("`"), cells[-1].strip("*")
        study = next(s for s in studies if s["folder"] == folder)
        assert verdict in {c["verdict"] for c in study["claims"]}, f"{folder}: no claim is '{verdict}'"
        measured = " ".join(c["measured"] + " " + c["claim"] for c in study["claims"])
        for number in re.findall(r"\d+\.\d+(?:e-\d+)?|\d+e-\d+", cells[2]):
            assert re.search(rf"(?<![\d.]){re.escape(number)}(?![\d])", measured), (
                f"README quotes {number} for {folder}, which its results in theory.json do not contain"
            )
    for fig in re.findall(r"\]\((docs/figures/theory/[^)]+)\)", section):
        assert (ROOT / fig).is_file(), f"README shows {fig}, which does not exist"

"""Reliability, round two (issue 12): no user file is ever lost or written through a link.

Run folders: `--overwrite` replaces only gcflow runs (item 1), run files are never opened through
symlinks (item 3), metrics.jsonl is rewritten atomically on resume (item 4), default run folders
are unique even for jobs started in the same second (item 12); the atomic writer has no test hook.
"""

from __future__ import annotations

import json
import os
import subprocess
import threading
from pathlib import Path

import pytest

import gcflow
from gcflow.cli import main
from gcflow.files import SymlinkError, atomic_write_text, temp_path
from gcflow.training import run_dir as rd
from gcflow.training.config import apply_overrides
from gcflow.training.presets import load_preset
from gcflow.training.trainer import train

TINY = [
    "train.steps=4",
    "train.batch_size=16",
    "train.eval_samples=50",
    "train.checkpoint_every=2",
    "network.width=8",
    "network.depth=1",
    "train.device=cpu",
    "train.eval_every=2",
]


def _one_error_line(capsys) -> str:
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and err[0].startswith("gcflow: error: "), err
    return err[0]


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    return train(
        apply_overrides(load_preset("toy-ic"), TINY),
        tmp_path_factory.mktemp("files") / "run",
        progress=False,
        log=lambda *_: None,
    ).run_dir


# --- Item 1: --overwrite only replaces gcflow runs -----------------------------------------------


def test_overwrite_refuses_a_folder_that_is_not_a_run(tmp_path, capsys):
    d = tmp_path / "d"
    d.mkdir()
    (d / "thesis.tex").write_text("keep")
    assert main(["train", "--no-progress", "--out", str(d), "--overwrite", *TINY]) == 2
    line = _one_error_line(capsys)
    assert f"refusing to --overwrite {d}" in line and "thesis.tex" in line, line
    assert (d / "thesis.tex").read_text() == "keep" and sorted(p.name for p in d.iterdir()) == ["thesis.tex"]


def test_overwrite_of_the_current_directory_is_refused_unless_it_is_a_run(tmp_path, monkeypatch):
    (tmp_path / "notes.txt").write_text("keep")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(rd.RunDirError, match="not a gcflow run folder"):
        rd.prepare_run_dir(Path(""), resume=False, overwrite=True)  # Path("") is the current directory
    with pytest.raises(rd.RunDirError, match="empty run folder path"):
        rd.prepare_run_dir("", resume=False, overwrite=True)  # type: ignore[arg-type]
    assert (tmp_path / "notes.txt").read_text() == "keep"


def test_empty_out_path_is_an_argparse_error():
    import argparse

    with pytest.raises(argparse.ArgumentTypeError, match="empty --out"):
        rd.out_path("")
    assert rd.out_path("runs/x") == Path("runs/x")


def test_overwrite_replaces_runs_experiments_and_empty_folders(finished, tmp_path):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(finished, run)
    assert rd.is_run_dir(run)
    assert rd.prepare_run_dir(run, resume=False, overwrite=True) == run and list(run.iterdir()) == []
    # A run killed before its config.json: only files gcflow writes.
    (run / "metrics.jsonl").write_text("")
    assert rd.is_run_dir(run)
    exp = tmp_path / "exp"
    exp.mkdir()
    (exp / "results.json").write_text(json.dumps({"experiment": "theorem1"}))
    (exp / "report.md").write_text("# report")
    shutil.copytree(finished, exp / "sub")
    assert rd.is_run_dir(exp)
    # Not runs: a config.json that is not a gcflow config, a user's file beside a run's files.
    other = tmp_path / "other"
    other.mkdir()
    (other / "config.json").write_text(json.dumps({"model": {"layers": 3}}))
    assert not rd.is_run_dir(other)
    (run / "paper.pdf.bak").write_text("x")
    assert not rd.is_run_dir(run)


# --- Item 3: no write through symlinks ------------------------------------------------------------


@pytest.mark.parametrize("entry", [".lock", ".write-test", "metrics.jsonl", "config.json", "summary.json"])
def test_symlinked_run_files_are_refused_and_the_target_untouched(tmp_path, capsys, entry):
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    plant = tmp_path / "plant"
    plant.mkdir()
    (plant / entry).symlink_to("../victim.txt")
    code = main(["train", "--no-progress", "--out", str(plant), *TINY])
    assert code == 2
    line = _one_error_line(capsys)
    assert "symbolic link" in line or "already exists" in line, line
    assert victim.read_text() == "precious"


def test_atomic_writer_never_writes_through_a_planted_temp_link(tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    target = tmp_path / "out.json"
    temp_path(target).symlink_to(victim)  # the writer's own temporary name, planted in advance
    atomic_write_text(target, "new")
    assert target.read_text() == "new" and not target.is_symlink() and victim.read_text() == "precious"
    # A link at the target itself is replaced, never followed.
    target.unlink()
    target.symlink_to(victim)
    atomic_write_text(target, "newer")
    assert victim.read_text() == "precious" and target.read_text() == "newer" and not target.is_symlink()


def test_metrics_append_refuses_a_link(tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    (tmp_path / "metrics.jsonl").symlink_to(victim)
    with pytest.raises(SymlinkError):
        rd.append_metrics(tmp_path / "metrics.jsonl", {"step": 1})
    with pytest.raises(SymlinkError):
        rd.truncate_metrics(tmp_path / "metrics.jsonl", 1)
    assert victim.read_text() == "precious"


def test_the_atomic_writer_has_no_test_hook():
    source = (Path(gcflow.__file__).parent / "files.py").read_text()
    assert "environ" not in source and "sleep" not in source


# --- Item 4: metrics.jsonl is rewritten atomically -----------------------------------------------


def test_truncate_metrics_keeps_earlier_records_and_is_atomic(tmp_path, monkeypatch):
    path = tmp_path / "metrics.jsonl"
    lines = [json.dumps({"step": s, "loss": s / 10}) for s in (10, 20, 30)]
    path.write_text("\n".join(lines) + "\n" + '{"step": 4')  # the last line torn by a crash
    rd.truncate_metrics(path, 20)
    assert path.read_text() == "\n".join(lines[:2]) + "\n"

    # A kill (here: an exception) at the rename leaves the old history complete, not truncated.
    path.write_text("\n".join(lines) + "\n")

    def killed(*_a, **_k):
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "replace", killed)
    with pytest.raises(KeyboardInterrupt):
        rd.truncate_metrics(path, 10)
    assert path.read_text() == "\n".join(lines) + "\n"
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.jsonl"]


# --- Item 12: unique default run folders ---------------------------------------------------------


def test_default_run_dir_names_show_preset_and_changed_overrides(tmp_path):
    path = rd.default_run_dir(tmp_path, "toy-gc", ["method.gc_mu=0.3", "train.seed=1", "train.device=cpu"])
    name = path.name
    assert path.is_dir() and list(path.iterdir()) == []
    assert name.startswith("toy-gc-mu0.3-seed1-devicecpu-2"), name
    stamp, suffix = name.rsplit("-", 3)[1:3], name.rsplit("-", 1)[1]
    assert len(stamp[0]) == 8 and len(stamp[1]) == 6 and len(suffix) == 4 and int(suffix, 16) >= 0
    default_mu = load_preset("toy-gc").method.gc_mu
    assert "mu" not in rd.overrides_tag("toy-gc", [f"method.gc_mu={default_mu}"])  # a no-op override is not shown


def test_default_run_dirs_of_jobs_started_in_the_same_second_are_distinct(tmp_path, monkeypatch):
    # Force collisions: the first two draws of every job give the same suffix.
    draws = iter(["a3f9", "a3f9", "a3f9"] + [f"{i:04x}" for i in range(100)])
    lock = threading.Lock()

    def token_hex(_n):
        with lock:
            return next(draws)

    monkeypatch.setattr(rd.secrets, "token_hex", token_hex)
    monkeypatch.setattr(rd.time, "strftime", lambda _fmt: "20261130-101500")
    got: list[Path] = []
    jobs = [threading.Thread(target=lambda: got.append(rd.default_run_dir(tmp_path, "toy-gc", []))) for _ in range(4)]
    for j in jobs:
        j.start()
    for j in jobs:
        j.join()
    assert len(set(got)) == 4 and all(p.is_dir() for p in got)


def test_concurrent_processes_get_distinct_default_folders(tmp_path):
    code = (
        "import sys; from pathlib import Path; from gcflow.training.run_dir import default_run_dir; "
        "print(default_run_dir(Path(sys.argv[1]), 'toy-gc', []))"
    )
    env = dict(os.environ, PYTHONPATH=str(Path(gcflow.__file__).parents[1]))
    procs = [
        subprocess.Popen([os.sys.executable, "-c", code, str(tmp_path)], stdout=subprocess.PIPE, text=True, env=env)
        for _ in range(4)
    ]
    outs = {p.communicate(timeout=120)[0].strip() for p in procs}
    assert len(outs) == 4 and all(Path(o).is_dir() for o in outs)


# --- Item 8: checkpoints from elsewhere are validated, not trusted -------------------------------


def _forge(src: Path, dst: Path, edit=None, tensors=None, text: str | None = None, checksum: bool = True) -> Path:
    """Rewrite checkpoint `src` to `dst` with its metadata edited by `edit(meta)` (or replaced by the
    raw JSON `text`), recomputing both checksums so that only the schema can catch the forgery."""
    from safetensors.torch import save as st_save

    from gcflow.training import checkpoint as ckpt

    chk = ckpt.load_checkpoint(src)
    tensors = dict(chk.tensors if tensors is None else tensors)
    meta = dict(chk.meta)
    meta["checksum"] = ckpt.tensor_checksum(tensors)
    if edit is not None:
        edit(meta)
    if text is None:
        if checksum:
            meta["meta_checksum"] = ckpt.meta_checksum(meta)
        text = json.dumps(meta)
    dst.write_bytes(st_save({k: v.contiguous() for k, v in tensors.items()}, metadata={"gcflow": text}))
    return dst


def _deep(meta: dict) -> str:
    body = json.dumps(dict(meta, data="@DEEP@"))
    return body.replace('"@DEEP@"', "[" * 100_000 + "]" * 100_000)


FORGERIES = {
    "missing data_shape": (lambda m: m.pop("data_shape"), "data_shape"),
    "non-numeric step": (lambda m: m.update(step="ten"), "step must be an integer"),
    "negative step": (lambda m: m.update(step=-5), "step must be an integer"),
    "negative shape": (lambda m: m.update(data_shape=[-2]), "data_shape"),
    "malformed optimizer": (lambda m: m.update(optimizer={"param_groups": "x"}), "optimizer"),
    "malformed optimizer scalars": (lambda m: m["optimizer"].update(scalars={"a": 1}), "optimizer scalars"),
    "malformed loss_window": (lambda m: m.update(loss_window=["a", None]), "loss_window"),
    "malformed data state": (lambda m: m.update(data={"epoch": -1}), "data must be a loader state"),
    "missing metadata checksum": (lambda m: m.pop("meta_checksum"), "no metadata checksum"),
    "another format": (lambda m: m.update(format=2), "has format 2, this gcflow reads format 1"),
}


@pytest.mark.parametrize("case", list(FORGERIES) + ["deep nesting", "nan weights", "link to /dev/zero", "fifo"])
def test_unverifiable_checkpoints_fall_back_on_resume_and_fail_sample_in_one_line(finished, tmp_path, capsys, case):
    import shutil

    import torch

    from gcflow.training import checkpoint as ckpt

    run = tmp_path / "run"
    shutil.copytree(finished, run)
    paths = ckpt.list_checkpoints(run / "checkpoints")
    newest, older = paths[-1], paths[-2]
    good = ckpt.load_checkpoint(older).meta["step"]
    if case in FORGERIES:
        edit, fragment = FORGERIES[case]
        _forge(newest, newest, edit, checksum=case != "missing metadata checksum")
    elif case == "deep nesting":
        meta = ckpt.load_checkpoint(newest).meta
        _forge(newest, newest, text=_deep(meta))
        fragment = "levels deep, more than 64"
    elif case == "nan weights":
        tensors = dict(ckpt.load_checkpoint(newest).tensors)
        name = next(k for k in tensors if k.startswith("ema.") and tensors[k].is_floating_point())
        tensors[name] = torch.full_like(tensors[name], float("nan"))
        _forge(newest, newest, tensors=tensors)
        fragment = "non-finite values"
    elif case == "link to /dev/zero":
        newest.unlink()
        newest.symlink_to("/dev/zero")
        fragment = "symbolic link"
    else:
        newest.unlink()
        os.mkfifo(newest)
        fragment = "not a regular file"
    with pytest.raises(ckpt.CheckpointError, match=fragment):
        ckpt.load_checkpoint(newest)

    # sample: one line, exit 2, no samples written.
    assert main(["sample", str(newest), "--n", "4", "--out", str(tmp_path / "s")]) == 2
    assert fragment in _one_error_line(capsys)
    assert not (tmp_path / "s.npy").exists()

    # resume: a warning naming it, then the previous good checkpoint.
    warnings: list[str] = []
    assert ckpt.load_latest_checkpoint(run / "checkpoints", warn=warnings.append).meta["step"] == good
    assert len(warnings) == 1 and fragment in warnings[0] and "trying the previous checkpoint" in warnings[0]
    assert main(["train", "--no-progress", "--resume", str(run)]) == 0
    assert ckpt.load_latest_checkpoint(run / "checkpoints").meta["step"] == 4
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if r.get("kind") != "train"] == [2, 4]


# --- Items 5, 6, 9: evaluate and sample never clobber files; one-line errors -----------------------


def test_evaluate_refuses_to_overwrite_its_output_or_a_run_file(finished, tmp_path, capsys):
    out = tmp_path / "eval.json"
    out.write_text("earlier results")
    config_before = (finished / "config.json").read_bytes()
    base = ["evaluate", str(finished), "--ref", str(tmp_path / "ref.npz"), "--num-samples", "10", "--draws", "1"]
    assert main([*base, "--out", str(out)]) == 2
    assert "already exists; pass --overwrite" in _one_error_line(capsys)
    for target in ("config.json", "metrics.jsonl", "summary.json"):
        assert main([*base, "--out", str(finished / target), "--overwrite"]) == 2
        assert "would replace a run's own file" in _one_error_line(capsys)
    assert out.read_text() == "earlier results" and (finished / "config.json").read_bytes() == config_before


def test_evaluate_of_a_toy_run_is_one_line(finished, tmp_path, capsys):
    argv = ["evaluate", str(finished), "--ref", str(tmp_path / "ref.npz"), "--out", str(tmp_path / "e.json")]
    assert main(argv) == 2
    assert "is a toy run" in _one_error_line(capsys)


def test_a_missing_reference_file_is_named_as_such():
    from gcflow.metrics.protocol import ReferenceStatsError, read_reference_meta

    with pytest.raises(ReferenceStatsError, match="reference statistics file .*absent.npz not found") as info:
        read_reference_meta("absent.npz")
    assert "sidecar" not in str(info.value)


@pytest.mark.parametrize(
    "argv",
    [
        ["evaluate"],
        ["evaluate", "run", "--ref"],
        ["fid-ref"],
        ["fid-ref", "digits", "--batch", "x"],
        ["evaluate", "run", "--ref", "r.npz", "--out", ""],
        ["sample", "run", "--out", ""],
    ],
)
def test_argparse_errors_of_evaluate_and_fid_ref_are_one_line(capsys, argv):
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    _one_error_line(capsys)


def test_sample_seed_beyond_64_bits_is_one_line(finished, tmp_path, capsys):
    assert main(["sample", str(finished), "--n", "2", "--seed", str(2**64), "--out", str(tmp_path / "s")]) == 2
    assert "--seed" in _one_error_line(capsys)
    assert main(["sample", str(finished), "--n", "2", "--seed", str(2**64 - 2), "--out", str(tmp_path / "s")]) == 0


def test_out_of_memory_is_one_line(finished, tmp_path, capsys, monkeypatch):
    import torch

    import gcflow.training.evaluate as ev

    def oom(*_a, **_k):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB\nmany\nlines")

    monkeypatch.setattr(ev, "generate", oom)
    assert main(["sample", str(finished), "--n", "4", "--out", str(tmp_path / "s")]) == 2
    assert "out of GPU memory" in _one_error_line(capsys)
    monkeypatch.setattr(ev, "generate", lambda *a, **k: (_ for _ in ()).throw(MemoryError()))
    assert main(["sample", str(finished), "--n", "4", "--out", str(tmp_path / "s")]) == 2
    assert "out of host memory" in _one_error_line(capsys)


def test_sample_writes_atomically_so_a_killed_write_leaves_no_result(finished, tmp_path, capsys, monkeypatch):
    stem = tmp_path / "s"

    def killed(*_a, **_k):
        raise KeyboardInterrupt  # a kill between the temporary file and its rename

    with monkeypatch.context() as m:
        m.setattr(os, "replace", killed)
        assert main(["sample", str(finished), "--n", "8", "--out", str(stem)]) == 130
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # no torn .npy, no temporary file
    capsys.readouterr()
    assert main(["sample", str(finished), "--n", "8", "--out", str(stem)]) == 0  # the rerun is not refused
    import numpy as np

    assert np.load(stem.with_suffix(".npy")).shape == (8, 2) and stem.with_suffix(".png").stat().st_size > 0


@pytest.fixture
def tiny_disk(tmp_path):
    """A real 64 KiB tmpfs (needs root and mount; skipped elsewhere)."""
    mnt = tmp_path / "tiny"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mnt)], capture_output=True).returncode:
        pytest.skip("cannot mount a small tmpfs here")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", str(mnt)], check=False)


def test_sample_on_a_really_full_disk_names_the_path_and_the_space_needed(finished, tiny_disk, capsys):
    stem = tiny_disk / "s"
    assert main(["sample", str(finished), "--n", "20000", "--batch", "5000", "--out", str(stem)]) == 2
    line = _one_error_line(capsys)
    need = 20000 * 2 * 4 + 128  # float32 (20000, 2) and the .npy header
    assert "no space left" in line and str(stem.with_suffix(".npy")) in line and f"({need} bytes needed)" in line, line
    assert list(tiny_disk.iterdir()) == []

"""Crash safety: training survives SIGKILL at any moment, and SIGINT/SIGTERM stop it cleanly.

The SIGKILL test runs `gcflow train` (the same `gcflow.cli.main` that `python -m gcflow` calls) in
child processes and kills them at random moments, many times in a row, half of the kills landing
inside checkpoint writes (the test's launcher, not gcflow, makes `os.replace` sleep before renaming a
temporary file, which holds every atomic write open between its temporary file and its rename).
After every kill, every checkpoint on disk must verify and no finished step may be lost; after the
last, the run completes and its weights and metrics equal an uninterrupted run's, bit for bit.

The children are forked from a small server process that has already imported torch and gcflow,
so each launch costs milliseconds instead of seconds of imports; the server itself runs no torch
operation before forking (fork-safe), and it reaps each child before the next launch.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from gcflow.cli import main
from gcflow.training import checkpoint as ckpt
from gcflow.training.config import apply_overrides
from gcflow.training.presets import load_preset
from gcflow.training.trainer import train

# 48 steps of a tiny toy run, a checkpoint after every step, an evaluation every 8. The kill delays
# below cannot add up to 48 steps of progress, so the run is always still going at the last kill.
CRASH_RUN = [
    "train.steps=48",
    "train.batch_size=32",
    "train.eval_every=8",
    "train.eval_samples=100",
    "train.checkpoint_every=1",
    "train.keep_checkpoints=2",
    "network.width=16",
    "network.depth=1",
    "train.log_every=10",
    "train.device=cpu",
]
SLOW_WRITE = 0.08  # seconds each checkpoint write stays between its temp file and its rename
KILLS = 10

_SERVER = r"""
import json, os, sys
os.environ.setdefault("OMP_NUM_THREADS", "1")
import torch
torch.set_num_threads(1)
import torch._dynamo  # noqa: F401  (imported by the optimizers; preloaded so that children start at once)
import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot  # noqa: F401
import gcflow.cli, gcflow.commands.train, gcflow.training.trainer, gcflow.training.evaluate  # noqa: F401
print("ready", flush=True)
for line in sys.stdin:
    req = json.loads(line)
    pid = os.fork()
    if pid == 0:
        code = 99
        try:
            fd = os.open(req["log"], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
            os.dup2(fd, 1)
            os.dup2(fd, 2)
            os.environ.update(req["env"])
            if req.get("slow_write"):
                # Hold every atomic write open between its fsynced temporary file and its rename,
                # so kills can land inside writes; gcflow itself has no test hook for this.
                import time
                real_replace = os.replace
                def slow_replace(src, dst, *a, **k):
                    if ".tmp-" in os.fspath(src):
                        time.sleep(req["slow_write"])
                    return real_replace(src, dst, *a, **k)
                os.replace = slow_replace
            code = gcflow.cli.main(req["argv"])
        except BaseException:
            import traceback
            traceback.print_exc()
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
    print(pid, flush=True)
    _, status = os.waitpid(pid, 0)
    print(os.waitstatus_to_exitcode(status), flush=True)
"""


class ForkServer:
    """Launches `gcflow <argv>` in forked children of a pre-imported Python; one child at a time."""

    def __init__(self, cwd: Path) -> None:
        env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
        self.proc = subprocess.Popen(
            [sys.executable, "-c", _SERVER], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=cwd, env=env
        )
        assert self.proc.stdout.readline().strip() == "ready"

    def start(self, argv: list[str], log: Path, env: dict[str, str], slow_write: float = 0.0) -> int:
        req = {"argv": argv, "log": str(log), "env": env, "slow_write": slow_write}
        self.proc.stdin.write(json.dumps(req) + "\n")
        self.proc.stdin.flush()
        return int(self.proc.stdout.readline())

    def wait(self) -> int:
        """The child's exit code (negative: killed by that signal), once the server has reaped it."""
        return int(self.proc.stdout.readline())

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(timeout=30)


def _temp_files(folder: Path, pid: int | None = None) -> list[Path]:
    """Temporary files of atomic writes in `folder` (of process `pid` only, if given)."""
    if not folder.is_dir():
        return []
    found = [(p, ckpt.TEMP_RE.match(p.name)) for p in folder.iterdir()]
    return [p for p, m in found if m and (pid is None or int(m["pid"]) == pid)]


def _verified_steps(ckpt_dir: Path) -> list[int]:
    """Steps of all checkpoint files; every one of them must load and verify."""
    return [int(ckpt.load_checkpoint(p).meta["step"]) for p in ckpt.list_checkpoints(ckpt_dir)]


WALL_TIME_KEYS = ("seconds", "images_per_s", "step_time_ms")  # the records' only non-deterministic values


def _metrics(run: Path) -> list[dict]:
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return [{k: v for k, v in r.items() if k not in WALL_TIME_KEYS} for r in records]


def test_sigkill_at_random_moments_never_loses_or_corrupts_the_run(tmp_path):
    # The uninterrupted reference run, in this process.
    ref = train(
        apply_overrides(load_preset("toy-gc"), CRASH_RUN), tmp_path / "ref", progress=False, log=lambda *_: None
    )
    ref_tensors = ckpt.load_checkpoint(ckpt.list_checkpoints(ref.run_dir / "checkpoints")[-1]).tensors

    run, log = tmp_path / "run", tmp_path / "children.log"
    ckpt_dir = run / "checkpoints"
    env = {"GCFLOW_NO_PROGRESS": "1"}
    rng = random.Random(2024)
    server = ForkServer(tmp_path)
    try:
        best, kills, mid_write = 0, 0, 0
        while kills < KILLS:
            resume = (run / "config.json").is_file()
            argv = ["train", "--no-progress", *(["--resume", str(run)] if resume else ["--out", str(run), *CRASH_RUN])]
            pid = server.start(argv, log, env, SLOW_WRITE)
            if kills % 2 == 0:
                # Kill inside a checkpoint write: wait for a temporary checkpoint file, then a random
                # fraction of the write's open window.
                deadline = time.monotonic() + 30
                while not _temp_files(ckpt_dir, pid) and time.monotonic() < deadline:
                    time.sleep(0.002)
                time.sleep(rng.uniform(0.0, 0.6 * SLOW_WRITE))
            else:
                time.sleep(rng.uniform(0.05, 0.6))  # anywhere: start-up, a step, an evaluation, a write
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            code = server.wait()
            if code == 0:
                break  # the run finished before this kill
            assert code == -signal.SIGKILL, log.read_text()[-3000:]
            kills += 1
            mid_write += bool(_temp_files(ckpt_dir, pid))
            # No checkpoint on disk is ever corrupt, and no finished checkpoint is ever lost.
            steps = _verified_steps(ckpt_dir)
            assert not steps or max(steps) >= best, (steps, best)
            best = max(steps, default=best)
            if (run / "config.json").is_file():
                json.loads((run / "config.json").read_text())
        else:
            # The last launch runs to the end without being killed.
            pid = server.start(["train", "--no-progress", "--resume", str(run)], log, env, SLOW_WRITE)
            assert server.wait() == 0, log.read_text()[-3000:]
    finally:
        server.close()

    assert kills >= 8 and mid_write >= 3, (kills, mid_write)
    assert "Traceback" not in log.read_text() and "error" not in log.read_text()
    # Stale temporary files from the killed writes were cleaned up, and the result is the uninterrupted run's.
    assert _temp_files(ckpt_dir) == []
    final = ckpt.load_latest_checkpoint(ckpt_dir)
    assert final.meta["step"] == 48
    assert final.tensors.keys() == ref_tensors.keys()
    assert all(torch.equal(final.tensors[k], ref_tensors[k]) for k in ref_tensors)
    assert _metrics(run) == _metrics(ref.run_dir)
    assert json.loads((run / "summary.json").read_text())["w2"] == ref.summary["w2"]
    assert not (run / ".lock").exists()


STARTUP_KILLS = 4  # kills before the run's first checkpoint: during the config.json write, or at once


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _kill_soon(pid: int, run: Path, kind: str, rng: random.Random) -> None:
    """Wait for the moment `kind` names, then SIGKILL `pid` (no error if it has already exited)."""
    if kind == "config-write":  # inside the atomic write of config.json: its temporary file exists
        deadline = time.monotonic() + 30
        while not _temp_files(run, pid) and time.monotonic() < deadline:
            time.sleep(0.002)
        time.sleep(rng.uniform(0.0, 0.6 * SLOW_WRITE))
    elif kind == "at-once":
        time.sleep(rng.uniform(0.0, 0.03))
    elif kind == "checkpoint-write":
        deadline = time.monotonic() + 30
        while not _temp_files(run / "checkpoints", pid) and time.monotonic() < deadline:
            time.sleep(0.002)
        time.sleep(rng.uniform(0.0, 0.6 * SLOW_WRITE))
    else:
        time.sleep(rng.uniform(0.05, 0.6))
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def test_blind_auto_resume_reruns_survive_sigkill_also_during_start_up(tmp_path):
    """A requeued job reruns one command blindly: `gcflow train --auto-resume --out DIR ...`. Killed at
    random moments, during start-up (inside the config.json write, or at once) as well as during
    training, the reruns end with a final checkpoint byte-identical (sha256) to an uninterrupted run's."""
    run, ref, log = tmp_path / "run", tmp_path / "ref", tmp_path / "children.log"
    argv = ["train", "--no-progress", "--auto-resume", "--out", str(run), *CRASH_RUN]
    env = {"GCFLOW_NO_PROGRESS": "1"}
    rng = random.Random(7)
    server = ForkServer(tmp_path)
    try:
        # The uninterrupted reference: the same command in the same kind of process.
        server.start(["train", "--no-progress", "--out", str(ref), *CRASH_RUN], log, env)
        assert server.wait() == 0, log.read_text()[-3000:]
        kills, startup, mid_config = 0, 0, 0
        for _launch in range(60):  # the same command every time, whatever the folder holds
            if kills >= KILLS + STARTUP_KILLS:
                pid = server.start(argv, log, env, SLOW_WRITE)
                if server.wait() == 0:
                    break
                continue
            started = bool(ckpt.list_checkpoints(run / "checkpoints"))
            kind = (
                ("config-write", "at-once")[startup % 2]
                if startup < STARTUP_KILLS and not started
                else ("checkpoint-write", "anywhere")[kills % 2]
            )
            pid = server.start(argv, log, env, SLOW_WRITE)
            _kill_soon(pid, run, kind, rng)
            code = server.wait()
            if code == 0:
                break
            assert code == -signal.SIGKILL, log.read_text()[-3000:]
            kills += 1
            startup += not ckpt.list_checkpoints(run / "checkpoints")
            mid_config += bool(_temp_files(run, pid)) and not (run / "config.json").exists()
            # config.json is never half-written: absent, or a complete gcflow config.
            if (run / "config.json").exists():
                assert json.loads((run / "config.json").read_text())["train"]["steps"] == 48
            _verified_steps(run / "checkpoints")
        else:
            raise AssertionError("the reruns never finished")
    finally:
        server.close()

    assert startup >= STARTUP_KILLS and mid_config >= 1 and kills >= KILLS, (startup, mid_config, kills)
    text = log.read_text()
    assert "Traceback" not in text and "error" not in text, text[-3000:]
    final, expected = ckpt.list_checkpoints(run / "checkpoints")[-1], ckpt.list_checkpoints(ref / "checkpoints")[-1]
    assert final.name == expected.name == "ckpt-00000048.safetensors"
    assert _sha256(final) == _sha256(expected)
    assert _metrics(run) == _metrics(ref)
    assert [p.name for p in run.iterdir() if p.name.startswith(".")] == []  # no lock or temporary file left


def _wait_for_checkpoint(ckpt_dir: Path, proc: subprocess.Popen, above: int = 0, timeout: float = 120) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()
        steps = [int(ckpt.CKPT_RE.match(p.name)[1]) for p in ckpt.list_checkpoints(ckpt_dir)]
        if steps and max(steps) > above:
            return max(steps)
        time.sleep(0.05)
    raise AssertionError("no checkpoint appeared")


def _gcflow(*args: str, cwd: Path) -> subprocess.Popen:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    return subprocess.Popen(
        [sys.executable, "-m", "gcflow", *args],
        cwd=cwd,
        env=env,
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


def test_sigterm_and_sigint_save_a_checkpoint_and_exit_cleanly_and_lock_the_folder(tmp_path, capsys):
    run = tmp_path / "run"
    long_run = [
        "train.steps=100000",
        "train.batch_size=32",
        "train.eval_every=0",
        "train.eval_samples=100",
        "train.checkpoint_every=25",
        "network.width=16",
        "network.depth=1",
        "train.device=cpu",
    ]
    proc = _gcflow("train", "--no-progress", "--out", str(run), *long_run, cwd=tmp_path)
    try:
        _wait_for_checkpoint(run / "checkpoints", proc)

        # While it runs, a second run on the same folder is refused and changes nothing.
        config_before = (run / "config.json").read_bytes()
        for argv in (["train", "--resume", str(run)], ["train", "--out", str(run), "--overwrite", *long_run]):
            assert main(argv) == 2
            err = capsys.readouterr().err.strip().splitlines()
            assert len(err) == 1 and "in use by another gcflow process" in err[0] and f"pid {proc.pid}" in err[0], err
        assert (run / "config.json").read_bytes() == config_before and proc.poll() is None

        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err
    stopped = int(out.split("at step ")[1].split(";")[0])
    assert f"stopped by signal {int(signal.SIGTERM)} at step {stopped}" in out and "--resume" in out
    newest = ckpt.load_latest_checkpoint(run / "checkpoints")
    assert newest.meta["step"] == stopped  # the interrupted step's checkpoint, verified
    assert not (run / ".lock").exists() and _temp_files(run / "checkpoints") == []

    # Resume, then stop with SIGINT (Ctrl-C): it continued from where it stopped and saved again.
    proc = _gcflow("train", "--no-progress", "--resume", str(run), cwd=tmp_path)
    try:
        _wait_for_checkpoint(run / "checkpoints", proc, above=stopped)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err
    assert f"resuming {run} from step {stopped}" in out
    second = int(out.split("at step ")[1].split(";")[0])
    assert second > stopped and ckpt.load_latest_checkpoint(run / "checkpoints").meta["step"] == second
    assert not (run / ".lock").exists()


@pytest.mark.parametrize("stale_pid", [0, 999_999_999])
def test_stale_lock_and_temp_files_of_a_dead_process_are_taken_over(tmp_path, stale_pid):
    """A lock file and a half-written checkpoint left by a killed process do not block or confuse a resume."""
    run = tmp_path / "run"
    cfg = apply_overrides(
        load_preset("toy-ic"),
        [
            "train.steps=6",
            "train.batch_size=16",
            "train.eval_samples=50",
            "train.checkpoint_every=2",
            "network.width=8",
            "network.depth=1",
        ],
    )
    train(apply_overrides(cfg, ["train.steps=6"]), run, progress=False, log=lambda *_: None)
    (run / "checkpoints" / "ckpt-00000006.safetensors").unlink()
    (run / ".lock").write_text(str(stale_pid))
    junk = run / "checkpoints" / f".ckpt-00000006.safetensors.tmp-{999_999_998}"
    junk.write_bytes(b"half a checkpoint")
    assert [p.name for p in ckpt.list_checkpoints(run / "checkpoints")][-1] == "ckpt-00000004.safetensors"
    res = train(cfg, run, resume=True, progress=False, log=lambda *_: None)
    assert res.summary["step"] == 6 and not junk.exists() and not (run / ".lock").exists()

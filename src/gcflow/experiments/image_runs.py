"""Training runs of the image studies: specs, per-run JSON caches, and two runs at once.

A study is a list of `RunSpec`s. Each finished run leaves `<cache>/<name>-<hash>.json` with its curves
(classifier FD and pixel sliced W2 at every evaluation) and its CPU time; a study run again skips
every spec whose JSON is there, so an interrupted study continues from its cached runs (a run cut
off mid-way is retrained from the start). The hash covers the preset's overrides and the spec's,
so changing the budget or a setting trains new runs instead of reusing stale ones.

Runs go to separate processes (`workers` at a time, one torch thread each): these small networks
gain nothing from intra-op threads, and separate processes keep the Python overheads of two runs
from contending for one interpreter lock.
"""

from __future__ import annotations

import concurrent.futures as cf
import hashlib
import json
import math
import multiprocessing
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from gcflow.files import atomic_write_text

# In overrides, `@RUN:STEP` stands for the checkpoint of step STEP of run RUN of the same study.
CHECKPOINT_REF = "@"
# In a finished run's folder: the digest of the spec that trained it. A checkpoint is loaded by another run
# only from a folder marked with its spec's current digest (not one a changed spec of that name left).
MARK = "study-digest.txt"
CURVE_KEYS = ("classifier_fd", "pixel_sliced_w2", "seconds", "loss")
# Datasets known by name: their loaders check the official files (MD5s), so the folder they lie in
# (data.root) does not change a run and is left out of its digest. For any other dataset (folder,
# npz, ...) the folder *is* the data and stays in.
NAMED_DATASETS = frozenset({"digits", "mnist", "fashion-mnist", "cifar10"})
FLOOR_KEYS = ("classifier_fd_noise_floor", "pixel_sliced_w2_noise_floor", "classifier_test_accuracy")


@dataclass(frozen=True)
class RunSpec:
    """One training run of a study.

    Attributes:
        name: unique within the study, e.g. "gc0.5-seed1" (also the run folder's name).
        label: the method it belongs to, e.g. "GC μ=0.5" (curves of one label are compared over seeds).
        preset: the trainer preset it starts from.
        overrides: trainer overrides on top of the preset; `method.gc_checkpoint=@RUN:STEP` refers
            to another run of the study (which then trains first and keeps that checkpoint).
        seed: the training seed (train.seed).
        keep_steps: checkpoints of this run that later runs load (kept when the others are pruned).
    """

    name: str
    label: str
    preset: str
    overrides: tuple[str, ...]
    seed: int
    keep_steps: tuple[int, ...] = ()

    def needs(self) -> list[tuple[str, int]]:
        """(run name, step) of every checkpoint of another run this run loads."""
        out = []
        for item in self.overrides:
            _, _, value = item.partition("=")
            if value.startswith(CHECKPOINT_REF):
                run, _, step = value[1:].partition(":")
                out.append((run, int(step)))
        return out

    def digest(self) -> str:
        """12 hex digits over everything that decides the run's result (the preset's own overrides included).

        Not the data folder (`data.root`) of a dataset in NAMED_DATASETS: the name says what the data
        are (the official files are MD5-checked when loaded), so the same study run from another clone or
        folder reuses the cache.
        """
        from gcflow.training.presets import PRESETS

        known = self.preset in PRESETS
        preset = list(PRESETS[self.preset].overrides) if known else []
        names = [v for k, _, v in (o.partition("=") for o in (*preset, *self.overrides)) if k == "data.name"]
        named = bool(names) and names[-1] in NAMED_DATASETS
        what = {
            "preset": preset if known else self.preset,
            "overrides": [o for o in self.overrides if not (named and o.partition("=")[0] == "data.root")],
            "seed": self.seed,
        }
        return hashlib.sha256(json.dumps(what, sort_keys=True).encode()).hexdigest()[:12]


@dataclass
class StudyPaths:
    """Where a study keeps its per-run JSON (`cache`, committed) and its run folders (`work`, scratch)."""

    cache: Path
    work: Path
    log: Callable[[str], None] = field(default=lambda msg: None)

    def json_path(self, spec: RunSpec) -> Path:
        return self.cache / f"{spec.name}-{spec.digest()}.json"

    def run_dir(self, spec: RunSpec) -> Path:
        return self.work / spec.name

    def holds(self, spec: RunSpec) -> bool:
        """Whether the run folder of `spec` holds a finished run of this very spec (see MARK)."""
        mark = self.run_dir(spec) / MARK
        return mark.is_file() and mark.read_text().strip() == spec.digest()

    def checkpoint(self, run: str, step: int) -> Path:
        return self.work.resolve() / run / "checkpoints" / f"ckpt-{step:08d}.safetensors"


def load_cached(spec: RunSpec, paths: StudyPaths) -> dict[str, Any] | None:
    """The cached record of a finished run, or None when it must (re)train."""
    path = paths.json_path(spec)
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError:  # a torn write cannot happen (atomic), but a hand-edited file can
        return None


def resolve_overrides(spec: RunSpec, paths: StudyPaths) -> list[str]:
    """The spec's overrides with `@RUN:STEP` replaced by that checkpoint's path."""
    out = []
    for item in spec.overrides:
        key, _, value = item.partition("=")
        if value.startswith(CHECKPOINT_REF):
            run, _, step = value[1:].partition(":")
            value = str(paths.checkpoint(run, int(step)))
        out.append(f"{key}={value}")
    return out


def train_one(spec: RunSpec, paths: StudyPaths) -> dict[str, Any]:
    """Train `spec` from scratch into its run folder and write its JSON record; returns the record."""
    from gcflow.experiments.common import run_metrics
    from gcflow.training.checkpoint import list_checkpoints
    from gcflow.training.config import apply_overrides
    from gcflow.training.presets import load_preset
    from gcflow.training.trainer import train

    cfg = apply_overrides(load_preset(spec.preset), [*resolve_overrides(spec, paths), f"train.seed={spec.seed}"])
    run_dir = paths.run_dir(spec)
    cpu0, wall0 = time.process_time(), time.perf_counter()
    # A run cut off mid-way retrains from the start (its CPU time is part of the record). The trainer's
    # overwrite deletes only a gcflow run that no other process holds, never a folder with other files.
    result = train(cfg, run_dir, overwrite=True, progress=False, log=lambda *a, **k: None)
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    for ckpt in list_checkpoints(run_dir / "checkpoints"):  # keep only what later runs load
        if int(ckpt.stem.split("-")[1]) not in spec.keep_steps:
            ckpt.unlink(missing_ok=True)
    record = curves_record(spec, run_metrics(run_dir), cpu, wall)  # evaluation records only
    record["final_step"] = result.summary.get("step")
    text = json.dumps(record, indent=1, allow_nan=False)
    paths.cache.mkdir(parents=True, exist_ok=True)
    atomic_write_text(paths.json_path(spec), text + "\n")
    return json.loads(text)  # exactly what a later run of the study reads back from the cache


def curves_record(
    spec: RunSpec, records: list[dict[str, Any]], cpu_seconds: float, wall_seconds: float
) -> dict[str, Any]:
    """The JSON record of a run: its spec, the metric at every evaluation, the floors and its time."""
    curves = {k: [_finite(r.get(k)) for r in records] for k in CURVE_KEYS}
    floors = {k: records[-1].get(k) for k in FLOOR_KEYS if records and k in records[-1]}
    import torch

    return {
        "spec": asdict(spec),
        "digest": spec.digest(),
        "steps": [r["step"] for r in records],
        **curves,
        "floors": floors,
        "cpu_seconds": round(cpu_seconds, 2),
        "wall_seconds": round(wall_seconds, 2),
        "torch": torch.__version__,
        "finished": time.strftime("%Y-%m-%d %H:%M:%S"),
    }


def _finite(x: Any) -> Any:
    return x if not isinstance(x, float) or math.isfinite(x) else None


def warm_up(spec: RunSpec, paths: StudyPaths) -> None:
    """Build the evaluator of `spec` once, so that the classifier is trained and cached before the runs
    start: otherwise the first runs would train it themselves and its seconds would count as theirs."""
    import torch

    from gcflow.training.config import apply_overrides
    from gcflow.training.data_source import build_source, is_toy
    from gcflow.training.evaluate import build_evaluator
    from gcflow.training.presets import load_preset

    cfg = apply_overrides(load_preset(spec.preset), [*resolve_overrides(spec, paths), "train.device=cpu"])
    if not is_toy(cfg.data.name):
        device = torch.device("cpu")
        build_evaluator(cfg, build_source(cfg, device, 0, 1), device, paths.log)


def _worker(spec: RunSpec, cache: str, work: str) -> dict[str, Any]:
    """Process-pool entry point (module level, so that spawned processes can import it)."""
    return train_one(spec, StudyPaths(Path(cache), Path(work)))


def _has_checkpoint(dep: RunSpec, step: int, paths: StudyPaths) -> bool:
    return paths.checkpoint(dep.name, step).is_file() and paths.holds(dep)


def _ready(spec: RunSpec, done: set[str], paths: StudyPaths, by_name: dict[str, RunSpec]) -> bool:
    return all(run in done and _has_checkpoint(by_name[run], step, paths) for run, step in spec.needs())


def _needs(spec: RunSpec, by_name: dict[str, RunSpec]) -> dict[str, str]:
    """The digest of every run whose checkpoint `spec` loads, by run name."""
    return {run: by_name[run].digest() for run, _ in spec.needs()}


def _is_current(spec: RunSpec, record: dict[str, Any] | None, by_name: dict[str, RunSpec]) -> bool:
    """A cached record counts unless it was trained from a run whose spec has changed since.
    (Records written before dependencies were recorded hold no "needs" and count.)"""
    needs = _needs(spec, by_name)
    return record is not None and record.get("needs", needs) == needs


def pending_specs(specs: list[RunSpec], paths: StudyPaths) -> list[RunSpec]:
    """Specs that still have to train: no cached record, a record trained from a run whose spec has
    changed, or a cached record whose checkpoints a pending run needs but whose run folder is gone or
    holds another spec's run (e.g. a fresh clone with the committed JSON)."""
    by_name = {s.name: s for s in specs}
    todo = [s for s in specs if not _is_current(s, load_cached(s, paths), by_name)]
    changed = True
    while changed:
        changed = False
        for s in list(todo):
            for run, step in s.needs():
                dep = by_name[run]
                if dep not in todo and not _has_checkpoint(dep, step, paths):
                    todo.append(dep)
                    changed = True
    return [s for s in specs if s in todo]


def _finished(spec: RunSpec, record: dict[str, Any], paths: StudyPaths, by_name: dict[str, RunSpec]) -> dict[str, Any]:
    """Mark the run folder of a finished run and record which runs' checkpoints it loaded."""
    if spec.needs() and record.get("needs") != _needs(spec, by_name):
        record = {**record, "needs": _needs(spec, by_name)}
        atomic_write_text(paths.json_path(spec), json.dumps(record, indent=1, allow_nan=False) + "\n")
    paths.run_dir(spec).mkdir(parents=True, exist_ok=True)
    atomic_write_text(paths.run_dir(spec) / MARK, spec.digest() + "\n")
    return _announce(paths, spec, record)


def execute(
    specs: list[RunSpec], paths: StudyPaths, workers: int = 2, on_record: Callable[[str], None] | None = None
) -> dict[str, dict[str, Any]]:
    """Train every pending spec (`workers` at a time, dependencies first); returns every record by name.

    With workers = 1 the runs train in this process, one after the other (tests, debugging).
    `on_record(name)` is called after each run finishes (e.g. to refresh a partial report).
    """
    names = [s.name for s in specs]
    if len(set(names)) != len(names):
        raise ValueError("run names of a study must be unique")
    todo = pending_specs(specs, paths)
    by_name = {s.name: s for s in specs}
    records = {s.name: load_cached(s, paths) for s in specs if s not in todo}
    done = set(records)
    paths.log(f"{len(done)} run(s) cached, {len(todo)} to train")
    if todo:
        warm_up(todo[0], paths)
    if workers <= 1:
        while todo:
            spec = next((s for s in todo if _ready(s, done, paths, by_name)), todo[0])
            todo.remove(spec)
            records[spec.name] = _finished(spec, train_one(spec, paths), paths, by_name)
            done.add(spec.name)
            if on_record is not None:
                on_record(spec.name)
        return records
    ctx = multiprocessing.get_context("spawn")
    with cf.ProcessPoolExecutor(max_workers=workers, mp_context=ctx) as pool:
        running: dict[cf.Future, RunSpec] = {}
        failed: Exception | None = None  # after a failure start nothing more; the runs in progress finish
        while (todo and failed is None) or running:
            ready = [s for s in todo if _ready(s, done, paths, by_name)] if failed is None else []
            for spec in ready[: workers - len(running)]:
                todo.remove(spec)
                running[pool.submit(_worker, spec, str(paths.cache), str(paths.work))] = spec
                paths.log(f"started {spec.name}")
            if not running:
                raise RuntimeError(f"runs {[s.name for s in todo]} wait on checkpoints that no run will write")
            finished, _ = cf.wait(running, return_when=cf.FIRST_COMPLETED)
            for fut in finished:
                spec = running.pop(fut)
                try:
                    record = fut.result()
                except Exception as exc:  # noqa: BLE001 -- re-raised below, once the other runs are safe
                    paths.log(f"{spec.name} failed: {exc}" + ("; waiting for the runs in progress" * bool(running)))
                    failed = failed or exc
                    continue
                records[spec.name] = _finished(spec, record, paths, by_name)
                done.add(spec.name)
                if on_record is not None:
                    on_record(spec.name)
    if failed is not None:
        raise failed
    return records


def _announce(paths: StudyPaths, spec: RunSpec, record: dict[str, Any]) -> dict[str, Any]:
    fd = record.get("classifier_fd") or [None]
    paths.log(f"finished {spec.name}: final classifier FD {fd[-1]}, {record['cpu_seconds']:.0f} s CPU")
    return record

"""``retina-deploy demo``: the whole pipeline on synthetic data, every stage resumable.

make-shapes -> train -> eval the checkpoint -> export-onnx (NMS in the graph, and ``--nms none`` for
engines) -> FP16 -> INT8 (TensorRT's form and ONNX Runtime's CPU form) -> engines (TensorRT or
TensorRT-RTX, where installed) -> eval every file that runs here -> bench -> predict -> report. The
stage bodies are in ``stages``, the settings in ``recipe``; this module holds the folder rules and the
stage runner.

Each finished stage is recorded in ``summary.json`` (atomically) with the settings it read. A rerun with
the same settings skips the stages already done whose outputs still exist, and continues an interrupted
demo; a rerun with other settings redoes everything from the first stage whose settings changed.
"""

from __future__ import annotations

import dataclasses
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from retina_deploy.core.errors import ConfigError
from retina_deploy.core.fileio import write_json_atomic
from retina_deploy.core.outputs import check_output_dir, mark_folder, marker_path, remove_marked_dir
from retina_deploy.demo import stages as st
from retina_deploy.demo.recipe import DEMO_RECIPE, DemoRecipe
from retina_deploy.demo.stages import DemoContext, StageDone, train_config

SUMMARY = "summary.json"
COMMAND = "demo"  # its marker, written first, marks a folder this command created and may replace
MARKER = marker_path("", COMMAND).name
FORMAT, FORMAT_VERSION = "retina-deploy/demo", 1


def check_recipe(recipe: DemoRecipe) -> None:
    """ConfigError for a recipe a stage cannot take (backbone, size, norms, batch ranges...), before anything
    is written: a late stage must not fail on its settings after the training ran."""
    from retina_deploy.data.shapes import check_object_extent
    from retina_deploy.model.config import BACKBONE_DEPTHS
    from retina_deploy.runtime.contract.onnx_metadata import check_batch_range
    from retina_deploy.runtime.image.preprocess import check_input_size

    if recipe.backbone not in BACKBONE_DEPTHS:
        raise ConfigError(f"--backbone {recipe.backbone!r} is not one of {sorted(BACKBONE_DEPTHS)}")
    try:
        check_input_size(recipe.size, recipe.size)
    except ConfigError as e:
        raise ConfigError(f"--size {recipe.size}: {e}") from e
    if recipe.anchor_sizes[0] < 1:
        raise ConfigError(f"--size {recipe.size} x anchor_scale {recipe.anchor_scale} is under one pixel")
    check_object_extent(recipe.object_extent)
    lo, _, hi = check_batch_range(recipe.export_batch)
    outside = [b for b in recipe.bench_batches if not lo <= b <= hi]
    if outside:
        raise ConfigError(f"bench batch {outside[0]} is outside the export's batch range {lo}..{hi}")
    train_config(Path("."), recipe)  # TrainConfig's own checks (optimizer, schedule, GroupNorm at P7...)


@dataclass(frozen=True)
class Stage:
    """One stage: ``run`` does it; ``keys`` are the recipe fields it reads, ``extra_key`` other things it depends
    on (the TensorRT installed); ``outputs`` every path it may write (removed before it runs again)."""

    name: str
    run: Callable[[DemoContext], StageDone]
    keys: tuple[str, ...] = ()
    outputs: tuple[str, ...] = ()
    extra_key: Callable[[], dict[str, Any]] | None = None

    def settings(self, recipe: DemoRecipe) -> dict[str, Any]:
        values = recipe.to_dict()
        return {**{k: values[k] for k in self.keys}, **(self.extra_key() if self.extra_key else {})}


def _prepare_out(out: Path, *, keep: bool = False) -> dict[str, Any] | None:
    """Mark ``out`` as the demo's folder; return the previous demo's summary when ``keep``, else empty it first.

    Refuses (ConfigError) a file, or a non-empty folder without the demo's marker (what it holds, a
    summary.json or a run/, does not make it the demo's).
    """
    check_output_dir(out, command=COMMAND, reuse=True)
    previous = None
    if out.is_dir() and any(out.iterdir()):
        previous = _read_summary(out) if keep else None
        if not keep:
            remove_marked_dir(out, COMMAND)
    mark_folder(out, COMMAND)
    return previous


def _read_summary(out: Path) -> dict[str, Any] | None:
    """The previous run's summary, or None when there is none we can read (then every stage runs again)."""
    from retina_deploy.core.fileio import read_format_json

    try:
        summary = read_format_json(out / SUMMARY, FORMAT, FORMAT_VERSION, "a demo summary", ConfigError)
    except (OSError, ConfigError):
        return None
    lists = [summary.get(key) for key in ("stages", "artifacts")]
    if not all(isinstance(items, list) and all(isinstance(x, dict) for x in items) for items in lists):
        return None
    return summary


def _first_to_run(stages: list[Stage], previous: dict[str, Any] | None, recipe: DemoRecipe, out: Path) -> int:
    """Index of the first stage not done with these settings, or whose outputs are gone."""
    done = {s.get("name"): s for s in (previous or {}).get("stages", []) if isinstance(s, dict)}
    for i, stage in enumerate(stages):
        record = done.get(stage.name)
        if (
            record is None
            or record.get("status") != "done"
            or record.get("settings") != stage.settings(recipe)
            or not all((out / rel).exists() for rel in record.get("outputs", []))
        ):
            return i
    return len(stages)


def _forget_from(stages: list[Stage], first: int, summary: dict[str, Any], out: Path) -> None:
    """Remove what stages ``first``.. wrote (files and summary entries) before they run again."""
    names = {stage.name for stage in stages[first:]}
    for stage in stages[first:]:
        for rel in stage.outputs:
            path = out / rel
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            elif path.exists() or path.is_symlink():
                path.unlink()
    summary["stages"] = [s for s in summary["stages"] if s.get("name") not in names]
    summary["artifacts"] = [a for a in summary["artifacts"] if a.get("stage") not in names]


def _new_summary(recipe: DemoRecipe, previous: dict[str, Any] | None) -> dict[str, Any]:
    from retina_deploy.runtime.bench.envinfo import environment

    summary = {"format": FORMAT, "format_version": FORMAT_VERSION, "settings": recipe.to_dict(),
               "environment": environment(), "stages": [], "artifacts": []}  # fmt: skip
    for key, value in (previous or {}).items():
        if key not in ("format", "format_version", "settings", "environment"):
            summary[key] = value
    return summary


def _with_changes(recipe: DemoRecipe, changes: dict[str, Any]) -> DemoRecipe:
    names = {f.name for f in dataclasses.fields(DemoRecipe)}
    unknown = sorted(set(changes) - names)
    if unknown:
        raise ConfigError(f"unknown demo setting {unknown[0]!r}; the recipe has {', '.join(sorted(names))}")
    return dataclasses.replace(recipe, **changes)


def _with_sidecars(files: tuple[tuple[str, ...], ...], suffix: str) -> tuple[str, ...]:
    """The first names of ``files`` and beside each its ``<name><suffix>`` (calibration cache, engine manifest)."""
    return tuple(x for name, *_ in files for x in (name, name + suffix))


_DATA = ("size", "num_train", "num_val", "seed", "object_extent")
_LATER = ("export_batch", "calib_num", "bench_batches", "bench_warmup_s", "bench_duration_s", "predict_images")
# Training reads every other field of the recipe (a field added there counts as a training one).
_TRAIN = tuple(f.name for f in dataclasses.fields(DemoRecipe) if f.name not in _DATA + _LATER)
_BENCH = ("bench_batches", "bench_warmup_s", "bench_duration_s")
STAGES = [
    Stage("make-shapes", st.make_data, _DATA, ("data/train", "data/val")),
    Stage("train", st.train_stage, _TRAIN, ("run",)),
    Stage("eval checkpoint", st.eval_checkpoint),
    Stage("export-onnx", st.export_stage, ("export_batch",), (st.ONNX_FP32, st.ONNX_NMS_NONE)),
    Stage("fp16", st.fp16_stage, (), tuple(rel for rel, _ in st.FP16_FILES)),
    Stage("int8", st.int8_stage, ("calib_num",), _with_sidecars(st.INT8_FILES, ".calib.json")),
    Stage("engines", st.engines_stage, (), _with_sidecars(st.ENGINES, ".json"), st.installed_tensorrt),
    Stage("eval", st.eval_stage),
    Stage("bench", st.bench_stage, _BENCH, ("bench.json", "bench.png")),
    Stage("predict", st.predict_stage, ("predict_images",), ("predictions",)),
    Stage("report", st.report_stage, (), ("report.html", "report.md", "report")),
]  # fmt: skip


def run_demo(
    out: str | Path,
    recipe: DemoRecipe = DEMO_RECIPE,
    *,
    restart: bool = False,
    progress: bool = False,
    log: Callable[[str], None] = print,
    **changes: Any,
) -> dict[str, Any]:
    """Run every stage not done yet into ``out``; returns (and writes to ``out/summary.json``) the summary.

    changes: recipe fields to change (``size=128, train_images=40``...). restart: redo every stage.
    Raises ConfigError for a bad setting or a foreign ``out``, before anything on disk changes.
    """
    recipe = _with_changes(recipe, changes)
    check_recipe(recipe)
    out = Path(out)
    previous = _prepare_out(out, keep=not restart)
    summary = _new_summary(recipe, previous)
    first = _first_to_run(STAGES, previous, recipe, out)
    _forget_from(STAGES, first, summary, out)
    ctx = DemoContext(out, recipe, summary, progress=progress)
    for i, stage in enumerate(STAGES):
        label = f"[{i + 1}/{len(STAGES)}] {stage.name}"
        if i < first:
            log(f"{label}: done earlier, skipped")
            continue
        start = time.perf_counter()
        done = stage.run(ctx)
        seconds = time.perf_counter() - start
        record = {"name": stage.name, "status": "done", "seconds": round(seconds, 1), "result": done.result,
                  "commands": done.commands, "outputs": done.outputs, "settings": stage.settings(recipe)}  # fmt: skip
        summary["stages"].append(record)
        summary["total_seconds"] = round(sum(s["seconds"] for s in summary["stages"]), 1)
        write_json_atomic(out / SUMMARY, summary)
        log(f"{label}: {done.result} ({seconds:.0f} s)")
    return summary

"""The sections of the demo report, built from ``summary.json`` (``retina_deploy.demo.report``'s content).

Each ``*_section`` returns a ``Section`` of blocks; values that are missing or null show as "–" and a
missing optional input gives a one-line "not run" note instead of its table or picture.
"""

from __future__ import annotations

import json
import logging
import os
import shlex
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

log = logging.getLogger(__name__)

REPORT_DIR = "report"  # the pictures, inside the demo folder
DASH = "–"  # shown for a value that was not measured
LATENCY_BATCHES = ("1", "4")  # always shown, even when not measured
COMMAND_WIDTH = 100  # longer commands are shown over several lines


@dataclass
class Block:
    """One piece of a section: kind "p" or "note" (text), "table" (header, rows), "img" (path; alt in text), "code"."""

    kind: str
    text: str = ""
    header: list[str] = field(default_factory=list)
    rows: list[list[str]] = field(default_factory=list)
    path: str = ""


@dataclass
class Section:
    title: str
    blocks: list[Block] = field(default_factory=list)


def overview_section(summary: dict[str, Any]) -> Section:
    """One paragraph: what was trained, the model's val AP50, total time, the machine."""
    settings = _dict(summary.get("settings"))
    artifacts = [a for a in _list(summary.get("artifacts")) if isinstance(a, dict)]
    reference = next((a for a in artifacts if a.get("name") == "checkpoint" and _num(a.get("AP50")) is not None), None)
    reference = reference or next((a for a in artifacts if _num(a.get("AP50")) is not None), None)
    what = f"A RetinaNet ({settings.get('backbone', 'unknown backbone')}, {settings.get('size', '?')} px input)"
    what += f" trained on {_count(settings.get('num_train'))}synthetic shapes images"
    seen = _first_num(_dict(summary.get("training")).get("images_seen"), settings.get("train_images"))
    what += f" ({seen:,.0f} images seen)" if seen is not None else ""
    if reference is not None:
        accuracy = (
            f" reaches AP50 {_fmt(reference.get('AP50'), 3)} (AP {_fmt(reference.get('AP'), 3)}) on"
            f" {_count(settings.get('num_val'))}held-out validation images ({reference.get('name')})."
        )
    else:
        accuracy = "; it was not evaluated."
    total = _num(summary.get("total_seconds"))
    took = (
        f" The whole demo took {_duration(total)}" if total is not None else " The demo's total time was not recorded"
    )
    text = what + accuracy + took + f" on {machine_line(_dict(summary.get('environment')))}."
    return Section("", [Block("p", text=text)])


def artifacts_section(summary: dict[str, Any]) -> Section:
    """Every artifact: precision, runtime, accuracy, latency per batch size, file size, note."""
    artifacts = [a for a in _list(summary.get("artifacts")) if isinstance(a, dict)]
    section = Section("Artifacts")
    if not artifacts:
        section.blocks.append(Block("note", text="No artifacts were recorded (the pipeline did not get that far)."))
        return section
    batches = _latency_batches(artifacts)
    header = ["artifact", "precision", "runtime", "AP", "AP50"]
    header += [f"latency b{b} (ms)" for b in batches] + ["size (MB)", "note"]
    rows = []
    for a in artifacts:
        latency = _dict(a.get("latency_ms"))
        size = _num(a.get("size_bytes"))
        rows.append(
            [
                str(a.get("name") or DASH),
                str(a.get("precision") or DASH),
                str(a.get("runtime") or DASH),
                _fmt(a.get("AP"), 3),
                _fmt(a.get("AP50"), 3),
            ]
            + [_fmt(latency.get(b), 1) for b in batches]
            + [_fmt(size / 1e6 if size is not None and size >= 0 else None, 1), str(a.get("note") or "")]
        )
    section.blocks.append(Block("table", header=header, rows=rows))
    section.blocks.append(
        Block(
            "note",
            text="AP and AP50 on the held-out validation images (COCO metrics); latency: mean of the"
            " benchmark, preprocessing to detections; – where the artifact cannot run here.",
        )
    )
    return section


def _latency_batches(artifacts: list[dict[str, Any]]) -> list[str]:
    found = {str(b) for a in artifacts for b in _dict(a.get("latency_ms"))}
    return sorted(found | set(LATENCY_BATCHES), key=lambda b: (not b.isdigit(), int(b) if b.isdigit() else 0, b))


def bench_section(out: Path, summary: dict[str, Any]) -> Section:
    """The benchmark plot (copied into report/) and a short table of bench.json's results."""
    from retina_deploy.demo.plots import copy_file_atomic

    bench = _dict(summary.get("bench"))
    section = Section("Benchmark")
    plot = _inside(out, bench.get("plot"))
    if plot is not None and plot.is_file():
        copy_file_atomic(plot, out / REPORT_DIR / "bench.png")
        section.blocks.append(Block("img", text="latency per artifact and batch size", path=f"{REPORT_DIR}/bench.png"))
    rows = _bench_rows(_inside(out, bench.get("json")))
    if rows:
        header = ["model", "backend", "precision", "device", "batch", "mean (ms)", "p90 (ms)", "images/s"]
        section.blocks.append(Block("table", header=header, rows=rows))
    if not section.blocks:
        section.blocks.append(Block("note", text="Benchmark: not run."))
    return section


def _bench_rows(path: Path | None) -> list[list[str]]:
    if path is None or not path.is_file():
        return []
    try:
        report = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        log.warning("%s: unreadable, left out of the report (%s)", path, e)
        return []
    results = [r for r in _list(_dict(report).get("results")) if isinstance(r, dict)]
    names = _short_names([str(r.get("model", DASH)) for r in results])
    rows = []
    for r, name in zip(results, names, strict=True):
        latency = _dict(r.get("latency_ms"))
        rows.append(
            [
                name,
                str(r.get("backend", DASH)),
                str(r.get("precision", DASH)),
                str(r.get("device", DASH)),
                str(r.get("batch", DASH)),
                _fmt(latency.get("mean"), 2),
                _fmt(latency.get("p90"), 2),
                _fmt(r.get("images_per_s"), 1),
            ]
        )
    return rows


def _short_names(paths: list[str]) -> list[str]:
    """``paths`` without the folder they all share ("demo-out/model.onnx" -> "model.onnx")."""
    parents = [str(PurePosixPath(p).parent) for p in paths]
    if not paths or any(p in ("", ".") for p in parents):
        return paths
    common = os.path.commonpath(parents) if len({p.startswith("/") for p in parents}) == 1 else ""
    return [os.path.relpath(p, common) if common else p for p in paths]


def training_section(out: Path, summary: dict[str, Any]) -> Section:
    """The training curve: smoothed losses and val AP50 against images seen (report/training.png)."""
    from retina_deploy.demo.plots import training_plot

    training = _dict(summary.get("training"))
    section = Section("Training")
    metrics = _inside(out, training.get("metrics_csv"))
    if metrics is None or not metrics.is_file():
        section.blocks.append(Block("note", text="Training curve: not run (no metrics.csv)."))
        return section
    batch_size = _first_num(training.get("batch_size"), _dict(summary.get("settings")).get("batch_size")) or 1
    try:
        png = training_plot(metrics, int(batch_size), out / REPORT_DIR / "training.png")
    except ImportError:
        png = None
        section.blocks.append(Block("note", text="Training curve: not drawn (matplotlib is not installed)."))
    if png is not None:
        section.blocks.append(Block("img", text="training losses and val AP50", path=f"{REPORT_DIR}/training.png"))
    elif not section.blocks:
        section.blocks.append(Block("note", text="Training curve: metrics.csv holds no rows yet."))
    seen = _num(training.get("images_seen"))
    if seen is not None:
        section.blocks.append(Block("p", text=f"{seen:,.0f} training images seen, batch size {int(batch_size)}."))
    return section


def val_grid_section(out: Path, summary: dict[str, Any]) -> Section:
    """Ground truth beside prediction for the first validation images (report/val_grid.png)."""
    from retina_deploy.demo.plots import val_grid
    from retina_deploy.inference.predict import DEFAULT_DRAW_THRESH

    predictions, val = _dict(summary.get("predictions")), _dict(summary.get("val"))
    section = Section("Validation images")
    detections = _inside(out, predictions.get("json"))
    images, annotations = _inside(out, val.get("images")), _inside(out, val.get("annotations"))
    missing = [p for p in (detections, images, annotations) if p is None or not p.exists()]
    drawn, thresh = None, _num(predictions.get("draw_thresh"))
    if thresh is None:  # a summary from before the threshold was recorded
        thresh = DEFAULT_DRAW_THRESH
    if not missing:
        try:
            drawn = val_grid(images, annotations, detections, out / REPORT_DIR / "val_grid.png", score_thresh=thresh)
        except (ValueError, KeyError, TypeError, json.JSONDecodeError) as e:  # ImageError is a ValueError
            section.blocks.append(Block("note", text=f"Validation grid: not drawn ({type(e).__name__}: {e})."))
            return section
    if drawn is None:
        section.blocks.append(Block("note", text="Validation grid: not run (no predictions on validation images)."))
        return section
    model = predictions.get("model") or "the model"
    section.blocks.append(
        Block(
            "p",
            text=f"{drawn[1]} validation images: ground truth (left) beside the predictions of {model} (right:"
            f" {drawn[2]} boxes with score ≥ {thresh:g}{_best_f1_text(summary, predictions.get('model'))})."
            " Ground-truth boxes are labelled with score 1.00.",
        )
    )
    section.blocks.append(Block("img", text="ground truth beside prediction", path=f"{REPORT_DIR}/val_grid.png"))
    return section


def _best_f1_text(summary: dict[str, Any], model: Any) -> str:
    """ ", the best F1 ..." of artifact ``model`` for the grid's caption, or "" without a usable record."""
    entry = next((a for a in _list(summary.get("artifacts")) if isinstance(a, dict) and a.get("path") == model), {})
    values = [_num(_dict(entry.get("best_f1")).get(k)) for k in ("f1", "precision", "recall")]
    if any(v is None for v in values):
        return ""
    f1, precision, recall = values
    return f", the best F1 on the validation set: {f1:.3f}, precision {precision:.3f}, recall {recall:.3f} at IoU 0.5"


def stages_section(summary: dict[str, Any]) -> Section:
    stages = [s for s in _list(summary.get("stages")) if isinstance(s, dict)]
    section = Section("Stages")
    if not stages:
        section.blocks.append(Block("note", text="No stages were recorded."))
        return section
    rows = [
        [
            str(s.get("name", DASH)),
            str(s.get("status", DASH)),
            _fmt(s.get("seconds"), 1),
            str(s.get("result") or s.get("error") or ""),
        ]
        for s in stages
    ]
    total = _num(summary.get("total_seconds"))
    if total is not None:
        rows.append(["total", "", _fmt(total, 1), _duration(total)])
    section.blocks.append(Block("table", header=["stage", "status", "seconds", "result"], rows=rows))
    return section


def commands_section(summary: dict[str, Any]) -> Section:
    """Each stage's exact commands, one code block per stage."""
    section = Section("Reproduce by hand")
    section.blocks.append(
        Block("p", text="Each stage's commands as the demo ran them, from the folder it was started in.")
    )
    stages = [s for s in _list(summary.get("stages")) if isinstance(s, dict)]
    for s in stages:
        commands = [str(c) for c in _list(s.get("commands"))]
        if commands:
            section.blocks.append(Block("p", text=f"{s.get('name', 'stage')}:"))
            wrapped = [wrap_command(c) for c in commands]
            separator = "\n\n" if any("\n" in w for w in wrapped) else "\n"  # a blank line between long commands
            section.blocks.append(Block("code", text=separator.join(wrapped)))
    if len(section.blocks) == 1:
        section.blocks = [Block("note", text="No commands were recorded.")]
    return section


def wrap_command(line: str, width: int = COMMAND_WIDTH) -> str:
    """A long shell command over lines of about ``width`` characters, joined by `` \\`` continuations.

    Lines break between words, preferably before an ``--option`` (kept with its values). The shell reads
    the result as the same words; a line that is not valid shell syntax is returned as is.
    """
    if len(line) <= width:
        return line
    try:
        words = [shlex.quote(w) for w in shlex.split(line)]
    except ValueError:
        return line
    groups: list[list[str]] = [[]]  # the command and its positional words, then one group per option
    for word in words:
        if word.startswith("--"):
            groups.append([])
        groups[-1].append(word)
    lines, current = [], ""
    for group in groups:
        text = " ".join(group)
        if current and len(current) + 1 + len(text) <= width:
            current = f"{current} {text}"
            continue
        for word in group if len(text) > width else [text]:  # a group longer than a line: word by word
            if current and len(current) + 1 + len(word) > width:
                lines.append(current)
                current = "  " + word
            else:
                current = f"{current} {word}" if current else word
    return " \\\n".join([*lines, current])


def environment_section(summary: dict[str, Any]) -> Section:
    """CPU, cores, OS, Python, GPUs and library versions from envinfo.environment()."""
    env = _dict(summary.get("environment"))
    section = Section("Environment")
    if not env:
        section.blocks.append(Block("note", text="The environment was not recorded."))
        return section
    cpu = _dict(env.get("cpu"))
    rows = [
        ["host", str(env.get("host") or DASH)],
        ["OS", str(env.get("os") or DASH)],
        ["Python", str(env.get("python") or DASH)],
        ["CPU", f"{cpu.get('model') or DASH} ({cpu.get('arch') or '?'})"],
        [
            "cores",
            f"{_or_dash(cpu.get('logical_cpus'))} logical, {_or_dash(cpu.get('physical_cores'))} physical,"
            f" {_or_dash(cpu.get('usable_cpus'))} usable",
        ],
        ["CPU features", ", ".join(str(f) for f in _list(cpu.get("flags"))) or DASH],
    ]
    gpus = [g for g in _list(env.get("gpus")) if isinstance(g, dict)]
    for i, g in enumerate(gpus):
        memory = _num(g.get("memory_total"))
        rows.append(
            [
                f"GPU {i}",
                f"{g.get('name') or DASH}, driver {_or_dash(g.get('driver_version'))}, CUDA"
                f" {_or_dash(g.get('cuda'))}, {_fmt(memory / 1024 if memory else None, 0)} GiB",
            ]
        )
    if not gpus:
        rows.append(["GPU", "none"])
    jetson = env.get("jetson")
    if isinstance(jetson, dict):
        rows.append(["Jetson", f"{jetson.get('l4t') or DASH}; power mode {jetson.get('nvpmodel') or DASH}"])
    rows += [[str(name), str(version)] for name, version in _dict(env.get("versions")).items()]
    section.blocks.append(Block("table", header=["", ""], rows=rows))
    return section


def machine_line(env: dict[str, Any]) -> str:
    """ "AMD EPYC 7B13 (2 cores), Linux 6.1, no GPU" style: the machine in a few words."""
    if not env:
        return "an unrecorded machine"
    cpu = _dict(env.get("cpu"))
    cores = _first_num(cpu.get("usable_cpus"), cpu.get("logical_cpus"))
    text = str(cpu.get("model") or "unknown CPU")
    if cores is not None:
        text += f" ({cores:.0f} {'core' if cores == 1 else 'cores'})"
    text += f", {env.get('os') or 'unknown OS'}"
    gpus = [g for g in _list(env.get("gpus")) if isinstance(g, dict)]
    return text + (", " + ", ".join(str(g.get("name") or "GPU") for g in gpus) if gpus else ", no GPU")


def _inside(out: Path, rel: Any) -> Path | None:
    """``out / rel`` for a summary path (relative to the demo folder), None when absent."""
    return out / str(rel) if isinstance(rel, str) and rel else None


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def _num(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value:  # NaN != NaN
        return None
    return float(value)


def _first_num(*values: Any) -> float | None:
    return next((v for v in map(_num, values) if v is not None), None)


def _fmt(value: Any, digits: int) -> str:
    number = _num(value)
    return DASH if number is None else f"{number:.{digits}f}"


def _or_dash(value: Any) -> str:
    return DASH if value is None or value == "" else str(value)


def _count(value: Any) -> str:
    number = _num(value)
    return f"{number:,.0f} " if number is not None else ""


def _duration(seconds: float) -> str:
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    if hours:
        return f"{hours} h {minutes} min"
    return f"{minutes} min {secs} s" if minutes else f"{secs} s"

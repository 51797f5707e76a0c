"""The demo's stages (``retina_deploy.demo.pipeline`` runs them in order): each takes a ``DemoContext``, calls the
pipeline's public entries and returns a ``StageDone``: its result line, the CLI commands that redo it by hand,
and the paths it wrote (relative to the demo folder).

Artifacts (model files) are listed in ``summary["artifacts"]``; each entry names the stage that made it,
later stages add accuracy (eval) and latency (bench).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import shlex
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from retina_deploy.demo.recipe import DemoRecipe

CHECKPOINT_RUNTIME, ORT_RUNTIME = "PyTorch (CPU)", "ONNX Runtime (CPU)"
ONNX_FP32, ONNX_NMS_NONE = "model.onnx", "model.nms-none.onnx"
# The precision files of stages 5 and 6: (file, its FP32 source) and (file, its FP32 source, INT8 form).
FP16_FILES = (("model.fp16.onnx", ONNX_FP32), ("model.nms-none.fp16.onnx", ONNX_NMS_NONE))
INT8_FILES = (
    ("model.int8.onnx", ONNX_FP32, "tensorrt"),
    ("model.int8-cpu.onnx", ONNX_FP32, "cpu"),
    ("model.nms-none.int8.onnx", ONNX_NMS_NONE, "tensorrt"),
)
# (engine, the nms-none ONNX file it is built from, precision)
ENGINES = (
    ("model.engine", ONNX_NMS_NONE, "fp32"),
    ("model.fp16.engine", "model.nms-none.fp16.onnx", "fp16"),
    ("model.int8.engine", "model.nms-none.int8.onnx", "int8"),
)
ENGINE_NOTE = "built; running it needs an NVIDIA GPU"
BENCH_IMAGES = 8  # validation images the bench cycles through
NMS_NONE_NOTE = "no NMS in the graph: the runtime runs NMS on the host (engines are built from these files)"


@dataclass(frozen=True)
class StageDone:
    """What a stage reports: its one-line result, the CLI commands that redo it by hand, the paths it wrote."""

    result: str
    commands: list[str]
    outputs: list[str]


@dataclass
class DemoContext:
    """What the stages share: the demo folder (as given), the recipe, the summary they fill in, the progress switch."""

    out: Path
    recipe: DemoRecipe
    summary: dict[str, Any]
    progress: bool = False

    def path(self, rel: str) -> Path:
        return self.out / rel

    def arg(self, rel: str) -> str:
        """``rel`` as a command-line argument: under --out as the user gave it."""
        return str(self.out / rel)


def command(*args: Any) -> str:
    """A ``retina-deploy`` command line, quoted for a POSIX shell."""
    return shlex.join(["retina-deploy", *(str(a) for a in args)])


def _artifact(ctx: DemoContext, stage: str, rel: str, precision: str, runtime: str, note: str = "") -> None:
    path = ctx.path(rel)
    size = sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.is_dir() else path.stat().st_size
    ctx.summary["artifacts"].append({
        "name": "checkpoint" if path.is_dir() else rel, "path": rel, "precision": precision, "runtime": runtime,
        "size_bytes": size, "AP": None, "AP50": None, "AP75": None, "latency_ms": None, "note": note, "stage": stage,
    })  # fmt: skip


def _metrics_text(metrics: dict[str, Any]) -> str:
    return f"AP {metrics['AP']:.3f}, AP50 {metrics['AP50']:.3f}"


# -- 1. make-shapes --------------------------------------------------------------------------------


def make_data(ctx: DemoContext) -> StageDone:
    from retina_deploy.data.shapes import OBJECT_EXTENT, make_shapes

    r, commands = ctx.recipe, []
    extent = [] if r.object_extent == OBJECT_EXTENT else ["--object-extent", *r.object_extent]
    for name, num, seed in (("train", r.num_train, r.seed), ("val", r.num_val, r.seed + 1)):
        make_shapes(ctx.path(f"data/{name}"), num_images=num, size=r.size, seed=seed,
                    object_extent=r.object_extent, overwrite=True)  # fmt: skip
        commands.append(command("make-shapes", ctx.arg(f"data/{name}"), "--num-images", num, "--size", r.size,
                                "--seed", seed, *extent))  # fmt: skip
    ctx.summary["val"] = {"images": "data/val/images", "annotations": "data/val/annotations.json"}
    return StageDone(f"{r.num_train} train + {r.num_val} val images", commands, ["data/train", "data/val"])


# -- 2. train --------------------------------------------------------------------------------------


def train_config(out: Path, recipe: DemoRecipe):
    """The TrainConfig of the demo: the recipe's fields of TrainConfig's names, the data in ``out/data``."""
    from retina_deploy.training.config import TrainConfig

    names = {f.name for f in dataclasses.fields(TrainConfig)}
    given = {k: v for k, v in dataclasses.asdict(recipe).items() if k in names}
    given.update(size=(recipe.size, recipe.size), anchor_sizes=recipe.anchor_sizes, iters=recipe.iters)
    data = out / "data"
    return TrainConfig(
        images=data / "train/images",
        annotations=data / "train/annotations.json",
        val_images=data / "val/images",
        val_annotations=data / "val/annotations.json",
        out=out / "run",
        **given,
    )


def train_command(cfg) -> str:
    """``retina-deploy train`` with every flag whose value is not the verb's default."""
    from retina_deploy.training.config import train_flag_fields

    defaults = type(cfg)(images=cfg.images, annotations=cfg.annotations, out=cfg.out, iters=1)
    args: list[Any] = ["train"]
    always = ("images", "annotations", "out", "iters")  # the length too: the verb has none of its own
    for name in dict.fromkeys((*always, *train_flag_fields())):
        value = getattr(cfg, name)
        if value is None or (name not in always and value == getattr(defaults, name)):
            continue
        args.append("--" + name.replace("_", "-"))
        args.extend(value if isinstance(value, tuple) else [value])
    return command(*args)


def checkpoint_rel(ctx: DemoContext) -> str:
    return "run/best" if ctx.path("run/best/config.json").is_file() else "run/last"


@contextlib.contextmanager
def _training_log_to_file_only() -> Iterator[None]:
    """train() copies its log to stderr when logging is not configured; the demo prints one line per stage
    (the log stays in run/train.log, and the tqdm bar shows progress on a terminal)."""
    root, quiet = logging.getLogger(), logging.NullHandler()
    added = not root.handlers
    if added:
        root.addHandler(quiet)
    try:
        yield
    finally:
        if added:
            root.removeHandler(quiet)


def train_stage(ctx: DemoContext) -> StageDone:
    from retina_deploy.training.run import train

    cfg = train_config(ctx.out, ctx.recipe)
    with _training_log_to_file_only():
        train(cfg)
    seen = cfg.iters * cfg.batch_size
    ctx.summary["training"] = {"run": "run", "metrics_csv": "run/metrics.csv", "images_seen": seen,
                               "batch_size": cfg.batch_size}  # fmt: skip
    rel = checkpoint_rel(ctx)
    _artifact(ctx, "train", rel, "fp32", CHECKPOINT_RUNTIME)
    result = f"{seen} images seen ({cfg.iters} iterations of {cfg.batch_size}), checkpoint {rel}"
    return StageDone(result, [train_command(cfg)], ["run"])


# -- 3. eval checkpoint ----------------------------------------------------------------------------


def _val(ctx: DemoContext):
    from retina_deploy.data.coco import load_coco

    return load_coco(ctx.path("data/val/images"), ctx.path("data/val/annotations.json"))


def _evaluate(ctx: DemoContext, rel: str, val) -> dict[str, Any]:
    from retina_deploy.evaluation.loop import evaluate_detector
    from retina_deploy.evaluation.metrics import best_f1_threshold
    from retina_deploy.inference.open import open_model

    with open_model(ctx.path(rel)) as detector:
        metrics, results = evaluate_detector(detector, val, progress=ctx.progress)
    entry = next(a for a in ctx.summary["artifacts"] if a["path"] == rel)
    entry.update({k: metrics[k] for k in ("AP", "AP50", "AP75")})
    entry["best_f1"] = best_f1_threshold(val.annotations_path, results)
    return metrics


def _eval_command(ctx: DemoContext, rel: str) -> str:
    return command("eval", ctx.arg(rel), "--images", ctx.arg("data/val/images"),
                   "--annotations", ctx.arg("data/val/annotations.json"))  # fmt: skip


def eval_checkpoint(ctx: DemoContext) -> StageDone:
    rel = checkpoint_rel(ctx)
    metrics = _evaluate(ctx, rel, _val(ctx))
    return StageDone(_metrics_text(metrics), [_eval_command(ctx, rel)], [])


# -- 4. export-onnx --------------------------------------------------------------------------------


def export_stage(ctx: DemoContext) -> StageDone:
    from retina_deploy.export.onnx_export import ExportConfig, export_onnx

    ckpt, batch, commands = checkpoint_rel(ctx), ctx.recipe.export_batch, []
    for rel, nms in ((ONNX_FP32, "onnx"), (ONNX_NMS_NONE, "none")):
        export_onnx(ctx.path(ckpt), ctx.path(rel), ExportConfig(batch=batch, nms=nms))
        _artifact(ctx, "export-onnx", rel, "fp32", ORT_RUNTIME, NMS_NONE_NOTE if nms == "none" else "")
        commands.append(command("export-onnx", ctx.arg(ckpt), ctx.arg(rel), "--batch", *batch, "--nms", nms))
    sizes = ", ".join(f"{rel} {ctx.path(rel).stat().st_size / 2**20:.1f} MiB" for rel in (ONNX_FP32, ONNX_NMS_NONE))
    return StageDone(f"{sizes}, batch {'..'.join(map(str, batch[::2]))}", commands, [ONNX_FP32, ONNX_NMS_NONE])


# -- 5. FP16 ---------------------------------------------------------------------------------------


def fp16_stage(ctx: DemoContext) -> StageDone:
    """The FP16 ONNX files, as ``build-engine --fp16`` bakes them (body FP16; I/O, decode and NMS FP32)."""
    from retina_deploy.calib.fp16 import write_fp16_onnx

    commands, notes = [], []
    for rel, src in FP16_FILES:
        _, fp16 = write_fp16_onnx(ctx.path(src), ctx.path(rel))
        note = NMS_NONE_NOTE if src == ONNX_NMS_NONE else ""
        _artifact(ctx, "fp16", rel, "fp16", ORT_RUNTIME, note)
        commands.append(command("build-engine", ctx.arg(src), ctx.arg(rel), "--fp16"))
        notes.append(f"{rel} ({fp16.fp16_nodes} FP16 nodes, {fp16.fp32_nodes} FP32)")
    return StageDone(", ".join(notes), commands, [rel for rel, _ in FP16_FILES])


# -- 6. INT8 ---------------------------------------------------------------------------------------


class _AxisWarningFilter(logging.Filter):
    """onnxruntime.quantization warns once per 1-D constant (GroupNorm's scales) that per-channel axis 1 does not
    apply to it, hundreds of lines, and quantizes it per tensor as it should: noise in the demo's output."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "is out-of-range for weight" not in record.getMessage()


@contextlib.contextmanager
def _without_axis_warnings() -> Iterator[None]:
    root, drop = logging.getLogger(), _AxisWarningFilter()
    root.addFilter(drop)
    try:
        yield
    finally:
        root.removeFilter(drop)


def int8_stage(ctx: DemoContext) -> StageDone:
    """INT8 ONNX files calibrated on training images: TensorRT's Q/DQ form, and ONNX Runtime's fast CPU form."""
    from retina_deploy.calib.int8 import CalibConfig
    from retina_deploy.calib.quantize import Int8Config, quantize_int8

    r, commands, outputs, images = ctx.recipe, [], [], "data/train/images"
    for rel, src, form in INT8_FILES:
        cfg = Int8Config(calib_images=ctx.path(images), calib=CalibConfig(num=r.calib_num, seed=r.seed), form=form)
        with _without_axis_warnings():
            result = quantize_int8(ctx.path(src), ctx.path(rel), cfg)
        notes = [NMS_NONE_NOTE] if src == ONNX_NMS_NONE else []
        notes.append(f"{form} form, calibrated on {result.images} training images")
        _artifact(ctx, "int8", rel, "int8", ORT_RUNTIME, "; ".join(notes))
        form_args = ["--int8-form", form] if form != "tensorrt" else []
        commands.append(
            command(
                "build-engine",
                ctx.arg(src),
                ctx.arg(rel),
                "--int8",
                *form_args,
                "--calib-images",
                ctx.arg(images),
                "--calib-num",
                r.calib_num,
                "--calib-seed",
                r.seed,
            )
        )
        outputs += [rel, rel + ".calib.json"]
    names = ", ".join(rel for rel, *_ in INT8_FILES)
    return StageDone(f"{names} (calibrated on {result.images} training images)", commands, outputs)


# -- 7. engines ------------------------------------------------------------------------------------


def installed_tensorrt() -> dict[str, Any]:
    """{"tensorrt": "<flavour> <version>"} of the TensorRT the engines stage would use, or None."""
    from retina_deploy.export.engine.flavours import resolve_flavour
    from retina_deploy.runtime.backends.tensorrt import TensorRTUnavailableError

    try:
        flavour = resolve_flavour("auto")
    except TensorRTUnavailableError:
        return {"tensorrt": None}
    return {"tensorrt": f"{flavour.name} {flavour.version}"}


def _runtime_name(flavour_name: str, version: str) -> str:
    return f"{'TensorRT-RTX' if flavour_name == 'tensorrt-rtx' else 'TensorRT'} {version}"


def engines_stage(ctx: DemoContext) -> StageDone:
    """FP32, FP16 and INT8 engines from the ``--nms none`` files (TensorRT-RTX builds no NonMaxSuppression)."""
    from retina_deploy.export.engine.builder import EngineBuildConfig, build_engine

    installed = installed_tensorrt()["tensorrt"]
    if installed is None:
        return StageDone("skipped: no TensorRT or TensorRT-RTX installed", [], [])
    name, version = installed.split(" ", 1)
    commands, outputs = [], []
    for rel, src, precision in ENGINES:
        result = build_engine(ctx.path(src), ctx.path(rel), EngineBuildConfig(flavour=name))
        if result.precision != precision:
            raise RuntimeError(f"{rel}: built {result.precision}, expected {precision}")
        _artifact(ctx, "engines", rel, precision, _runtime_name(name, version), ENGINE_NOTE)
        commands.append(command("build-engine", ctx.arg(src), ctx.arg(rel), "--flavor", name))
        outputs += [rel, rel + ".json"]
    return StageDone(f"{len(ENGINES)} engines with {_runtime_name(name, version)} (FP32, FP16, INT8); "
                     "running them needs an NVIDIA GPU", commands, outputs)  # fmt: skip


# -- 8. eval ---------------------------------------------------------------------------------------


def runnable(ctx: DemoContext) -> list[dict[str, Any]]:
    """The artifacts that run on this machine's CPU: the checkpoint and the ONNX files."""
    return [a for a in ctx.summary["artifacts"] if a["runtime"] in (CHECKPOINT_RUNTIME, ORT_RUNTIME)]


def eval_stage(ctx: DemoContext) -> StageDone:
    """COCO AP of every ONNX file (the checkpoint's is stage 3's)."""
    val, scores, commands = _val(ctx), [], []
    for entry in runnable(ctx):
        if entry["runtime"] != ORT_RUNTIME:
            continue
        metrics = _evaluate(ctx, entry["path"], val)
        scores.append(f"{entry['path']} {metrics['AP']:.3f}")
        commands.append(_eval_command(ctx, entry["path"]))
    return StageDone("AP " + ", ".join(scores), commands, [])


# -- 9. bench --------------------------------------------------------------------------------------


def bench_stage(ctx: DemoContext) -> StageDone:
    from retina_deploy.core.fileio import write_json_atomic
    from retina_deploy.inference.bench import BenchConfig, run_bench
    from retina_deploy.runtime.backends.openvino import OpenVinoBackend, openvino_installed
    from retina_deploy.runtime.bench.report import validate_report, write_plot
    from retina_deploy.runtime.bench.run import RunLength

    r, entries = ctx.recipe, runnable(ctx)
    # OpenVINO's rows beside ONNX Runtime's where it is installed; the artifacts table keeps ONNX Runtime's
    backends = ("auto", "ort-cpu", "openvino") if openvino_installed() else ("auto",)
    args = ["bench", *(ctx.arg(a["path"]) for a in entries), "--batch", *r.bench_batches,
            *(["--backend", *backends] if len(backends) > 1 else []),
            "--warmup-s", r.bench_warmup_s, "--duration-s", r.bench_duration_s,
            "--images", ctx.arg("data/val/images"), "--num-images", BENCH_IMAGES,
            "--json", ctx.arg("bench.json"), "--plot", ctx.arg("bench.png")]  # fmt: skip
    cfg = BenchConfig(
        batches=r.bench_batches,
        length=RunLength(warmup_s=r.bench_warmup_s, duration_s=r.bench_duration_s),
        images=ctx.path("data/val/images"),
        num_images=BENCH_IMAGES,
        backends=backends,
        command=command(*args),
    )
    report = run_bench([ctx.path(a["path"]) for a in entries], cfg, log=lambda _: None)  # one line per stage
    validate_report(report)
    write_json_atomic(ctx.path("bench.json"), report)
    write_plot(report, ctx.path("bench.png"))
    by_label: dict[tuple[str, int], float] = {}
    for rec in report["results"]:
        if rec["backend"] != OpenVinoBackend.name or (rec["model"], rec["batch"]) not in by_label:
            by_label[(rec["model"], rec["batch"])] = rec["latency_ms"]["mean"]
    for entry in entries:
        entry["latency_ms"] = {str(b): by_label.get((entry["path"], b)) for b in r.bench_batches}
    ctx.summary["bench"] = {"json": "bench.json", "plot": "bench.png"}
    first = str(r.bench_batches[0])
    fastest = min(entries, key=lambda a: a["latency_ms"][first] or float("inf"))
    result = (f"{len(entries)} models x batch {', '.join(map(str, r.bench_batches))}; fastest at batch {first}: "
              f"{fastest['path']} {fastest['latency_ms'][first]:.1f} ms")  # fmt: skip
    return StageDone(result, [command(*args)], ["bench.json", "bench.png"])


# -- 10. predict -----------------------------------------------------------------------------------


def predict_stage(ctx: DemoContext) -> StageDone:
    """Draws at model.onnx's score threshold with the best F1 on the val set (eval stage): the loss settings
    shift the scores, and a fixed 0.3 drew three boxes per object for the demo's model."""
    from retina_deploy.inference.open import open_model
    from retina_deploy.inference.predict import DEFAULT_DRAW_THRESH, predict_files

    images = sorted(ctx.path("data/val/images").iterdir())[: ctx.recipe.predict_images]
    entry = next(a for a in ctx.summary["artifacts"] if a["path"] == ONNX_FP32)
    thresh = (entry.get("best_f1") or {}).get("score_thresh", DEFAULT_DRAW_THRESH)
    with open_model(ctx.path(ONNX_FP32)) as detector:
        records, _ = predict_files(detector, images, ctx.path("predictions"), draw_score_thresh=thresh)
    ctx.summary["predictions"] = {"folder": "predictions", "model": ONNX_FP32, "json": "predictions/detections.json",
                                  "draw_thresh": thresh}  # fmt: skip
    drawn = sum(d["score"] >= thresh for r in records for d in r.get("detections", []))
    cmd = command("predict", ctx.arg(ONNX_FP32), *images, "--out", ctx.arg("predictions"), "--draw-thresh", thresh)
    return StageDone(f"{len(records)} annotated images, {drawn} boxes at score >= {thresh} in predictions/", [cmd],
                     ["predictions"])  # fmt: skip


# -- 11. report ------------------------------------------------------------------------------------


def report_stage(ctx: DemoContext) -> StageDone:
    from retina_deploy.demo.report import write_report

    write_report(ctx.out)
    return StageDone("report.html, report.md", [], ["report.html", "report.md"])

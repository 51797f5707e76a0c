"""`retina-deploy demo` at toy size: every stage runs and reports, a rerun skips what is done, a changed
setting redoes from the right stage, every recorded command is a real CLI command, bad settings change nothing."""

import json
import shlex
import time

import pytest

from retina_deploy.cli.main import build_parser, main
from retina_deploy.core.errors import ConfigError
from retina_deploy.demo.pipeline import MARKER, run_demo
from retina_deploy.demo.recipe import DEMO_RECIPE

TINY = dict(
    num_train=8, num_val=4, size=128, train_images=8, calib_num=8, bench_warmup_s=0.05, bench_duration_s=0.1,
    predict_images=3,
)  # fmt: skip
STAGE_NAMES = ["make-shapes", "train", "eval checkpoint", "export-onnx", "fp16", "int8", "engines", "eval", "bench",
               "predict", "report"]  # fmt: skip
RUNNABLE = ["run/best", "model.onnx", "model.nms-none.onnx", "model.fp16.onnx", "model.nms-none.fp16.onnx",
            "model.int8.onnx", "model.int8-cpu.onnx", "model.nms-none.int8.onnx"]  # fmt: skip
ENGINES = ["model.engine", "model.fp16.engine", "model.int8.engine"]


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """The toy demo, run once: (folder, summary, progress lines)."""
    out, lines = tmp_path_factory.mktemp("demo") / "demo-out", []
    summary = run_demo(out, log=lines.append, **TINY)
    return out, summary, lines


@pytest.mark.slow
def test_demo_runs_every_stage(demo):
    out, summary, lines = demo
    assert json.loads((out / "summary.json").read_text()) == json.loads(json.dumps(summary))
    assert [s["name"] for s in summary["stages"]] == STAGE_NAMES
    assert [line.split(":")[0] for line in lines] == [f"[{i}/11] {n}" for i, n in enumerate(STAGE_NAMES, 1)]
    assert summary["format"] == "retina-deploy/demo" and summary["format_version"] == 1
    assert summary["settings"] == {**DEMO_RECIPE.to_dict(), **json.loads(json.dumps(TINY))}
    assert summary["training"] == {"run": "run", "metrics_csv": "run/metrics.csv", "images_seen": 8, "batch_size": 4}
    assert summary["val"] == {"images": "data/val/images", "annotations": "data/val/annotations.json"}
    assert summary["bench"] == {"json": "bench.json", "plot": "bench.png"}
    assert summary["predictions"]["model"] == "model.onnx"
    assert summary["total_seconds"] > 0 and "cpu" in summary["environment"]
    artifacts = {a["path"]: a for a in summary["artifacts"]}
    tensorrt = next(s for s in summary["stages"] if s["name"] == "engines")["settings"]["tensorrt"]
    assert list(artifacts) == RUNNABLE + (ENGINES if tensorrt else [])
    for path in RUNNABLE:
        a = artifacts[path]
        assert all(isinstance(a[k], float) for k in ("AP", "AP50", "AP75")), a
        assert set(a["latency_ms"]) == {"1", "4"} and all(v > 0 for v in a["latency_ms"].values()), a
        assert (out / path).exists() and a["size_bytes"] > 0
    for path in ENGINES if tensorrt else []:
        a = artifacts[path]
        assert a["runtime"].startswith("TensorRT") and a["AP"] is None and a["latency_ms"] is None and a["note"]
        assert (out / path).is_file() and (out / f"{path}.json").is_file()
    # the checkpoint and its ONNX export are scored by the same code: same model, same numbers
    assert artifacts["model.onnx"]["AP"] == pytest.approx(artifacts["run/best"]["AP"], abs=1e-3)
    assert len(list((out / "predictions").glob("*.png"))) == 3
    for name in ("bench.json", "bench.png", "report.html", "report.md", MARKER):
        assert (out / name).is_file(), name


@pytest.mark.slow
def test_bench_has_openvino_rows_where_it_is_installed(demo):
    from retina_deploy.runtime.backends.openvino import openvino_installed

    out, summary, _ = demo
    expected = {"onnxruntime-cpu", "openvino-cpu"} if openvino_installed() else {"onnxruntime-cpu"}
    rows = json.loads((out / "bench.json").read_text())["results"]
    for path in (a["path"] for a in summary["artifacts"] if a["path"].endswith(".onnx")):
        assert {r["backend"] for r in rows if r["model"] == path} == expected, path
    assert all(b in (out / "report.md").read_text() for b in expected)


@pytest.mark.slow
def test_every_recorded_command_parses_with_the_cli(demo):
    parser = build_parser()
    commands = [c for s in demo[1]["stages"] for c in s["commands"]]
    assert len(commands) >= 20
    for cmd in commands:
        argv = shlex.split(cmd)
        assert argv[0] == "retina-deploy"
        args = parser.parse_args(argv[1:])  # an unknown flag or a bad value exits here
        assert callable(args.func), cmd


@pytest.mark.slow
def test_recorded_fp16_command_reproduces_the_file(demo, tmp_path):
    out, summary, _ = demo
    fp16 = next(s for s in summary["stages"] if s["name"] == "fp16")["commands"][0]
    argv = shlex.split(fp16)[1:]
    assert argv == ["build-engine", str(out / "model.onnx"), str(out / "model.fp16.onnx"), "--fp16"]
    argv[2] = str(tmp_path / "again.fp16.onnx")
    assert main(argv) == 0
    assert (tmp_path / "again.fp16.onnx").read_bytes() == (out / "model.fp16.onnx").read_bytes()


@pytest.mark.slow
def test_predictions_are_drawn_at_the_best_f1_threshold_that_eval_prints(demo, tmp_path, capsys):
    out, summary, _ = demo
    onnx = next(a for a in summary["artifacts"] if a["path"] == "model.onnx")
    thresh = (onnx["best_f1"] or {}).get("score_thresh", 0.3)  # a toy model may find nothing: the default then
    assert summary["predictions"]["draw_thresh"] == thresh
    predict = next(s for s in summary["stages"] if s["name"] == "predict")["commands"][0]
    assert shlex.split(predict)[-2:] == ["--draw-thresh", str(thresh)]
    data = out / "data/val"
    argv = ["eval", str(out / "model.onnx"), "--images", str(data / "images"), "--annotations",
            str(data / "annotations.json"), "--json", str(tmp_path / "eval.json")]  # fmt: skip
    assert main(argv) == 0
    assert capsys.readouterr().out.splitlines()[-1].startswith("best F1")
    written = json.loads((tmp_path / "eval.json").read_text())
    assert written["best_f1"] == onnx["best_f1"] and written["metrics"]["AP"] == onnx["AP"]


@pytest.mark.slow
def test_rerun_skips_done_stages_and_redoes_changed_ones(demo):
    out, first, _ = demo
    lines = []
    start = time.perf_counter()
    again = run_demo(out, log=lines.append, **TINY)
    assert time.perf_counter() - start < 30
    assert lines == [f"[{i}/11] {n}: done earlier, skipped" for i, n in enumerate(STAGE_NAMES, 1)]
    assert again["stages"] == first["stages"] and again["artifacts"] == first["artifacts"]

    lines.clear()  # a setting only the predict stage reads: predict and report run again
    changed = run_demo(out, log=lines.append, **{**TINY, "predict_images": 2})
    assert [line.endswith("skipped") for line in lines] == [True] * 9 + [False] * 2
    assert len(list((out / "predictions").glob("*.png"))) == 2
    assert changed["settings"]["predict_images"] == 2
    assert changed["stages"][:9] == first["stages"][:9]

    lines.clear()  # an interrupted demo (its last outputs gone) continues where it stopped
    (out / "report.html").unlink()
    run_demo(out, log=lines.append, **{**TINY, "predict_images": 2})
    assert [line.endswith("skipped") for line in lines] == [True] * 10 + [False]
    assert (out / "report.html").is_file()


def test_demo_refuses_a_foreign_folder(tmp_path, capsys):
    (tmp_path / "precious.txt").write_text("keep me")
    with pytest.raises(ConfigError, match="was not written by `demo`"):
        run_demo(tmp_path, **TINY)
    assert main(["demo", "--out", str(tmp_path)]) == 1
    assert (tmp_path / "precious.txt").read_text() == "keep me"
    assert "was not written by `demo`" in capsys.readouterr().err


@pytest.mark.parametrize(
    "change, message",
    [
        ({"train_images": 0}, "--train-images"),
        ({"train_images": -5}, "--train-images"),
        ({"train_images": 2}, "--train-images must be >= the batch size"),
        ({"num_train": 0}, "--num-train"),
        ({"num_val": -1}, "--num-val"),
        ({"size": float("nan")}, "--size"),
        ({"size": 100}, "100"),
        ({"seed": -1}, "--seed"),
        ({"lr": float("nan")}, "--lr"),
        ({"cls_loss_weight": 0.0}, "--cls-loss-weight"),
        ({"cls_loss_weight": float("inf")}, "--cls-loss-weight"),
        ({"focal_loss_gamma_fg": -1.0}, "focal_loss_gamma_fg"),
        ({"focal_loss_alpha": 1.5}, "focal_loss_alpha"),
        ({"bench_duration_s": 0.0}, "--bench-duration-s"),
        ({"backbone": "vgg16"}, "vgg16"),
        ({"optimizer": "adam"}, "adam"),
        ({"export_batch": (4, 1, 8)}, "OPT"),
        ({"bench_batches": (1, 16)}, "bench batch 16"),
        ({"epochs": 3}, "unknown demo setting 'epochs'"),
    ],
)
def test_bad_settings_are_refused_before_anything_is_written(tmp_path, change, message):
    with pytest.raises(ConfigError, match=message):
        run_demo(tmp_path / "d", **{**TINY, **change})
    assert not (tmp_path / "d").exists()


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--train-images", "0"], "--train-images"),
        (["--num-train", "-3"], "--num-train"),
        (["--size", "7"], "7"),
        (["--backbone", "vgg16"], "vgg16"),
    ],
)
def test_cli_bad_settings_are_one_line_errors(tmp_path, capsys, argv, message):
    assert main(["demo", "--out", str(tmp_path / "d"), *argv]) == 1
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "d").exists()


def test_cli_has_no_minutes_and_shows_the_recipe_defaults(capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["demo", "--minutes", "4"])
    with pytest.raises(SystemExit):
        main(["demo", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for flag, value in (("--size", DEMO_RECIPE.size), ("--train-images", DEMO_RECIPE.train_images),
                        ("--num-train", DEMO_RECIPE.num_train), ("--num-val", DEMO_RECIPE.num_val),
                        ("--backbone", DEMO_RECIPE.backbone), ("--out", "demo-out")):  # fmt: skip
        assert flag in text and f"(default: {value})" in text, flag
    assert "--restart" in text


def test_cli_passes_only_the_given_settings(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr("retina_deploy.demo.pipeline.run_demo", lambda out, **kw: calls.append((out, kw)))
    assert main(["demo", "--out", str(tmp_path / "d"), "--size", "128", "--train-images", "40", "--restart"]) == 0
    ((out, kwargs),) = calls
    assert out == tmp_path / "d" and kwargs["restart"] is True
    assert {k: v for k, v in kwargs.items() if k not in ("restart", "progress")} == {"size": 128, "train_images": 40}


def test_engines_stage_without_tensorrt_is_skipped(tmp_path, monkeypatch):
    from retina_deploy.demo.stages import DemoContext, engines_stage, installed_tensorrt
    from retina_deploy.runtime.backends.tensorrt import TensorRTUnavailableError

    def absent(name="auto"):
        raise TensorRTUnavailableError("no TensorRT is installed")

    monkeypatch.setattr("retina_deploy.export.engine.flavours.resolve_flavour", absent)
    ctx = DemoContext(tmp_path, DEMO_RECIPE, {"artifacts": []})
    done = engines_stage(ctx)
    assert done.result == "skipped: no TensorRT or TensorRT-RTX installed"
    assert done.commands == [] and done.outputs == [] and ctx.summary["artifacts"] == []
    assert installed_tensorrt() == {"tensorrt": None}  # recorded: installing one later redoes this stage


def test_an_unreadable_summary_means_nothing_is_done(tmp_path):
    from retina_deploy.demo.pipeline import _prepare_out

    out = tmp_path / "d"
    _prepare_out(out)
    for text in ("{not json", '{"format": "retina-deploy/demo", "format_version": 1, "stages": [1], "artifacts": []}',
                 '{"format": "other", "format_version": 1, "stages": [], "artifacts": []}'):  # fmt: skip
        (out / "summary.json").write_text(text)
        assert _prepare_out(out, keep=True) is None
        assert (out / "summary.json").is_file()  # kept: the stages replace what they redo


def test_first_stage_to_run_and_what_is_forgotten(tmp_path):
    from retina_deploy.demo.pipeline import Stage, StageDone, _first_to_run, _forget_from

    def body(ctx):
        return StageDone("", [], [])

    stages = [Stage("a", body, ("size",), ("a.txt",)), Stage("b", body, ("seed",), ("b.txt",)), Stage("c", body)]
    for name in ("a.txt", "b.txt"):
        (tmp_path / name).write_text("x")
    records = [{"name": s.name, "status": "done", "settings": s.settings(DEMO_RECIPE), "outputs": list(s.outputs)}
               for s in stages]  # fmt: skip
    previous = {"stages": records, "artifacts": [{"path": "a.txt", "stage": "a"}, {"path": "b.txt", "stage": "b"}]}
    assert _first_to_run(stages, previous, DEMO_RECIPE, tmp_path) == 3
    assert _first_to_run(stages, previous, DEMO_RECIPE.__class__(seed=1), tmp_path) == 1  # b reads the seed
    assert _first_to_run(stages, {"stages": records[:2]}, DEMO_RECIPE, tmp_path) == 2  # interrupted before c
    (tmp_path / "b.txt").unlink()
    assert _first_to_run(stages, previous, DEMO_RECIPE, tmp_path) == 1  # an output is gone
    (tmp_path / "b.txt").write_text("x")
    _forget_from(stages, 1, previous, tmp_path)
    assert (tmp_path / "a.txt").exists() and not (tmp_path / "b.txt").exists()
    assert [s["name"] for s in previous["stages"]] == ["a"] and previous["artifacts"] == [
        {"path": "a.txt", "stage": "a"}
    ]

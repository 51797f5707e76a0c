"""``retina-deploy bench``: the report's schema, the table and plot, FLOPs agreement, and bad input.

One tiny model (ResNet-18, 64-channel FPN, 128 px, batch 1..2) as a checkpoint and its ONNX export;
every run is 1-2 iterations without warm-up time, so the whole module takes seconds.
"""

import copy
import json

import pytest
import torch

from retina_deploy.cli.main import main
from retina_deploy.export.onnx_export import ExportConfig, export_onnx
from retina_deploy.inference.bench import BenchConfig, run_bench
from retina_deploy.model import build_model
from retina_deploy.model.checkpoint import save_checkpoint
from retina_deploy.model.config import ModelConfig
from retina_deploy.runtime.bench.report import format_table, validate_report, write_plot
from retina_deploy.runtime.bench.run import RunLength
from retina_deploy.runtime.image.preprocess import PreprocessConfig

QUICK = RunLength(warmup_s=0.0, duration_s=None, iterations=2)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("bench")
    torch.manual_seed(0)
    model = build_model(ModelConfig(backbone="resnet18", num_classes=2, fpn_channels=64, detections_per_img=20))
    ckpt = save_checkpoint(model, tmp / "ckpt", class_names=["a", "b"], preprocess=PreprocessConfig(size=(128, 128)))
    onnx_path = export_onnx(ckpt, tmp / "model.onnx", ExportConfig(batch=(1, 1, 2), simplify=False))
    return ckpt, onnx_path


@pytest.fixture(scope="module")
def report(models):
    cfg = BenchConfig(batches=(1, 2), length=QUICK, threads=1, num_images=3, peak_probe=False, peak_tflops=0.1)
    return run_bench(models, cfg, log=lambda m: None)


def test_report_schema_and_rows(report):
    validate_report(report)
    json.loads(json.dumps(report))  # plain JSON types only
    rows = [(r["kind"], r["backend"], r["batch"]) for r in report["results"]]
    assert rows == [
        ("checkpoint", "torch-eager", 1),
        ("checkpoint", "torch-eager", 2),
        ("onnx", "onnxruntime-cpu", 1),
        ("onnx", "onnxruntime-cpu", 2),
    ]
    for r in report["results"]:
        lat = r["latency_ms"]
        assert r["iterations"] == 2 and lat["n"] == 2
        assert lat["min"] <= lat["median"] <= lat["p90"] <= lat["p99"] <= lat["max"]
        assert r["images_per_s"] == pytest.approx(r["batch"] / (lat["mean"] / 1e3))
        assert r["phases_ms"]["preprocess"] > 0 and r["phases_ms"]["compute"] > 0
        assert r["phases_ms"]["h2d"] is None  # CPU: no copies to separate
        assert r["fraction_of_peak"] == pytest.approx(r["achieved_tflops"] / 0.1)
        assert r["memory"]["host_peak_rss_mib"] > 0
    assert report["settings"]["images"].startswith("3 synthetic")
    assert report["environment"]["cpu"]["logical_cpus"] >= 1


def test_flops_torch_counter_and_onnx_graph_agree(report):
    torch_flops = report["results"][0]["flops_per_image"]
    onnx_flops = report["results"][2]["flops_per_image"]
    assert torch_flops > 1e8 and onnx_flops > 1e8
    assert onnx_flops == pytest.approx(torch_flops, rel=0.02)


def test_validate_report_names_the_bad_key(report):
    broken = copy.deepcopy(report)
    del broken["results"][1]["latency_ms"]["p99"]
    with pytest.raises(ValueError, match=r"results\[1\]\.latency_ms"):
        validate_report(broken)
    broken = copy.deepcopy(report)
    broken["results"][0]["batch"] = "1"
    with pytest.raises(ValueError, match=r"results\[0\]\.batch"):
        validate_report(broken)


def test_table_and_plot(report, tmp_path):
    table = format_table(report)
    assert "ckpt [torch-eager, fp32]" in table and "model.onnx [onnxruntime-cpu, fp32]" in table
    assert "p99" in table and "of peak" in table and "CPU:" in table
    png = write_plot(report, tmp_path / "plot.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000


def test_cli_writes_json_and_plot(models, tmp_path, capsys):
    _, onnx_path = models
    out, plot = tmp_path / "b.json", tmp_path / "b.png"
    argv = ["bench", str(onnx_path), "--iterations", "1", "--warmup-s", "0", "--threads", "1", "--num-images", "2"]
    assert main([*argv, "--no-peak-probe", "--json", str(out), "--plot", str(plot)]) == 0
    validate_report(json.loads(out.read_text()))
    assert plot.is_file()
    assert "model.onnx [onnxruntime-cpu, fp32]" in capsys.readouterr().out


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--batch", "3"], "batch 3 is outside the model's range 1..2"),
        (["--batch", "0"], "batch sizes must be integers >= 1"),
        (["--device", "cuda:99"], "device cuda:99 is absent"),
        (["--device", "tpu"], "device must be cpu, cuda or cuda:N"),
        (["--duration-s", "0"], "duration must be a finite number of seconds > 0"),
        (["--duration-s", "nan"], "duration must be a finite number"),
        (["--warmup-s", "-1"], "warm-up must be"),
        (["--iterations", "0"], "iterations must be an integer >= 1"),
        (["--iterations", "2", "--duration-s", "1"], "give one of --duration-s and --iterations"),
        (["--backend", "tensorrt"], "none of the backends ['tensorrt'] runs a onnx"),
        (["--images", "/nonexistent-dir"], "no such images folder"),
    ],
)
def test_bad_input_is_one_line_and_exit_1(models, capsys, extra, message):
    _, onnx_path = models
    assert main(["bench", str(onnx_path), "--warmup-s", "0", *extra]) == 1  # each fails before any timing
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1, err


def test_unknown_file_is_one_line_and_exit_1(tmp_path, capsys):
    assert main(["bench", str(tmp_path / "missing.onnx")]) == 1
    err = capsys.readouterr().err
    assert "no such model file" in err and len(err.strip().splitlines()) == 1
    foreign = tmp_path / "notes.txt"
    foreign.write_text("hello")
    assert main(["bench", str(foreign)]) == 1
    assert "not a model" in capsys.readouterr().err


def test_help_shows_defaults(capsys):
    with pytest.raises(SystemExit):
        main(["bench", "--help"])
    out = capsys.readouterr().out
    assert "(default: 10.0)" in out and "(default: [1])" in out and "--peak-tflops" in out


def test_labels_are_short_unless_ambiguous():
    from pathlib import Path

    from retina_deploy.inference.bench import _labels

    labels = _labels([Path("r101/model.onnx"), Path("r18/model.onnx"), Path("r18/model.int8.onnx"), Path("run/best")])
    assert list(labels.values()) == ["r101/model.onnx", "r18/model.onnx", "model.int8.onnx", "run/best"]

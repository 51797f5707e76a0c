"""The GPU check on a machine without a GPU: every part skipped with its reason, exit 0; the CPU dry run
executes the training and inference parts for real; the report's status rules; parity and peak lookups."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import time

import numpy as np
import pytest

from retina_deploy.gpucheck.check import PARTS, select_parts
from retina_deploy.gpucheck.parity import match_detections
from retina_deploy.gpucheck.report import (
    Clock,
    Disagree,
    OutOfTime,
    Skip,
    exit_status,
    format_table,
    run_part,
    run_step,
)
from retina_deploy.runtime.bench.peak import fraction_of_peak, peak_tflops
from retina_deploy.runtime.post.detections import Detections


def run_check(cwd, *args: str, timeout: float = 300) -> tuple[subprocess.CompletedProcess, float]:
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}  # no GPU, even on a machine that has one
    start = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "retina_deploy.gpucheck", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    return done, time.perf_counter() - start


def test_without_gpu_every_part_is_skipped_with_its_reason(tmp_path):
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    done, seconds = run_check(cwd, "--out", "out")
    assert done.returncode == 0, done.stderr
    report = json.loads((cwd / "out" / "gpu-check.json").read_text())
    assert report["exit_status"] == 0 and report["mode"] == "full"
    assert list(report["parts"]) == list(PARTS)
    for name, part in report["parts"].items():
        assert part["status"] == "skipped", (name, part)
        assert part["reason"], name
    assert "no CUDA GPU" in report["parts"]["train.throughput"]["reason"]
    assert report["parts"]["env"]["figures"]["packages"]["torch"]  # versions are recorded anyway
    assert "env" in done.stdout and "skipped" in done.stdout  # the table
    assert sorted(p.name for p in cwd.iterdir()) == ["out"]  # nothing written outside the output folder
    assert report["seconds"] < 20 and seconds < 60  # the check itself; the interpreter's start varies with load


def test_cpu_dry_run_executes_training_inference_and_engine_build(tmp_path):
    parts = "train,infer.eager,trt.engines"
    done, _ = run_check(tmp_path, "--cpu-dry-run", "--parts", parts, "--out", str(tmp_path / "o"))
    assert done.returncode == 0, done.stdout + done.stderr
    parts = json.loads((tmp_path / "o" / "gpu-check.json").read_text())["parts"]
    statuses = {name: p["status"] for name, p in parts.items()}
    engines = "ok" if importlib.util.find_spec("tensorrt_rtx") else "skipped"  # TensorRT-RTX builds without a GPU
    assert statuses == {"train.throughput": "ok", "train.ddp": "ok", "train.resume": "ok", "train.detector": "skipped",
                        "infer.eager": "ok", "trt.engines": engines}, parts  # fmt: skip
    assert "dry run" in parts["train.detector"]["reason"]
    rows = parts["train.throughput"]["figures"]
    fp16 = rows["resnet18/64x64/b1/fp16"]
    assert fp16["images_per_s"] > 0 and fp16["loss_scale"] > 0  # the GradScaler path ran
    assert parts["train.ddp"]["figures"]["ddp_step"]["backend"] == "gloo"
    resume = parts["train.resume"]["figures"]["resume"]
    assert resume["max_weight_diff"] == 0.0 and resume["same_losses"]
    eager = parts["infer.eager"]["figures"]
    assert eager["eager/fp32/b1"]["median_ms"] > 0 and eager["model"]["gflops_per_image"] > 0
    if engines == "ok":
        rows = parts["trt.engines"]["figures"]
        assert rows["tensorrt-rtx/fp32/build"]["precision_check"]["network"]["counts"]["conv"] > 0
        assert rows["tensorrt-rtx/fp32/detector"] == {
            "status": "skipped",
            "reason": "no GPU to run an engine on (builds only)",
        }
        assert (tmp_path / "o" / "engines" / "tensorrt-rtx-fp32.engine.json").is_file()  # the manifest


def test_bad_arguments_exit_2(tmp_path):
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "file.txt").write_text("not ours")
    done, _ = run_check(tmp_path, "--out", "busy", "--parts", "env")
    assert done.returncode == 2 and "was not written by `gpucheck`" in done.stderr
    done, _ = run_check(tmp_path, "--parts", "nope")
    assert done.returncode == 2 and "unknown part 'nope'" in done.stderr


def _raise(exc: Exception):
    raise exc


def test_part_status_from_exceptions_and_steps():
    clock = Clock.starting_now(60)

    def steps(ctx, rec, clock):
        run_step(rec, "a", lambda: {"x": 1})
        run_step(rec, "b", lambda: _raise(Skip("missing package: foo")))

    def disagree(ctx, rec, clock):
        run_step(rec, "a", lambda: {"x": 1})
        run_step(rec, "b", lambda: _raise(Disagree("boxes differ")))

    def crash(ctx, rec, clock):
        raise KeyError("oops")

    ok, failed, error = (run_part(n, f, None, clock) for n, f in (("s", steps), ("d", disagree), ("c", crash)))
    assert ok.status == "ok" and ok.figures["b"]["status"] == "skipped"  # some steps ran: the part is ok
    assert ok.figures["b"]["reason"] == "missing package: foo" and ok.figures["a"]["x"] == 1
    assert failed.status == "failed" and failed.reason == "b: boxes differ"
    assert error.status == "error" and "KeyError" in error.reason and error.details
    assert exit_status([ok]) == 0 and exit_status([ok, failed]) == 1 and exit_status([error]) == 1
    assert "boxes differ" in format_table([ok, failed, error])


def test_clock_and_out_of_time_end_a_part():
    clock = Clock.starting_now(5)
    assert 4 < clock.left() <= 5 and clock.sub(1).left() <= 1
    with pytest.raises(OutOfTime, match="needs ~10 s"):
        clock.require(10, "a build")

    def slow(ctx, rec, clock):
        run_step(rec, "first", lambda: {"x": 1})
        clock.require(100, "the second step")

    rec = run_part("p", slow, None, clock)
    assert rec.status == "skipped" and rec.reason.startswith("out of time") and rec.figures["first"]["x"] == 1


def test_select_parts_by_name_or_prefix():
    assert select_parts(None) == tuple(PARTS)
    assert select_parts("train") == ("train.throughput", "train.ddp", "train.resume", "train.detector")
    assert select_parts("infer.compile,env") == ("env", "infer.compile")  # running order, not the given one
    with pytest.raises(ValueError, match="unknown part"):
        select_parts("tra")


def _dets(boxes, scores, classes) -> Detections:
    classes = np.asarray(classes, np.int64)
    names = tuple(f"c{c}" for c in classes)
    return Detections(np.asarray(boxes, np.float32).reshape(-1, 4), np.asarray(scores, np.float32), classes, names)


def test_match_detections_by_class_and_iou():
    ref = [
        _dets([[0, 0, 10, 10], [20, 20, 30, 30], [50, 50, 60, 60], [0, 0, 5, 5]], [0.9, 0.8, 0.7, 0.2], [1, 2, 3, 4])
    ]
    # the first box moved by 0.1 px (IoU 0.98), the second has another class, the third is missing; the fourth
    # scores under min_score and is not compared
    got = [_dets([[0.1, 0, 10.1, 10], [20, 20, 30, 30]], [0.89, 0.8], [1, 5])]
    m = match_detections(ref, got, min_score=0.5)
    assert (m["matched"], m["compared"], m["matched_fraction"]) == (1, 3, 0.3333)
    assert m["max_score_diff"] == pytest.approx(0.01, abs=1e-6)
    assert (
        match_detections([_dets(np.zeros((0, 4)), [], [])], [_dets(np.zeros((0, 4)), [], [])])["matched_fraction"] == 1
    )


def test_peak_table_and_fraction():
    assert peak_tflops("NVIDIA H200", "fp16") == 989.4
    assert peak_tflops("NVIDIA H100 PCIe", "tf32") == 378.0
    assert peak_tflops("NVIDIA A100-SXM4-80GB", "fp32") == 19.5
    assert peak_tflops("NVIDIA L40", "fp16") is None  # "l4" is a whole word only
    assert peak_tflops("Orin", "int8", sm_count=16) == 85.0 and peak_tflops("Orin", "int8", sm_count=14) == 54.0
    # 668 GFLOPs (ResNet-101 RetinaNet at 800x1344) in 2 ms = 334 TFLOP/s = 33.8% of an H100's FP16 peak
    assert fraction_of_peak(668e9, 2e-3, "NVIDIA H100 80GB HBM3", "fp16") == (334.0, 0.3376)


def test_parts_past_the_deadline_are_skipped_as_out_of_time(tmp_path):
    done, _ = run_check(tmp_path, "--cpu-dry-run", "--parts", "train", "--max-minutes", "0.001", "--out", "o")
    assert done.returncode == 0, done.stderr
    parts = json.loads((tmp_path / "o" / "gpu-check.json").read_text())["parts"]
    reasons = {name: p["reason"] for name, p in parts.items() if p["status"] == "skipped"}
    assert set(reasons) == {"train.throughput", "train.ddp", "train.resume", "train.detector"}
    assert all(r.startswith("out of time") for n, r in reasons.items() if n != "train.detector"), reasons


@pytest.mark.skipif(importlib.util.find_spec("tensorrt_rtx") is None, reason="tensorrt_rtx is not installed")
@pytest.mark.parametrize("capability, runs", [((9, 0), False), ((8, 9), True), ((12, 0), True)])
def test_engines_of_tensorrt_rtx_are_not_run_on_a_gpu_it_does_not_support(monkeypatch, capability, runs):
    # the lent H100 / H200 are compute capability 9.0, which TensorRT-RTX 1.7 does not run on
    import torch

    from retina_deploy.gpucheck import parts_engine

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    monkeypatch.setattr(parts_engine, "importlib_find", lambda name: object())
    why = parts_engine._can_run_engines(None, "tensorrt-rtx")
    assert (why is None) == runs
    if not runs:
        assert "does not run on compute capability 9.0" in why and "engines built, not run" in why
    assert parts_engine._can_run_engines(None, "tensorrt") is None  # regular TensorRT runs on every capability

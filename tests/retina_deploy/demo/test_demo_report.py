"""The demo report from a fake but realistic demo folder: content, escaping, gaps, and a browser screenshot."""

from __future__ import annotations

import csv
import json
import re
import shlex
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from retina_deploy.core.errors import ConfigError
from retina_deploy.data.shapes import make_shapes
from retina_deploy.demo.report import main, write_report
from retina_deploy.demo.sections import wrap_command
from retina_deploy.inference.predict import predict_files
from retina_deploy.runtime.image.image_io import load_image
from retina_deploy.runtime.post.detections import Detections

METRICS_HEADER = ["kind", "epoch", "iteration", "loss_cls", "loss_box", "lr", "images_per_s", "AP", "AP50"]
ODD_NAME = "model<b>&odd</b>.onnx"  # must appear escaped in the HTML
WINDOW = (1280, 4000)


class ShiftedTruth:
    """A detector that "detects" the ground truth shifted by 3 px, with one low-score false positive.

    It recognises each val image by its pixels (the only thing a detector is given).
    """

    def __init__(self, val_dir: Path):
        coco = json.loads((val_dir / "annotations.json").read_text())
        self.names = {c["id"]: c["name"] for c in coco["categories"]}
        self.by_pixels: dict[bytes, list[dict]] = {}
        for im in coco["images"]:
            key = load_image(val_dir / "images" / im["file_name"]).tobytes()
            self.by_pixels[key] = [a for a in coco["annotations"] if a["image_id"] == im["id"]]

    def detect(self, images):
        out = []
        for image in images:
            anns = self.by_pixels[image.tobytes()]
            boxes = [[x + 3, y + 3, x + w + 3, y + h + 3] for x, y, w, h in (a["bbox"] for a in anns)]
            scores = [0.9 - 0.1 * i for i in range(len(anns))] + [0.05]
            ids = [a["category_id"] - 1 for a in anns] + [0]
            names = tuple(self.names[i + 1] for i in ids)
            boxes = np.array(boxes + [[2, 2, 30, 30]], np.float32)
            out.append(Detections(boxes, np.array(scores, np.float32), np.array(ids), names))
        return out


def _stage(name: str, seconds: float, result: str, commands: list[str]) -> dict:
    return {"name": name, "status": "done", "seconds": seconds, "result": result, "commands": commands}


def _artifact(name, precision, runtime, size, ap, ap50, latency, note=""):
    return {
        "name": name,
        "path": name,
        "precision": precision,
        "runtime": runtime,
        "size_bytes": size,
        "AP": ap,
        "AP50": ap50,
        "AP75": None if ap is None else ap * 0.9,
        "latency_ms": latency,
        "note": note,
    }


def _summary() -> dict:
    return {
        "format": "retina-deploy/demo",
        "format_version": 1,
        "settings": {
            "backbone": "resnet18",
            "size": 128,
            "num_train": 16,
            "num_val": 4,
            "train_images": 80,
            "seed": 0,
            "batch_size": 4,
            "something_new": True,
        },
        "environment": {
            "host": "box",
            "os": "Linux 6.1",
            "python": "3.11.2",
            "cpu": {
                "model": "AMD EPYC 7B13",
                "arch": "x86_64",
                "flags": ["avx2", "fma"],
                "logical_cpus": 2,
                "physical_cores": 1,
                "usable_cpus": 2,
            },
            "gpus": [],
            "jetson": None,
            "versions": {"numpy": "2.3.0", "onnxruntime": "1.23.0"},
        },
        "stages": [
            _stage(
                "make-shapes",
                1.5,
                "16 train + 4 val images",
                [
                    "retina-deploy make-shapes demo-out/data/train --num-images 16 --size 128 --seed 0",
                    "retina-deploy make-shapes demo-out/data/val --num-images 4 --size 128 --seed 1",
                ],
            ),
            _stage("train", 42.0, "80 images seen", ["retina-deploy train --out demo-out/run --images 80"]),
            _stage("export-onnx", 3.25, "model.onnx", ["retina-deploy export-onnx demo-out/run/best model.onnx"]),
            {"name": "build-engine", "status": "skipped", "seconds": None, "result": None},
        ],
        "training": {"run": "run", "metrics_csv": "run/metrics.csv", "images_seen": 80, "batch_size": 4},
        "artifacts": [
            _artifact("checkpoint", "fp32", "PyTorch (CPU)", 45_000_000, 0.512, 0.834, {"1": 31.5, "4": 102.25}),
            _artifact(ODD_NAME, "fp32", "ONNX Runtime (CPU)", 44_800_000, 0.511, 0.833, {"1": 20.0, "4": 71.0}),
            _artifact(
                "model.fp16.engine",
                "fp16",
                "TensorRT-RTX 1.2",
                23_000_000,
                None,
                None,
                None,
                note="built; running it needs an NVIDIA GPU",
            ),
        ],
        "bench": {"json": "bench.json", "plot": "bench.png"},
        "predictions": {"folder": "predictions", "model": "model.onnx", "json": "predictions/detections.json"},
        "val": {"images": "data/val/images", "annotations": "data/val/annotations.json"},
        "total_seconds": 125.0,
    }


@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("demo-out")
    val = make_shapes(out / "data" / "val", num_images=4, size=128)
    images = sorted((val / "images").glob("*.png"))
    predict_files(ShiftedTruth(val), images, out / "predictions")
    (out / "run").mkdir()
    with open(out / "run" / "metrics.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(METRICS_HEADER)
        for it in range(1, 21):
            writer.writerow(["train", 0, it, 1.2 / it**0.5, 0.6 / it**0.3, 0.01, 10.5, "", ""])
            if it % 10 == 0:
                writer.writerow(["val", 0, it, "", "", "", "", 0.02 * it, 0.04 * it])
                writer.writerow(["val_raw", 0, it, "", "", "", "", 0.018 * it, 0.035 * it])
    gradient = np.linspace(0, 255, 320 * 200 * 3).reshape(200, 320, 3).astype(np.uint8)
    Image.fromarray(gradient).save(out / "bench.png")
    bench = {
        "schema": "retina-deploy/bench",
        "schema_version": 1,
        "results": [
            {
                "model": "demo-out/model.onnx",
                "backend": "onnxruntime",
                "precision": "fp32",
                "device": "cpu",
                "batch": 1,
                "latency_ms": {"mean": 20.0, "p90": 22.5},
                "images_per_s": 50.0,
            }
        ],
    }
    (out / "bench.json").write_text(json.dumps(bench))
    (out / "summary.json").write_text(json.dumps(_summary()))
    write_report(out)
    return out


def test_report_holds_every_section(demo_dir):
    text_html = (demo_dir / "report.html").read_text()
    text_md = (demo_dir / "report.md").read_text()
    for text in (text_html, text_md):
        assert "AP50 0.834" in text  # the summary paragraph quotes the checkpoint's AP50
        assert "2 min 5 s" in text and "AMD EPYC 7B13 (2 cores)" in text
        assert "retina-deploy make-shapes demo-out/data/val --num-images 4 --size 128 --seed 1" in text
        assert "retina-deploy train --out demo-out/run --images 80" in text
        assert "built; running it needs an NVIDIA GPU" in text and "TensorRT-RTX 1.2" in text
        assert "102.2" in text and "45.0" in text  # latency at batch 4, size in MB
        assert "onnxruntime" in text and "1.23.0" in text
    assert "| checkpoint | fp32 | PyTorch (CPU) | 0.512 | 0.834 | 31.5 | 102.2 | 45.0 |  |" in text_md
    assert "| model.fp16.engine | fp16 | TensorRT-RTX 1.2 | – | – | – | – | 23.0 | built; running" in text_md
    assert "| build-engine | skipped | – |" in text_md
    assert "```sh\nretina-deploy export-onnx demo-out/run/best model.onnx\n```" in text_md
    assert "<td>checkpoint</td><td>fp32</td><td>PyTorch (CPU)</td>" in text_html
    # every shifted ground-truth box scores >= 0.3 (at most 6 per image), the false positive 0.05
    boxes = len(json.loads((demo_dir / "data" / "val" / "annotations.json").read_text())["annotations"])
    assert (
        f"4 validation images: ground truth (left) beside the predictions of model.onnx (right: {boxes} boxes"
        in text_md
    )


def test_every_image_reference_exists_and_is_relative(demo_dir):
    html_refs = re.findall(r'<img src="([^"]+)"', (demo_dir / "report.html").read_text())
    md_refs = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", (demo_dir / "report.md").read_text())
    expected = ["report/bench.png", "report/training.png", "report/val_grid.png"]
    assert html_refs == md_refs == expected
    for ref in expected:
        with Image.open(demo_dir / ref) as img:
            assert img.width > 100 and img.height > 100
    with Image.open(demo_dir / "report" / "val_grid.png") as grid:
        assert grid.size == (4 * 256 + 4 * 8 + 28, 28 + 2 * 256 + 3 * 8)  # 2 rows of 2 pairs, 28 px between pairs


def test_html_escapes_text(demo_dir):
    text = (demo_dir / "report.html").read_text()
    assert "model&lt;b&gt;&amp;odd&lt;/b&gt;.onnx" in text
    assert "<b>" not in text
    assert "| model\\<b\\>&odd\\</b\\>.onnx |" in (demo_dir / "report.md").read_text()  # literal in Markdown too
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", text)  # nothing fetched from elsewhere


def test_missing_optional_pieces_say_not_run(tmp_path):
    summary = _summary()
    summary["artifacts"][0]["latency_ms"] = {"1": None}
    del summary["environment"]
    summary["stages"][0]["commands"] = None
    (tmp_path / "summary.json").write_text(json.dumps(summary))  # none of the files it names exist
    html_path, md_path = write_report(tmp_path)
    text = md_path.read_text()
    assert "Benchmark: not run." in text
    assert "Training curve: not run" in text
    assert "Validation grid: not run" in text
    assert "The environment was not recorded." in text
    assert "![" not in text and "<img" not in html_path.read_text()


def test_a_foreign_summary_is_refused(tmp_path, capsys):
    (tmp_path / "summary.json").write_text(json.dumps({"format": "something-else", "stages": []}))
    with pytest.raises(ConfigError, match="not a retina-deploy demo summary"):
        write_report(tmp_path)
    assert main([str(tmp_path / "nowhere")]) == 1
    assert "no demo summary" in capsys.readouterr().err


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(_chromium() is None, reason="no chromium binary on PATH (make setup installs it with apt)")
def test_report_renders_in_headless_chromium(demo_dir, tmp_path):
    shot = tmp_path / "report.png"
    cmd = [
        _chromium(),
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-background-networking",
        "--hide-scrollbars",
        f"--user-data-dir={tmp_path / 'profile'}",
        f"--window-size={WINDOW[0]},{WINDOW[1]}",
        f"--screenshot={shot}",
        (demo_dir / "report.html").as_uri(),
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0 and shot.is_file(), done.stderr[-2000:]
    with Image.open(shot) as img:
        assert img.size == WINDOW
        pixels = np.asarray(img.convert("RGB"))
    assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 500  # text, plots and photos, not a blank page
    # the page is 1100 px wide at most: the pictures fill rows whose middle is not all white
    non_white_rows = (pixels[:, 200:1000] < 200).any(axis=2).mean(axis=1) > 0.2
    assert non_white_rows.sum() > 600


def test_long_commands_wrap_into_the_same_shell_words():
    line = (
        "retina-deploy bench 'demo out/model.onnx' demo-out/model.int8.onnx --batch 1 4 --json demo-out/bench.json"
        " --plot demo-out/bench.png --images demo-out/data/val/images --num-images 8"
    )
    wrapped = wrap_command(line, width=60)
    rows = wrapped.splitlines()
    assert len(rows) > 2 and all(len(row) <= 60 + 2 for row in rows)  # + " \\"
    assert all(row.startswith("  ") for row in rows[1:]) and any(row.startswith("  --") for row in rows[1:])
    assert not any(re.search(r"--[a-z-]+ \\$", row) for row in rows)  # an option stays with its value
    script = f'printf "%s\\n" {wrapped.split(" ", 1)[1]}'  # the shell's words after "retina-deploy"
    words = subprocess.run(["bash", "-c", script], capture_output=True, text=True, check=True)
    assert words.stdout.splitlines() == shlex.split(line)[1:]
    assert wrap_command("retina-deploy eval x") == "retina-deploy eval x"


def test_the_fake_demo_folder_follows_its_writers():
    """The fixture's hand-written files use the formats of the code that writes the real ones."""
    from retina_deploy.demo.pipeline import FORMAT, FORMAT_VERSION
    from retina_deploy.demo.report import SUMMARY_FORMAT, SUMMARY_VERSION
    from retina_deploy.training.loop import METRICS_FIELDS

    assert (SUMMARY_FORMAT, SUMMARY_VERSION) == (FORMAT, FORMAT_VERSION)
    assert tuple(METRICS_HEADER) == METRICS_FIELDS


def test_a_bare_or_odd_summary_still_gives_a_report(tmp_path):
    bare = {"format": "retina-deploy/demo", "format_version": 1}
    (tmp_path / "summary.json").write_text(json.dumps(bare))
    text = write_report(tmp_path)[1].read_text()
    assert "No artifacts were recorded" in text and "No stages were recorded." in text
    odd = {**bare, "artifacts": [None, {"name": "x.onnx", "AP": "high", "latency_ms": {"1": "fast"}, "size_bytes": -1}],
           "stages": "none", "settings": [], "training": {"metrics_csv": 3}, "total_seconds": float("nan")}  # fmt: skip
    (tmp_path / "summary.json").write_text(json.dumps(odd))
    text = write_report(tmp_path)[1].read_text()
    assert "| x.onnx | – | – | – | – | – | – | – |  |" in text

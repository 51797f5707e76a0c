"""Bad input to the verbs that write next to the user's files: bench, triton-repo, demo, predict, the GPU check.

The rule they share (``retina_deploy.core.outputs``): outputs are checked against every input and against
files and folders the command did not write before any work or deletion; ``--overwrite`` replaces
only what the same command wrote (its marker). Every case: the exit status, exactly one line on
stderr naming the input, no traceback, no file that existed before changed, no temporary left, and
the outputs a refused command must not create are absent. Fixtures: ``conftest.py``.
"""

from __future__ import annotations

import dataclasses
import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from bad_input_helpers import (
    TRAIN,
    assert_one_line_error,
    changed_files,
    check_refused_case,
    fingerprint,
    replace_file,
    run_cli,
    temporaries,
)
from PIL import Image

from retina_deploy.cli.main import main

BENCH = ["bench", "m.onnx", "--iterations", "1", "--warmup-s", "0", "--no-peak-probe"]
IMAGE = "data/images/000000.png"
HUGE = str(2**64 + 1)  # above Triton's uint64 max_queue_delay_microseconds


# -- files a case puts in its workspace first ------------------------------------------------------


def notes(ws: Path) -> None:
    replace_file(ws / "notes.txt", "my notes\n")


def foreign_png(ws: Path) -> None:
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(ws / "mine.png")


def other_json(ws: Path) -> None:
    replace_file(ws / "other.json", json.dumps({"schema": "someone/else", "results": []}))


def user_folder(name: str):
    def setup(ws: Path) -> None:
        replace_file(ws / name / "sub/keep.txt", "the user's\n")

    return setup


def marked_model_folder_holding_the_model(ws: Path) -> None:
    """A folder marked as triton-repo's that holds the ONNX file it is asked to replace."""
    replace_file(ws / "tr/.retina-deploy-triton-repo", "{}")
    os.link(ws / "m.onnx", ws / "tr/m.onnx")


def earlier_repo(ws: Path) -> None:
    assert main(["triton-repo", "m.onnx", "repo", "--name", "r"]) == 0


def demo_lookalike(ws: Path) -> None:
    """A user's project that holds a summary.json and a run/config.json (as a demo's folder does)."""
    replace_file(ws / "proj/summary.json", "{}")
    replace_file(ws / "proj/run/config.json", "{}")
    replace_file(ws / "proj/data/train/notes.txt", "the user's data\n")


def earlier_predict_then(name: str, text: str = "the user's\n"):
    """An earlier predict folder pp/ (000000.png), then a user's file ``pp/<name>``."""

    def setup(ws: Path) -> None:
        assert main(["predict", "m.onnx", IMAGE, "--out", "pp"]) == 0
        replace_file(ws / "pp" / name, text)

    return setup


def two_stems_and_user_file(ws: Path) -> None:
    os.link(ws / IMAGE, ws / "data/000000.png")  # a second input named 000000: its PNG is 000000_1.png
    replace_file(ws / "pp/000000_1.png", "the user's\n")
    replace_file(ws / "pp/.retina-deploy-predict", json.dumps({"files": ["000000.png", "detections.json"]}))


def gpucheck_lookalike(ws: Path) -> None:
    """A folder that merely holds a file named gpu-check.json (not marked by the check)."""
    replace_file(ws / "old/gpu-check.json", "{}")
    replace_file(ws / "old/results.txt", "the user's\n")


# -- the cases: (id, setup, argv, names in the message, paths that must not exist afterwards) ----

CASES = [
    # bench: --json / --plot over inputs and foreign files, checked before any work
    ("bench/json_over_model", None, [*BENCH, "--json", "m.onnx"], ("m.onnx",), []),
    ("bench/plot_over_model", None, [*BENCH, "--plot", "m.onnx"], ("m.onnx",), []),
    ("bench/plot_over_photo", None, [*BENCH, "--images", "data/images", "--plot", IMAGE], ("000000.png",), []),
    ("bench/json_over_photo", None, [*BENCH, "--images", "data/images", "--json", IMAGE], ("000000.png",), []),
    ("bench/json_over_notes", notes, [*BENCH, "--json", "notes.txt"], ("notes.txt",), []),
    ("bench/json_over_annotations", None, [*BENCH, "--json", "data/annotations.json"], ("annotations.json",), []),
    ("bench/json_over_other_schema", other_json, [*BENCH, "--json", "other.json"], ("other.json",), []),
    ("bench/plot_over_foreign_png", foreign_png, [*BENCH, "--plot", "mine.png"], ("mine.png",), []),
    (
        "bench/json_over_checkpoint_config",
        None,
        ["bench", "run2/last", "--iterations", "1", "--warmup-s", "0", "--json", "run2/last/config.json"],
        ("config.json",),
        [],
    ),
    ("bench/plot_suffix_json", None, [*BENCH, "--plot", "x.json"], ("x.json", ".png"), ["x.json"]),
    ("bench/plot_suffix_txt", None, [*BENCH, "--plot", "p.txt"], ("p.txt",), ["p.txt"]),
    ("bench/plot_no_suffix", None, [*BENCH, "--plot", "plot"], ("plot",), ["plot"]),
    ("bench/json_unwritable", None, [*BENCH, "--json", "/proc/bench.json"], ("/proc",), []),
    ("bench/plot_unwritable", None, [*BENCH, "--plot", "/proc/x/bench.png"], ("/proc",), []),
    ("bench/json_under_a_file", None, [*BENCH, "--json", "m.onnx/b.json"], ("m.onnx",), []),
    ("bench/json_is_folder", None, [*BENCH, "--json", "data"], ("data",), []),
    ("bench/json_and_plot_same", None, [*BENCH, "--json", "b.png", "--plot", "b.png"], ("b.png",), ["b.png"]),
    ("bench/batch_1.5", None, [*BENCH, "--batch", "1.5"], ("--batch", "1.5"), []),
    ("bench/iterations_abc", None, [*BENCH, "--iterations", "abc"], ("--iterations",), []),
    ("bench/backend_unknown", None, [*BENCH, "--backend", "nope"], ("--backend",), []),
    ("bench/no_model", None, ["bench"], ("MODEL",), []),
    ("bench/unknown_flag", None, [*BENCH, "--fast"], ("--fast",), []),
    # triton-repo: --overwrite replaces only a model folder it wrote
    (
        "triton-repo/name_userdir_overwrite",
        user_folder("userdir"),
        ["triton-repo", "m.onnx", ".", "--name", "userdir", "--overwrite"],
        ("userdir",),
        [],
    ),
    (
        "triton-repo/name_userdir",
        user_folder("userdir"),
        ["triton-repo", "m.onnx", ".", "--name", "userdir"],
        ("userdir",),
        [],
    ),
    (
        "triton-repo/name_checkpoint_run",
        None,
        ["triton-repo", "m.onnx", ".", "--name", "run2", "--overwrite"],
        ("run2",),
        [],
    ),
    (
        "triton-repo/name_data_overwrite",
        None,
        ["triton-repo", "m.onnx", ".", "--name", "data", "--overwrite"],
        ("data",),
        [],
    ),
    (
        "triton-repo/model_inside_its_folder",
        marked_model_folder_holding_the_model,
        ["triton-repo", "tr/m.onnx", ".", "--name", "tr", "--overwrite"],
        ("tr/m.onnx",),
        [],
    ),
    (
        "triton-repo/earlier_without_overwrite",
        earlier_repo,
        ["triton-repo", "m.onnx", "repo", "--name", "r"],
        ("--overwrite",),
        [],
    ),
    ("triton-repo/out_dir_is_the_model", None, ["triton-repo", "m.onnx", "m.onnx"], ("m.onnx",), []),
    ("triton-repo/out_dir_under_a_file", None, ["triton-repo", "m.onnx", "m.onnx/repo"], ("m.onnx",), []),
    ("triton-repo/out_dir_unwritable", None, ["triton-repo", "m.onnx", "/proc/repo"], ("/proc",), []),
    (
        "triton-repo/queue_delay_above_uint64",
        None,
        ["triton-repo", "m.onnx", "repo", "--queue-delay-us", HUGE],
        ("queue_delay_us",),
        ["repo"],
    ),
    (
        "triton-repo/queue_delay_over_a_minute",
        None,
        ["triton-repo", "m.onnx", "repo", "--queue-delay-us", "60000001"],
        ("queue_delay_us",),
        ["repo"],
    ),
    (
        "triton-repo/queue_delay_1e20",
        None,
        ["triton-repo", "m.onnx", "repo", "--queue-delay-us", "1e20"],
        ("--queue-delay-us",),
        ["repo"],
    ),
    (
        "triton-repo/instances_0",
        None,
        ["triton-repo", "m.onnx", "repo", "--instances", "0"],
        ("--instances",),
        ["repo"],
    ),
    (
        "triton-repo/max_batch_abc",
        None,
        ["triton-repo", "m.onnx", "repo", "--max-batch", "abc"],
        ("--max-batch",),
        ["repo"],
    ),
    ("triton-repo/kind_tpu", None, ["triton-repo", "m.onnx", "repo", "--kind", "tpu"], ("--kind",), ["repo"]),
    # demo: a folder is the demo's only if it carries the demo's marker
    ("demo/lookalike_folder", demo_lookalike, ["demo", "--out", "proj", "--size", "128"], ("proj",), []),
    (
        "demo/lookalike_folder_restart",
        demo_lookalike,
        ["demo", "--out", "proj", "--size", "128", "--restart"],
        ("proj",),
        [],
    ),
    ("demo/size_abc", None, ["demo", "--out", "d", "--size", "abc"], ("--size",), ["d"]),
    ("demo/num_val_1.5", None, ["demo", "--out", "d", "--num-val", "1.5"], ("--num-val",), ["d"]),
    ("demo/out_unwritable", None, ["demo", "--out", "/proc/demo", "--size", "128"], ("/proc",), []),
    # predict: a user's file in the output folder is never replaced
    (
        "predict/earlier_folder_user_file",
        earlier_predict_then("000001.png"),
        ["predict", "m.onnx", "data/images/000001.png", "--out", "pp"],
        ("000001.png",),
        [],
    ),
    (
        "predict/earlier_folder_user_file_overwrite",
        earlier_predict_then("000001.png"),
        ["predict", "m.onnx", "data/images/000001.png", "--out", "pp", "--overwrite"],
        ("000001.png",),
        [],
    ),
    (
        "predict/foreign_folder_user_file_overwrite",
        lambda ws: replace_file(ws / "mine/000000.png", "the user's\n"),
        ["predict", "m.onnx", "data/images/000000.png", "--out", "mine", "--overwrite"],
        ("mine",),
        [],
    ),
    (
        "predict/folder_with_foreign_detections",
        lambda ws: replace_file(ws / "pp/detections.json", "[]"),
        ["predict", "m.onnx", IMAGE, "--out", "pp"],
        ("pp",),
        [],
    ),
    (
        "predict/foreign_detections_overwrite",
        lambda ws: replace_file(ws / "pp/detections.json", "[]"),
        ["predict", "m.onnx", IMAGE, "--out", "pp", "--overwrite"],
        ("detections.json",),
        [],
    ),
    (
        "predict/second_stem_over_user_file",
        two_stems_and_user_file,
        ["predict", "m.onnx", IMAGE, "data/000000.png", "--out", "pp"],
        ("000000_1.png",),
        [],
    ),
    ("predict/out_unwritable", None, ["predict", "m.onnx", IMAGE, "--out", "/proc/p"], ("/proc",), []),
    (
        "predict/batch_size_1.5",
        None,
        ["predict", "m.onnx", IMAGE, "--out", "p", "--batch-size", "1.5"],
        ("--batch-size",),
        ["p"],
    ),
    (
        "predict/draw_thresh_abc",
        None,
        ["predict", "m.onnx", IMAGE, "--out", "p", "--draw-thresh", "abc"],
        ("--draw-thresh",),
        ["p"],
    ),
    # make-shapes: --overwrite replaces only a dataset folder it wrote
    ("make-shapes/overwrite_a_run", None, ["make-shapes", "run2", "--num-images", "2", "--overwrite"], ("run2",), []),
    (
        "make-shapes/overwrite_a_user_folder",
        user_folder("proj"),
        ["make-shapes", "proj", "--num-images", "2", "--overwrite"],
        ("proj",),
        [],
    ),
    ("make-shapes/num_images_abc", None, ["make-shapes", "out", "--num-images", "abc"], ("--num-images",), ["out"]),
    # train: the same check of its run folder
    ("train/out_unwritable", None, [*TRAIN, "--out", "/proc/R"], ("/proc",), []),
    ("train/out_under_a_file", None, [*TRAIN, "--out", "m.onnx/R"], ("m.onnx",), []),
    # serve: the parser's errors (the shared one-line parser)
    ("serve/port_abc", None, ["serve", "m.onnx", "--port", "abc"], ("--port",), []),
    ("serve/max_batch_1.5", None, ["serve", "m.onnx", "--max-batch", "1.5"], ("--max-batch",), []),
]

for _value in ("nan", "-1", "2", "inf", "-inf", "1.0001"):
    CASES.append(
        (
            f"predict/draw_thresh_{_value}",
            None,
            ["predict", "m.onnx", IMAGE, "--out", "p", "--draw-thresh", _value],
            ("--draw-thresh",),
            ["p"],
        )
    )


def _must_not_run(ctx):
    raise AssertionError("a refused demo ran a stage")


@pytest.fixture
def no_demo_stages(monkeypatch):
    """Demo stages that fail if run: a refused demo must stop before the first one."""
    import retina_deploy.demo.pipeline as demo

    stages = [dataclasses.replace(stage, run=_must_not_run) for stage in demo.STAGES]
    monkeypatch.setattr(demo, "STAGES", stages)


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_bad_output_is_one_line_and_changes_nothing(workspace, capsys, no_demo_stages, case):
    check_refused_case(workspace, capsys, case)


# -- the GPU check (its own command: exit status 2 for bad arguments) --------------------------------

GPUCHECK_CASES = [
    ("max_minutes_-1", user_folder("old"), ["--out", "old", "--overwrite", "--max-minutes", "-1"], ("-1",)),
    ("max_minutes_0", user_folder("old"), ["--out", "old", "--overwrite", "--max-minutes", "0"], ("--max-minutes",)),
    ("max_minutes_nan", user_folder("old"), ["--out", "old", "--overwrite", "--max-minutes", "nan"], ("nan",)),
    ("max_minutes_inf", None, ["--out", "g", "--max-minutes", "inf"], ("inf",)),
    ("max_minutes_abc", None, ["--out", "g", "--max-minutes", "abc"], ("--max-minutes",)),
    ("parts_comma", None, ["--out", "g", "--parts", ","], ("--parts",)),
    ("parts_empty", None, ["--out", "g", "--parts", ""], ("--parts",)),
    ("parts_unknown", None, ["--out", "g", "--parts", "nope"], ("nope",)),
    ("lookalike_overwrite", gpucheck_lookalike, ["--out", "old", "--overwrite", "--parts", "env"], ("old",)),
    ("user_folder_overwrite", user_folder("old"), ["--out", "old", "--overwrite", "--parts", "env"], ("old",)),
    ("out_is_a_file", None, ["--out", "m.onnx", "--parts", "env"], ("m.onnx",)),
    ("out_under_a_file", None, ["--out", "m.onnx/g", "--parts", "env"], ("m.onnx",)),
    ("quick_and_dry_run", None, ["--out", "g", "--quick", "--cpu-dry-run"], ("--cpu-dry-run",)),
]


@pytest.mark.parametrize("case", GPUCHECK_CASES, ids=[c[0] for c in GPUCHECK_CASES])
def test_gpucheck_bad_argument_is_one_line_and_changes_nothing(workspace, case):
    _, setup, argv, names = case
    if setup is not None:
        setup(workspace)
    before = fingerprint(workspace)
    cmd = [sys.executable, "-m", "retina_deploy.gpucheck", *argv]
    done = subprocess.run(cmd, cwd=workspace, capture_output=True, text=True, timeout=120)
    assert_one_line_error(done.returncode, done.stderr, names, status=2)
    assert changed_files(before, fingerprint(workspace)) == []
    assert not (workspace / "g").exists()


# -- what the same command wrote is replaced -----------------------------------------------------


def test_bench_replaces_its_own_report_and_plot(workspace, capsys):
    argv = [*BENCH, "--json", "b.json", "--plot", "b.png"]
    for _ in range(2):
        rc, out, err = run_cli(capsys, argv)
        assert rc == 0, err
        assert json.loads((workspace / "b.json").read_text())["schema"] == "retina-deploy/bench"
        assert Image.open(workspace / "b.png").text["Software"] == "retina-deploy bench"
    assert temporaries(workspace) == []


def test_triton_repo_folder_has_the_usual_modes_and_overwrite_replaces_it(workspace, capsys):
    mask = os.umask(0o022)
    try:
        assert run_cli(capsys, ["triton-repo", "m.onnx", "repo"])[0] == 0
        (workspace / "repo/retinanet/stale.txt").write_text("from the earlier write")
        rc, _, err = run_cli(capsys, ["triton-repo", "m.onnx", "repo", "--overwrite"])
    finally:
        os.umask(mask)
    assert rc == 0, err
    model_dir = workspace / "repo/retinanet"
    assert not (model_dir / "stale.txt").exists()
    for path in (model_dir, model_dir / "1"):
        assert stat.S_IMODE(path.stat().st_mode) == 0o755, path
    for path in (model_dir / "config.pbtxt", model_dir / "1/model.onnx", model_dir / "README.md"):
        assert stat.S_IMODE(path.stat().st_mode) == 0o644, path
    assert [p.name for p in (workspace / "repo").iterdir()] == ["retinanet"]  # no staging folder left


def test_predict_reuses_its_folder_and_keeps_the_users_files(workspace, capsys):
    replace_file(workspace / "pp/notes.txt", "the user's\n")
    rc, _, err = run_cli(capsys, ["predict", "m.onnx", IMAGE, "--out", "pp", "--overwrite"])  # a foreign folder
    assert rc == 0, err
    first = (workspace / "pp/000000.png").stat().st_ino
    rc, _, err = run_cli(capsys, ["predict", "m.onnx", IMAGE, "data/images/000001.png", "--out", "pp"])
    assert rc == 0, err  # its own folder now: 000000.png replaced, 000001.png added
    assert (workspace / "pp/000000.png").stat().st_ino != first
    assert (workspace / "pp/notes.txt").read_text() == "the user's\n"
    records = json.loads((workspace / "pp/detections.json").read_text())
    assert [r["image"] for r in records] == [IMAGE, "data/images/000001.png"]

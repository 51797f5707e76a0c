"""The bad-input suite's I/O cases: a full disk, a kill during a write, a closed stdout, file modes,
leftover temporaries, a failed training start, and the order of predict's records."""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from bad_input_helpers import assert_one_line_error, changed_files, fingerprint, run_cli, temporaries

from retina_deploy.core.fileio import write_bytes_atomic

PYTHON = sys.executable
DATA = ["--images", "data/images", "--annotations", "data/annotations.json"]


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# -- full disk -------------------------------------------------------------------------------------

FULL_DISK_SCRIPT = textwrap.dedent(
    """
    import contextlib, io, json, sys
    from pathlib import Path
    from retina_deploy.cli.main import main

    ws, disk = Path(sys.argv[1]), Path(sys.argv[2])
    images = sorted(str(p) for p in (ws / "data/images").iterdir())
    train = ["train", "--images", str(ws / "data/images"), "--annotations", str(ws / "data/annotations.json"),
             "--backbone", "resnet18", "--backbone-norm", "bn", "--size", "128", "128", "--fpn-channels", "64",
             "--head-norm", "groupnorm", "--iters", "1", "--batch-size", "4", "--workers", "0"]
    commands = {
        "make-shapes": ["make-shapes", str(disk / "shapes"), "--num-images", "4", "--size", "512"],
        "export-onnx": ["export-onnx", str(ws / "run2/last"), str(disk / "old.onnx"), "--no-simplify"],
        "train": [*train, "--out", str(disk / "R")],
        "predict": ["predict", str(ws / "m.onnx"), *images * 2, "--out", str(disk / "p")],
    }
    results = {}
    for name, argv in commands.items():
        err = io.StringIO()
        with contextlib.redirect_stderr(err):
            rc = main(argv)
        results[name] = {"rc": rc, "err": err.getvalue()}
    print(json.dumps(results))
    """
)


def _can_mount_tmpfs() -> bool:
    if shutil.which("unshare") is None:
        return False
    probe = subprocess.run(
        ["unshare", "-rm", "sh", "-c", "mount -t tmpfs -o size=64k tmpfs /mnt"], capture_output=True, timeout=30
    )
    return probe.returncode == 0


@pytest.mark.skipif(not _can_mount_tmpfs(), reason="no user namespaces for a private tmpfs here")
def test_full_disk_is_one_line_naming_the_users_path_and_keeps_the_old_file(workspace, tmp_path):
    disk = tmp_path / "disk"
    disk.mkdir()
    script = tmp_path / "full_disk.py"
    script.write_text(FULL_DISK_SCRIPT)
    # A 3 MiB disk holding an old export and a filler: little room left.
    shell = (
        f"mount -t tmpfs -o size=3m tmpfs {disk} && printf old > {disk}/old.onnx"
        f" && head -c 2900000 /dev/zero > {disk}/filler && cd {workspace} && {PYTHON} {script} {workspace} {disk}"
        f" && cat {disk}/old.onnx && echo && ls -a {disk}"
    )
    proc = subprocess.run(["unshare", "-rm", "sh", "-c", shell], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.splitlines()
    results = json.loads(lines[0])
    assert lines[1] == "old"  # export-onnx's target intact
    listing = lines[2:]
    assert not [n for n in listing if n.endswith(".tmp")], listing  # no temporary left behind
    for name, result in results.items():
        err = result["err"]
        assert result["rc"] == 1, (name, err)
        assert "Traceback" not in err and "Logging error" not in err, (name, err)
        errors = [line for line in err.splitlines() if "error:" in line]
        assert len(errors) == 1, (name, err)
        assert "No space left on device" in errors[0] or "disk full" in errors[0], (name, errors[0])
        assert str(disk) in errors[0] and ".tmp" not in errors[0], (name, errors[0])
        if name != "train":  # train logs its progress on stderr by design
            assert err.strip() == errors[0], (name, err)


@pytest.mark.parametrize(
    "argv,target",
    [
        (["export-onnx", "run2/last", "out.onnx", "--no-simplify"], "out.onnx"),
        (["eval", "m.onnx", *DATA, "--json", "metrics.json"], "metrics.json"),
        (["predict", "m.onnx", "data/images/000000.png", "--out", "p"], "p/"),
        (["convert-weights", "run2/best/model.safetensors", "ck", "--size", "128", "128"], "ck/"),
    ],
    ids=["export-onnx", "eval-json", "predict", "convert-weights"],
)
def test_failed_final_write_names_the_users_path(workspace, capsys, monkeypatch, argv, target):
    """The same without a tmpfs: the atomic writer's rename fails with ENOSPC (and other OSErrors)."""
    real_replace = os.replace

    def full(src, dst, *args, **kwargs):
        if str(src).endswith(".tmp"):
            raise OSError(errno.ENOSPC, "No space left on device", str(src))
        return real_replace(src, dst, *args, **kwargs)

    monkeypatch.setattr(os, "replace", full)
    before = fingerprint(workspace)
    rc, _, err = run_cli(capsys, argv)
    line = assert_one_line_error(rc, err, ("No space left on device", target))
    assert ".tmp" not in line
    assert changed_files(before, fingerprint(workspace)) == []
    assert temporaries(workspace) == []


# -- a kill during a write -------------------------------------------------------------------------

KILLED_WRITER = textwrap.dedent(
    """
    import sys, time
    from retina_deploy.core.fileio import atomic_path
    with atomic_path(sys.argv[1]) as tmp:
        with open(tmp, "wb") as f:
            f.write(b"new" * 100000)
            f.flush()
            print("writing", flush=True)
            time.sleep(120)
    """
)


def test_kill_during_write_keeps_the_old_file_and_the_next_write_cleans_up(tmp_path):
    target = tmp_path / "model.onnx"
    target.write_bytes(b"old")
    proc = subprocess.Popen([PYTHON, "-c", KILLED_WRITER, str(target)], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "writing"
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
    assert target.read_bytes() == b"old"
    assert len(list(tmp_path.glob(".model.onnx.*.tmp"))) == 1  # the killed writer's
    write_bytes_atomic(target, b"next")
    assert target.read_bytes() == b"next"
    assert list(tmp_path.glob("*.tmp")) == [] and list(tmp_path.glob(".*.tmp")) == []
    assert target.stat().st_mode & 0o777 == 0o666 & ~_umask()


def test_make_shapes_killed_while_replacing_keeps_the_old_dataset(workspace, capsys):
    before = fingerprint(workspace / "data")
    argv = ["make-shapes", "data", "--num-images", "400", "--size", "256", "--overwrite"]
    proc = subprocess.Popen([PYTHON, "-m", "retina_deploy.cli", *argv], cwd=workspace, stdout=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:
            partial = list(workspace.glob(".data.*.tmp/images/*.png"))
            if len(partial) >= 2:
                break
            time.sleep(0.05)
    finally:
        proc.kill()
        proc.wait(30)
    assert proc.returncode == -signal.SIGKILL  # killed half-way through the images
    assert fingerprint(workspace / "data") == before
    assert len(list(workspace.glob(".data.*.tmp"))) == 1  # the killed run's folder
    rc, _, err = run_cli(capsys, ["make-shapes", "data", "--num-images", "2", "--size", "64", "--overwrite"])
    assert rc == 0, err
    assert list(workspace.glob(".data.*")) == []  # removed by the next write


def test_a_live_writers_temporary_is_left_alone(tmp_path):
    target = tmp_path / "x.json"
    live = tmp_path / f".x.json.{os.getpid()}.0123abcd.tmp"
    live.write_bytes(b"in progress")
    write_bytes_atomic(target, b"{}")
    assert live.exists()


def test_atomic_outputs_are_as_readable_as_any_other_file(pristine):
    expected = 0o666 & ~_umask()
    for name in ("m.onnx", "run2/last/model.safetensors", "run2/last/config.json", "run2/train_state.pt"):
        assert (pristine / name).stat().st_mode & 0o777 == expected, name


# -- a closed stdout -------------------------------------------------------------------------------


def test_eval_into_a_closed_pipe_still_writes_its_files(workspace):
    cmd = (
        f"{PYTHON} -m retina_deploy.cli eval m.onnx --images data/images --annotations data/annotations.json"
        " --json j.json --results r.json | true; echo rc=${PIPESTATUS[0]}"
    )
    proc = subprocess.run(["bash", "-c", cmd], cwd=workspace, capture_output=True, text=True, timeout=300)
    assert proc.stdout.strip() == "rc=1", proc.stderr
    assert_one_line_error(1, proc.stderr, ("broken pipe",))
    assert json.loads((workspace / "j.json").read_text())["images"] == 8
    assert isinstance(json.loads((workspace / "r.json").read_text()), list)


# -- a failed training start, predict's record order -------------------------------------------------


def test_refused_training_start_leaves_nothing_and_a_retry_works(workspace, capsys):
    import pickle

    class Evil:
        def __reduce__(self):
            return (os.system, ("touch pwned",))

    (workspace / "evil.pth").write_bytes(pickle.dumps({"model": Evil()}))
    train = ["train", *DATA, "--backbone", "resnet18", "--backbone-norm", "bn", "--size", "128", "128"]
    train += ["--fpn-channels", "64", "--iters", "1", "--batch-size", "4", "--workers", "0", "--out", "R"]
    rc, _, err = run_cli(capsys, [*train, "--backbone-weights", "evil.pth"])
    assert_one_line_error(rc, err, ("evil.pth",))
    assert not (workspace / "R").exists() and not (workspace / "pwned").exists()
    rc, out, err = run_cli(capsys, train)
    assert rc == 0, err
    assert "last/" in out and "best/" not in out  # no validation set: no best/ announced
    assert (workspace / "R/last/config.json").is_file() and not (workspace / "R/best").exists()


def test_predict_records_follow_the_input_order(workspace, capsys):
    (workspace / "bad.png").write_text("not an image")
    images = ["data/images/000000.png", "bad.png", "data/images/000001.png"]
    rc, _, err = run_cli(capsys, ["predict", "m.onnx", *images, "--out", "p"])
    assert_one_line_error(rc, err, ("bad.png",))
    records = json.loads((workspace / "p/detections.json").read_text())
    assert [r["image"] for r in records] == images
    assert "error" in records[1] and "detections" in records[2]
    rc, _, _ = run_cli(capsys, ["predict", "m.onnx", images[0], "--out", "p"])  # a previous predict's folder
    assert rc == 0


def test_demo_replaces_only_its_own_folder(workspace):
    from retina_deploy.demo.pipeline import MARKER, _prepare_out

    own = workspace / "demo-out"
    _prepare_out(own)
    (own / "data").mkdir()
    _prepare_out(own)  # its own folder: replaced
    assert (own / MARKER).is_file() and not (own / "data").exists()
    assert Path(workspace / "run2/config.json").is_file()

"""Bad ``train --init-weights`` input, as the bad-input suite checks every verb (``test_bad_inputs_cli.py``).

Every case: exit status 1, one line on stderr naming the input, no file that existed before changed, no
temporary file left, no run folder created. Fixtures (``run2/``, ``r32/``, ``data/``): ``conftest.py``.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from bad_input_helpers import (
    TRAIN,
    check_refused_case,
    edit_json,
    evil_pickle,
    replace_file,
)


def notes(ws: Path) -> None:
    replace_file(ws / "notes.txt", "not weights\n")


def truncated(ws: Path) -> None:
    """trunc/: run2/last with its weights cut to 5000 bytes (config.json still names the full file's sha256)."""
    for name in ("config.json", "model.safetensors"):
        replace_file(ws / "trunc" / name, (ws / "run2/last" / name).read_bytes())
    replace_file(ws / "trunc/model.safetensors", (ws / "trunc/model.safetensors").read_bytes()[:5000])


def truncated_same_sha(ws: Path) -> None:
    """trunc/ whose config.json names the truncated file's sha256: the safetensors reader refuses it."""
    truncated(ws)
    digest = hashlib.sha256((ws / "trunc/model.safetensors").read_bytes()).hexdigest()
    edit_json(ws / "trunc/config.json", lambda c: c.update(weights_sha256=digest))


def unknown_key(ws: Path) -> None:
    truncated(ws)
    replace_file(ws / "trunc/model.safetensors", (ws / "run2/last/model.safetensors").read_bytes())
    edit_json(ws / "trunc/config.json", lambda c: c.update(surprise=1))


CASES = [
    ("missing", None, [*TRAIN, "--init-weights", "nope", "--out", "R"], ("nope",), ["R"]),
    ("text_file", notes, [*TRAIN, "--init-weights", "notes.txt", "--out", "R"], ("notes.txt",), ["R"]),
    ("pickle", evil_pickle, [*TRAIN, "--init-weights", "evil.pth", "--out", "R"], ("evil.pth",), ["R", "pwned"]),
    ("data_folder", None, [*TRAIN, "--init-weights", "data", "--out", "R"], ("data",), ["R"]),
    ("run_folder", None, [*TRAIN, "--init-weights", "run2", "--out", "R"], ("run2", "best/ or last/"), ["R"]),
    ("truncated", truncated, [*TRAIN, "--init-weights", "trunc", "--out", "R"], ("trunc", "sha256"), ["R"]),
    (
        "truncated_same_sha",
        truncated_same_sha,
        [*TRAIN, "--init-weights", "trunc", "--out", "R"],
        ("trunc", "safetensors"),
        ["R"],
    ),
    ("unknown_config_key", unknown_key, [*TRAIN, "--init-weights", "trunc", "--out", "R"], ("surprise",), ["R"]),
    ("config_invalid", None, [*TRAIN, "--init-weights", "r32", "--out", "R"], ("r32", "groupnorm"), ["R"]),
    (
        "architecture_differs",
        None,
        [*TRAIN, "--backbone", "resnet34", "--init-weights", "run2/last", "--out", "R"],
        ("run2/last", "backbone 'resnet34'", "'resnet18'", "--backbone"),
        ["R"],
    ),
    (
        "with_resume",
        None,
        ["train", "--resume", "run2", "--init-weights", "run2/last"],
        ("--init-weights", "--resume"),
        [],
    ),
    (
        "with_backbone_weights",
        notes,
        [*TRAIN, "--init-weights", "run2/last", "--backbone-weights", "notes.txt", "--out", "R"],
        ("init_weights", "backbone_weights"),
        ["R"],
    ),
]


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_bad_init_weights_is_one_line_and_changes_nothing(workspace, capsys, case):
    check_refused_case(workspace, capsys, case)

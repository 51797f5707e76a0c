"""`retina-deploy demo` end to end at toy size: every stage runs and reports, reruns replace the folder."""

import json

import pytest

from retina_deploy.cli import main
from retina_deploy.demo import run_demo
from retina_deploy.errors import ConfigError


@pytest.mark.slow
def test_demo_runs_every_stage_and_reruns(tmp_path):
    out = tmp_path / "demo"
    summary = run_demo(out, minutes=0.1, num_train=8, num_val=4, size=128, log=lambda _: None)
    assert json.loads((out / "summary.json").read_text()) == json.loads(json.dumps(summary))
    for stage in ("checkpoint", "onnx"):
        assert set(summary[stage]["metrics"]) >= {"AP", "AP50", "AP75"}
    # the checkpoint and the ONNX file are scored by the same code: same model, same numbers
    assert summary["onnx"]["metrics"]["AP"] == pytest.approx(summary["checkpoint"]["metrics"]["AP"], abs=1e-3)
    assert len(list((out / "predictions").glob("*.png"))) == 4
    (out / "data" / "marker").write_text("old")
    run_demo(out, minutes=0.05, num_train=8, num_val=4, size=128, log=lambda _: None)
    assert not (out / "data" / "marker").exists()


def test_demo_refuses_a_foreign_folder(tmp_path, capsys):
    (tmp_path / "precious.txt").write_text("keep me")
    with pytest.raises(ConfigError, match="not a previous demo"):
        run_demo(tmp_path, minutes=0.1, num_train=8, num_val=4, size=128)
    assert main(["demo", "--out", str(tmp_path)]) == 1
    assert (tmp_path / "precious.txt").read_text() == "keep me"
    assert "not a previous demo" in capsys.readouterr().err

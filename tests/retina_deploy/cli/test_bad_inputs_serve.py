"""Bad input to ``serve``: refused before the port is bound, in one line, exit 1, no file changed.

uvicorn is replaced by a stub that fails the case if the server would start, so a refusal that comes
too late (after binding, as a log line of a running server) fails instead of serving forever.
"""

from __future__ import annotations

import socket

import pytest
from bad_input_helpers import assert_one_line_error, changed_files, fingerprint, replace_file, run_cli, temporaries

SERVE = ["serve", "m.onnx", "--port", "0"]


def garbage_models(ws):
    replace_file(ws / "x.onnx", "not an ONNX file\n")
    replace_file(ws / "t.onnx", (ws / "m.onnx").read_bytes()[:1000])
    replace_file(ws / "e.engine", b"some vendor's engine" * 100)


CASES = [
    ("host_empty", None, [*SERVE, "--host", ""], ("host", "''")),
    ("host_blank", None, [*SERVE, "--host", " "], ("host",)),
    ("host_padded", None, [*SERVE, "--host", " 127.0.0.1"], ("host",)),
    ("host_unknown", None, [*SERVE, "--host", "no-such-host.invalid"], ("no-such-host.invalid",)),
    ("max_batch_above_model", None, [*SERVE, "--max-batch", "8"], ("max_batch 8", "maximum batch 4")),
    ("garbage_onnx", garbage_models, ["serve", "x.onnx", "--port", "0"], ("x.onnx",)),
    ("truncated_onnx", garbage_models, ["serve", "t.onnx", "--port", "0"], ("t.onnx",)),
    ("engine_without_manifest", garbage_models, ["serve", "e.engine", "--port", "0"], ("e.engine", "manifest")),
    ("onnx_with_engine_backend", None, [*SERVE, "--backend", "tensorrt"], ("m.onnx", "tensorrt")),
    ("triton_unreachable", None, ["serve", "triton://127.0.0.1:1/m", "--port", "0"], ("cannot reach Triton",)),
    ("triton_bad_url", None, ["serve", "triton://127.0.0.1:8000/", "--port", "0"], ("triton://",)),
    ("max_delay_1e300", None, [*SERVE, "--max-delay-ms", "1e300"], ("max_delay_ms", "60000")),
    ("max_delay_61s", None, [*SERVE, "--max-delay-ms", "61000"], ("max_delay_ms",)),
    ("timeout_1e300", None, [*SERVE, "--timeout", "1e300"], ("timeout_s", "3600")),
    ("drain_timeout_1e300", None, [*SERVE, "--drain-timeout", "1e300"], ("drain_timeout_s",)),
    ("max_body_1e9", None, [*SERVE, "--max-body-mb", "1e9"], ("max_body_mb",)),
]


@pytest.fixture
def no_server_start(monkeypatch):
    import uvicorn

    def refuse(self, *args, **kwargs):
        raise AssertionError("the server started: the bad input was not refused before binding")

    monkeypatch.setattr(uvicorn.Server, "run", refuse)


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_bad_serve_input_is_one_line_before_binding(workspace, capsys, no_server_start, case):
    _, setup, argv, names = case
    if setup is not None:
        setup(workspace)
    before = fingerprint(workspace)
    rc, out, err = run_cli(capsys, argv)
    assert_one_line_error(rc, err, names)
    assert "listening on" not in out
    assert changed_files(before, fingerprint(workspace)) == []
    assert temporaries(workspace) == []


def test_port_in_use_is_one_line(workspace, capsys, no_server_start):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        rc, out, err = run_cli(capsys, ["serve", "m.onnx", "--port", port])
    assert_one_line_error(rc, err, (f"127.0.0.1:{port}", "in use"))
    assert "listening on" not in out


def test_help_states_every_bound(capsys):
    from retina_deploy.cli.main import main
    from retina_deploy.runtime.serve.config import CONFIG_BOUNDS

    with pytest.raises(SystemExit):
        main(["serve", "--help"])
    text = " ".join(capsys.readouterr().out.split()).split("options:")[1]
    for flag, name in (("--max-delay-ms", "max_delay_ms"), ("--max-body-mb", "max_body_mb"), ("--timeout", "timeout_s"),
                       ("--drain-timeout", "drain_timeout_s")):  # fmt: skip
        help_text = text.split(f"{flag} ")[1].split(" --")[0]
        assert f"at most {CONFIG_BOUNDS[name][1]:g}" in help_text, (flag, help_text)

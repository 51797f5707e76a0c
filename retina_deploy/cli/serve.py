"""The ``serve`` and ``triton-repo`` verbs (parse, validate, call ``run_server`` / ``write_triton_repo``).

Options that are not given keep the library's defaults (``ServeConfig``, ``run_server``, ``TritonRepoConfig``):
one place for each default; ``--help`` reads it from there.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

from retina_deploy.cli.common import LibraryDefault, add_verb
from retina_deploy.core.errors import RetinaDeployError

TRITON_SCHEME = "triton://"


def _int_at_least(low: int):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer >= {low}, got {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"expected an integer >= {low}, got {value}")
        return value

    return parse


_positive_int = _int_at_least(1)


def _non_negative(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {text!r}") from None
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"expected a finite number >= 0, got {text}")
    return value


def _positive(text: str) -> float:
    value = _non_negative(text)
    if value == 0:
        raise argparse.ArgumentTypeError("expected a number > 0, got 0")
    return value


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a port number, got {text!r}") from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"port must be in 0..65535, got {value}")
    return value


def _check_model(model: str) -> None:
    if not model.startswith(TRITON_SCHEME) and not Path(model).is_file():
        raise RetinaDeployError(f"{model}: no such model file (.onnx, .engine, or triton://host:port/model)")


# -- serve ---------------------------------------------------------------------------------------

_SERVE = "retina_deploy.runtime.serve.app"


def _at_most(field: str) -> str:
    """ ", at most N" from ServeConfig's bound on ``field`` (the one place the bounds live)."""
    from retina_deploy.runtime.serve.config import CONFIG_BOUNDS

    return f", at most {CONFIG_BOUNDS[field][1]:g}"


_RUNNER = "retina_deploy.runtime.serve.runner"
_SERVE_FIELDS = ("max_batch", "max_delay_ms", "max_queue", "workers", "max_body_mb", "max_images", "timeout_s")


def _given(args, fields) -> dict:
    """{field: value} of the options given on the command line."""
    return {f: getattr(args, f) for f in fields if getattr(args, f) is not None}


def run_serve(args) -> int:
    import logging

    from retina_deploy.runtime.detector import Detector
    from retina_deploy.runtime.serve.app import ServeConfig
    from retina_deploy.runtime.serve.runner import run_server

    _check_model(args.model)
    cfg = ServeConfig(**_given(args, (*_SERVE_FIELDS, "drain_timeout_s")))
    logging.basicConfig(level=logging.INFO, format="%(levelname)s: %(message)s")

    # serve runs runtime models only (its --device is a GPU index and its auto the runtime's: the CUDA
    # provider where installed), so it opens them with Detector.load, not inference.open_model
    def load() -> Detector:
        return Detector.load(args.model, backend=args.backend, device=args.device, num_threads=args.threads)

    where = _given(args, ("host", "port"))
    return run_server(load, cfg, announce=lambda line: print(line, flush=True), **where)


def add_serve(sub) -> argparse.ArgumentParser:
    from retina_deploy.runtime.backends import BACKENDS  # the runtime's names: serve runs no checkpoints

    help_ = "Serve a model over HTTP with dynamic batching, health checks and Prometheus metrics."
    p = add_verb(sub, "serve", help_, run_serve)
    p.add_argument("model", help=".onnx, .engine, or triton://host:port/model")
    p.add_argument(
        "--host", help=LibraryDefault("address to listen on (0.0.0.0: all; never empty)", f"{_RUNNER}:run_server.host")
    )
    p.add_argument(
        "--port", type=_port, help=LibraryDefault("TCP port (0: any free one, printed)", f"{_RUNNER}:run_server.port")
    )
    cfg = f"{_SERVE}:ServeConfig"
    helps = {
        "max_batch": (
            "most images per model batch",
            _positive_int,
            lambda v: "the model's maximum" if v is None else v,
        ),
        "max_delay_ms": ("longest wait for a batch to fill" + _at_most("max_delay_ms"), _non_negative, str),
        "max_queue": ("images waiting; more get 503 with Retry-After", _positive_int, str),
        "workers": ("threads that decode and preprocess images", _positive_int, str),
        "max_body_mb": ("largest request body in MiB (413 above)" + _at_most("max_body_mb"), _positive, str),
        "max_images": ("most images in one multipart request", _positive_int, str),
        "timeout_s": ("seconds a request may wait for its result (504 after)" + _at_most("timeout_s"), _positive, str),
    }
    for field, (text, type_, fmt) in helps.items():
        flag = "--timeout" if field == "timeout_s" else "--" + field.replace("_", "-")
        p.add_argument(flag, dest=field, type=type_, help=LibraryDefault(text, f"{cfg}.{field}", fmt))
    p.add_argument(
        "--drain-timeout",
        dest="drain_timeout_s",
        type=_non_negative,
        help=LibraryDefault(
            "on SIGTERM, seconds to finish the requests in flight (then 503)" + _at_most("drain_timeout_s"),
            f"{cfg}.drain_timeout_s",
        ),
    )
    p.add_argument(
        "--backend",
        default="auto",
        choices=BACKENDS,
        help="runtime backend (auto: from the file kind and the engine manifest)",
    )
    p.add_argument("--device", type=int, default=0, help="GPU index for CUDA / TensorRT (default: 0)")
    p.add_argument("--threads", type=_positive_int, help="ONNX Runtime / OpenVINO threads (default: theirs)")
    return p


# -- triton-repo ---------------------------------------------------------------------------------

_REPO_FIELDS = ("name", "max_batch", "instances", "kind", "queue_delay_us")


def run_triton_repo(args) -> int:
    from retina_deploy.export.triton_repo import TritonRepoConfig, write_triton_repo

    cfg = TritonRepoConfig(overwrite=args.overwrite, **_given(args, _REPO_FIELDS))
    result = write_triton_repo(Path(args.model), Path(args.out_dir), cfg)
    print(f"wrote {result.config_path} ({result.platform}, max_batch_size {result.max_batch})")
    print(f"start: {result.command}")
    return 0


def add_triton_repo(sub) -> argparse.ArgumentParser:
    help_ = "Write a Triton Inference Server model repository for an .onnx or .engine file."
    p = add_verb(sub, "triton-repo", help_, run_triton_repo)
    p.add_argument("model", help=".onnx (onnxruntime_onnx) or .engine built by TensorRT (tensorrt_plan)")
    p.add_argument("out_dir", help="repository folder (created if missing; may hold other models)")
    cfg = "retina_deploy.export.triton_repo:TritonRepoConfig"
    p.add_argument("--name", help=LibraryDefault("model name in the repository and in triton:// URLs", f"{cfg}.name"))
    p.add_argument(
        "--max-batch",
        type=_positive_int,
        help=LibraryDefault("Triton's max_batch_size", f"{cfg}.max_batch", lambda v: v or "the model's maximum"),
    )
    p.add_argument(
        "--instances", type=_positive_int, help=LibraryDefault("model instances per GPU (or CPU)", f"{cfg}.instances")
    )
    p.add_argument(
        "--kind", choices=["gpu", "cpu"], help=LibraryDefault("instance kind (engines: gpu only)", f"{cfg}.kind")
    )
    p.add_argument(
        "--queue-delay-us",
        type=_int_at_least(0),
        help=LibraryDefault("dynamic batching: longest wait to fill a batch", f"{cfg}.queue_delay_us"),
    )
    p.add_argument("--overwrite", action="store_true", help="replace the model's folder if it exists")
    return p

"""The ``serve`` and ``triton-repo`` verbs (parse, validate, call ``run_server`` / ``write_triton_repo``)."""

from __future__ import annotations

import argparse
import math
from pathlib import Path

from retina_deploy.cli_common import HelpFormatter
from retina_deploy.errors import RetinaDeployError

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


def run_serve(args) -> int:
    import logging

    from retina_deploy.runtime.detector import Detector
    from retina_deploy.runtime.serve import ServeConfig, run_server

    _check_model(args.model)
    cfg = ServeConfig(
        max_batch=args.max_batch,
        max_delay_ms=args.max_delay_ms,
        max_queue=args.max_queue,
        workers=args.workers,
        max_body_mb=args.max_body_mb,
        max_images=args.max_images,
        timeout_s=args.timeout,
        drain_timeout_s=args.drain_timeout,
    )
    logging.basicConfig(level=logging.INFO, format="%(levelname)s: %(message)s")

    def load() -> Detector:
        return Detector.load(args.model, backend=args.backend, device=args.device, num_threads=args.threads)

    return run_server(load, cfg, host=args.host, port=args.port, announce=lambda line: print(line, flush=True))


def add_serve(sub) -> argparse.ArgumentParser:
    help_ = "Serve a model over HTTP with dynamic batching, health checks and Prometheus metrics."
    p = sub.add_parser(name="serve", help=help_, description=help_, formatter_class=HelpFormatter)
    p.set_defaults(func=run_serve)
    p.add_argument("model", help=".onnx, .engine, or triton://host:port/model")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0: every interface)")
    p.add_argument("--port", type=_port, default=8080, help="TCP port (0: any free port, printed at start)")
    p.add_argument("--max-batch", type=_positive_int, help="most images per model batch (default: the model's max)")
    p.add_argument("--max-delay-ms", type=_non_negative, default=5.0, help="longest wait for a batch to fill")
    p.add_argument("--max-queue", type=_positive_int, default=64, help="images waiting; more get 503 + Retry-After")
    p.add_argument("--workers", type=_positive_int, default=2, help="threads decoding and preprocessing images")
    p.add_argument("--max-body-mb", type=_positive, default=16.0, help="largest request body (413 above)")
    p.add_argument("--max-images", type=_positive_int, default=16, help="most images in one multipart request")
    p.add_argument("--timeout", type=_positive, default=30.0, help="seconds a request may wait (504 after)")
    p.add_argument("--drain-timeout", type=_non_negative, default=30.0, help="SIGTERM: seconds to finish in-flight")
    p.add_argument(
        "--backend",
        default="auto",
        choices=["auto", "ort-cpu", "ort-cuda", "ort-tensorrt", "tensorrt", "tensorrt-rtx", "triton"],
        help="runtime backend (auto: from the file kind and the engine manifest)",
    )
    p.add_argument("--device", type=int, default=0, help="GPU index for CUDA / TensorRT (default: 0)")
    p.add_argument("--threads", type=_positive_int, help="ONNX Runtime intra-op threads (default: its own)")
    return p


# -- triton-repo ---------------------------------------------------------------------------------


def run_triton_repo(args) -> int:
    from retina_deploy.export.triton_repo import TritonRepoConfig, write_triton_repo

    cfg = TritonRepoConfig(
        name=args.name,
        max_batch=args.max_batch,
        instances=args.instances,
        kind=args.kind,
        queue_delay_us=args.queue_delay_us,
        overwrite=args.overwrite,
    )
    result = write_triton_repo(Path(args.model), Path(args.out_dir), cfg)
    print(f"wrote {result.config_path} ({result.platform}, max_batch_size {result.max_batch})")
    print(f"start: {result.command}")
    return 0


def add_triton_repo(sub) -> argparse.ArgumentParser:
    help_ = "Write a Triton Inference Server model repository for an .onnx or .engine file."
    p = sub.add_parser(name="triton-repo", help=help_, description=help_, formatter_class=HelpFormatter)
    p.set_defaults(func=run_triton_repo)
    p.add_argument("model", help=".onnx (onnxruntime_onnx) or .engine built by TensorRT (tensorrt_plan)")
    p.add_argument("out_dir", help="repository folder (created if missing; may hold other models)")
    p.add_argument("--name", default="retinanet", help="model name in the repository and in triton:// URLs")
    p.add_argument("--max-batch", type=_positive_int, help="Triton's max_batch_size (default: the model's max)")
    p.add_argument("--instances", type=_positive_int, default=1, help="model instances per GPU (or on the CPU)")
    p.add_argument("--kind", choices=["gpu", "cpu"], default="gpu", help="instance kind (engines: gpu only)")
    p.add_argument(
        "--queue-delay-us", type=_int_at_least(0), default=500, help="dynamic batching: longest wait to fill a batch"
    )
    p.add_argument("--overwrite", action="store_true", help="replace the model's folder if it exists")
    return p

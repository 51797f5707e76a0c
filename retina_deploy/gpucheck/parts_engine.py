"""TensorRT parts: engines built per precision, ``Detector`` on each (CUDA graphs off and on), ``bench``, C++.

For every installed flavour (``tensorrt``: the file exported with ``--nms onnx``; ``tensorrt-rtx``:
``--nms none``, as it cannot build NonMaxSuppression), each precision of the plan is built with
``build_engine`` (FP16 / INT8 baked into the ONNX file, the network- and inspector-level precision
checks), then run through ``Detector.load`` and compared with ONNX Runtime CPU running the file the
engine was built from. The ``bench`` verb and the C++ runtime are used only where they exist.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

from retina_deploy.gpucheck.context import CheckContext, require_modules
from retina_deploy.gpucheck.parity import identical, match_detections, require_parity
from retina_deploy.gpucheck.parts_ort import TIMED_RUNS, detector_latency, reference_detections
from retina_deploy.gpucheck.report import Clock, Disagree, PartRecord, Skip, run_step

BUILD_ESTIMATE_S = {"fp32": 20, "fp16": 25, "int8": 40}
REPO = Path(__file__).resolve().parents[2]


def run_bounded(
    cmd: list[str], timeout: float, what: str, cwd: Path | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    """Run ``cmd`` in its own process group; past ``timeout`` the whole group (compilers included) is killed
    and the step is skipped as out of time."""
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=cwd, env=env, start_new_session=True
    )
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired as e:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        raise Skip(f"out of time: {what} still running after {timeout:.0f} s") from e
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def build_one(ctx: CheckContext, onnx: Path, flavour: str, precision: str) -> dict[str, Any]:
    """``build_engine`` of ``onnx`` in ``precision``; the engine and its baked ONNX file go in ctx.artifacts."""
    from retina_deploy.calib.int8 import CalibConfig
    from retina_deploy.calib.quantize import Int8Config
    from retina_deploy.export.engine.builder import EngineBuildConfig, build_engine

    plan = ctx.plan
    int8 = None
    if precision == "int8":
        images = ctx.shapes(max(plan.engine_size), max(plan.images, plan.calib_num)) / "images"
        int8 = Int8Config(calib_images=images, calib=CalibConfig(num=plan.calib_num, batch=min(8, plan.calib_num)))
    cfg = EngineBuildConfig(
        precision=precision,
        batch=plan.engine_batch,
        flavour=flavour,
        int8=int8,
        optimization_level=plan.engine_opt_level,
        timing_cache=ctx.out / "engines" / f"{flavour}.timing-cache",
        precision_onnx=ctx.out / "engines" / f"{flavour}-{onnx.stem}.{precision}.onnx",
    )
    result = build_engine(onnx, ctx.out / "engines" / f"{flavour}-{precision}.engine", cfg)
    ctx.artifacts[f"engine-{flavour}-{precision}"] = result
    return {
        "build_s": round(result.seconds, 1),
        "engine_mib": round(result.engine_path.stat().st_size / 2**20, 2),
        "built_from": result.onnx_path.name,
        "precision_check": result.precision_check,
        "inspector": result.precision_check.get("engine", {}).get("result"),
        "notes": list(result.notes),
    }


def _detect_twice(engine: Path, images, graphs: bool, runs: int) -> tuple[list, list, dict[str, Any]]:
    """Two ``detect`` calls (with graphs, the second replays the graph captured in the first) and latency."""
    from retina_deploy.runtime import Detector

    with Detector.load(engine, cuda_graphs=graphs) as detector:
        first = detector.detect(images)
        second = detector.detect(images)
        latency = detector_latency(detector, images, runs)
        status = getattr(detector.backend, "graph_status", None)
        if graphs and status is not None:  # per batch size seen: "captured", "built-in" or why not
            seen = {b: status(b) for b in range(detector.min_batch, detector.max_batch + 1)}
            latency["cuda_graphs_per_batch"] = {b: s for b, s in seen.items() if s != "not captured yet"}
    return first, second, latency


def run_engine(ctx: CheckContext, flavour: str, precision: str, images) -> dict[str, Any]:
    """Detector on the engine, CUDA graphs off and on, against ONNX Runtime CPU on the engine's ONNX file."""
    result = ctx.artifacts[f"engine-{flavour}-{precision}"]
    ref = reference_detections(result.onnx_path, images)
    runs = TIMED_RUNS[ctx.mode]
    plain, plain_again, latency_plain = _detect_twice(result.engine_path, images, False, runs)
    graph_first, graph_replay, latency_graphs = _detect_twice(result.engine_path, images, True, runs)
    row = {**match_detections(ref, plain), "latency": latency_plain, "latency_cuda_graphs": latency_graphs}
    # Same engine, same kernels: graph replay and a second run must give the confident detections again;
    # bitwise equality of every detection is recorded, not required (a tactic may accumulate atomically).
    for name, other in (("graph_replay", graph_replay), ("graph_first_run", graph_first), ("repeat", plain_again)):
        m = match_detections(plain, other)
        row[f"{name}_bitwise_equal"] = identical(plain, other)
        if m["matched"] != m["compared"] or m["max_score_diff"] > 1e-3:
            raise Disagree(f"{name} differs from the plain run (CUDA graphs off): {m}")
    require_parity(row, precision, f"the {flavour} {precision} engine")
    return row


def bench_help() -> str | None:
    """``retina-deploy bench --help`` where this checkout has the verb, else None."""
    try:
        done = run_bounded([sys.executable, "-m", "retina_deploy.cli", "bench", "--help"], 60, "bench --help")
    except Skip:
        return None
    return done.stdout if done.returncode == 0 else None


def bench_command(help_text: str, engines: list[Path], batches: list[int], out: Path) -> list[str]:
    """The bench command line: short timings, on the GPU, with graphs (each option only if the verb has it)."""
    cmd = [sys.executable, "-m", "retina_deploy.cli", "bench", *map(str, engines), "--batch", *map(str, batches)]
    optional = (("--warmup-s", "1"), ("--duration-s", "2"), ("--device", "cuda:0"), ("--cuda-graphs", None))
    for flag, value in optional:
        if flag in help_text:
            cmd += [flag] if value is None else [flag, value]
    return [*cmd, "--json", str(out)]


def run_bench(ctx: CheckContext, help_text: str, engines: list[Path], flavour: str, clock: Clock) -> dict[str, Any]:
    """``retina-deploy bench ENGINES --batch MIN MAX --json`` in a subprocess; its report (when small)."""
    out = ctx.out / "engines" / f"bench-{flavour}.json"
    batches = sorted({ctx.plan.engine_batch[0], ctx.plan.engine_batch[2]})
    cmd = bench_command(help_text, engines, batches, out)
    done = run_bounded(cmd, max(10.0, min(180.0, clock.left())), "bench", cwd=ctx.out)
    if done.returncode != 0:
        raise RuntimeError(f"bench exit {done.returncode}: {(done.stderr or done.stdout).strip()[-600:]}")
    text = out.read_text(encoding="utf-8") if out.is_file() else ""
    row: dict[str, Any] = {"command": cmd[2:], "json": str(out), "stdout_tail": done.stdout.strip()[-800:]}
    if 0 < len(text) < 50_000:
        row["report"] = json.loads(text)
    return row


def _can_run_engines(ctx: CheckContext, flavour: str) -> str | None:
    """None when ``flavour``'s engines can run here (a GPU it supports and cuda-python), else why not."""
    import torch

    if not torch.cuda.is_available():
        return "no GPU to run an engine on (builds only)"
    if importlib_find("cuda") is None:
        return "missing package: cuda-python (the TensorRT backend's CUDA bindings)"
    if flavour == "tensorrt-rtx":
        from retina_deploy.runtime.backends.tensorrt import import_tensorrt
        from retina_deploy.runtime.backends.trt_support import rtx_capabilities

        trt = import_tensorrt(flavour)
        supported, capability = rtx_capabilities(trt), "{}.{}".format(*torch.cuda.get_device_capability(0))
        if supported and capability not in supported:
            return (
                f"TensorRT-RTX {trt.__version__} does not run on compute capability {capability}"
                f" (it supports {', '.join(supported)}): engines built, not run"
            )
    return None


def importlib_find(name: str):
    import importlib.util

    return importlib.util.find_spec(name)


def part_trt_engines(ctx: CheckContext, rec: PartRecord, clock: Clock) -> None:
    """Build, check and run FP32/FP16/INT8 engines for every installed TensorRT flavour."""
    require_modules("torch", "retina_deploy.runtime")
    if not ctx.dry_run:
        ctx.require_gpu()
    from retina_deploy.runtime.backends.tensorrt import installed_flavours

    flavours = installed_flavours()
    if not flavours:
        raise Skip("missing package: tensorrt + cuda-python (or tensorrt-rtx-cu13): pip install tensorrt cuda-python")
    require_modules("onnx", "onnxslim", "onnxruntime", "safetensors", "retina_deploy.export")
    images = ctx.test_images()
    help_text = None
    for flavour in flavours:
        cannot_run = _can_run_engines(ctx, flavour)
        if not cannot_run and help_text is None:
            help_text = bench_help()
        clock.require(30, f"exporting for {flavour}")
        onnx = ctx.onnx("none" if flavour == "tensorrt-rtx" else "onnx")
        built = []
        for precision in ctx.plan.engine_precisions:
            clock.require(BUILD_ESTIMATE_S[precision], f"{flavour} {precision} engine")
            row = run_step(
                rec, f"{flavour}/{precision}/build", lambda f=flavour, p=precision, o=onnx: build_one(ctx, o, f, p)
            )
            if row["status"] != "ok":
                continue
            built.append(ctx.artifacts[f"engine-{flavour}-{precision}"].engine_path)
            if cannot_run:
                rec.figures[f"{flavour}/{precision}/detector"] = {"status": "skipped", "reason": cannot_run}
                continue
            clock.require(10, f"{flavour} {precision} Detector")
            run_step(
                rec, f"{flavour}/{precision}/detector", lambda f=flavour, p=precision: run_engine(ctx, f, p, images)
            )
        if built and not cannot_run and help_text is not None:
            clock.require(20, f"bench on the {flavour} engines")
            run_step(rec, f"{flavour}/bench", lambda f=flavour, e=built, h=help_text: run_bench(ctx, h, e, f, clock))
        else:
            why = cannot_run or ("no engine built" if not built else "not available: no `retina-deploy bench` verb")
            rec.figures[f"{flavour}/bench"] = {"status": "skipped", "reason": why}
    rec.summary = _engine_summary(rec)


def _engine_summary(rec: PartRecord) -> str:
    parts = []
    for key, row in rec.figures.items():
        if key.endswith("/build") and row.get("status") == "ok":
            name = key.removesuffix("/build")
            run = rec.figures.get(f"{name}/detector", {})
            graphs = (run.get("latency_cuda_graphs") or {}) if run.get("status") == "ok" else {}
            ms, status = graphs.get("infer_b1_ms"), (graphs.get("cuda_graphs_per_batch") or {}).get(1, "")
            label = "CUDA graph" if status.startswith(("captured", "built-in")) else "graphs asked, none captured"
            parts.append(f"{name} built {row['build_s']} s" + (f", b1 {ms} ms ({label})" if ms is not None else ""))
    return "; ".join(parts)


def part_cpp_trt(ctx: CheckContext, rec: PartRecord, clock: Clock) -> None:
    """Configure, build and test runtime/cpp with CMake in the output folder, where the checkout has it.

    A configure failure (missing nlohmann_json, OpenSSL, a compiler) skips the part with CMake's reason;
    a build or test failure is an error. Without TensorRT's headers (pip wheels ship none; set
    TENSORRT_ROOT) only the engine-independent core is built, and the part says so.
    """
    src = REPO / "runtime" / "cpp"
    if not (src / "CMakeLists.txt").is_file():
        raise Skip("not available: runtime/cpp/CMakeLists.txt is not in this checkout")
    if ctx.dry_run:
        raise Skip("not built in the CPU dry run (minutes on a small CPU; its CPU tests cover the core)")
    ctx.require_gpu()
    cmake = shutil.which("cmake")
    if cmake is None:
        raise Skip("cmake not found on PATH (pip install cmake, or the system package)")
    build = ctx.out / "cpp-build"
    jobs = str(os.cpu_count() or 2)
    clock.require(10, "cmake configure")
    configure = [cmake, "-S", str(src), "-B", str(build), "-DCMAKE_BUILD_TYPE=Release"]
    log = _run_logged(rec, "configure", configure, clock, build)
    if log is None:
        raise Skip(f"CMake could not configure runtime/cpp: {rec.figures['configure']['log_tail'][-300:]}")
    trt_on = "TensorRT backend ON" in log
    rec.figures["tensorrt_backend"] = trt_on
    clock.require(10, "cmake build")
    if _run_logged(rec, "build", [cmake, "--build", str(build), "-j", jobs], clock, build) is None:
        raise RuntimeError(f"runtime/cpp does not build (log: {build / 'build.log'})")
    ctest = shutil.which("ctest")
    if ctest and (build / "CTestTestfile.cmake").is_file():
        clock.require(10, "ctest")
        if _run_logged(rec, "ctest", [ctest, "--output-on-failure", "-j", jobs], clock, build, cwd=build) is None:
            raise RuntimeError(f"runtime/cpp tests fail (log: {build / 'ctest.log'})")
    if not trt_on:
        raise Skip("built and tested the core only: CMake found no TensorRT headers/library (set TENSORRT_ROOT)")
    rec.summary = "TensorRT backend built" + (", tests pass" if "ctest" in rec.figures else "")
    # C++ vs Python detections on one engine (retina_infer --json vs Detector), CUDA graphs off and on.
    parity = REPO / "tests" / "runtime" / "cpp" / "test_cpp_trt_parity.py"
    if parity.is_file() and importlib.util.find_spec("pytest") is not None:
        clock.require(60, "C++ TensorRT parity")
        cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(parity)]
        env = {**os.environ, "RETINA_INFER": str(build / "retina_infer")}
        done = run_bounded(cmd, clock.left(), "the C++ TensorRT parity test", cwd=REPO, env=env)
        last = (done.stdout.strip().splitlines() or [""])[-1]
        rec.figures["parity"] = {"exit": done.returncode, "log_tail": (done.stdout + done.stderr).strip()[-1500:]}
        if done.returncode == 1:
            raise Disagree(f"C++ and Python detections differ on the engine: {done.stdout.strip()[-300:]}")
        if done.returncode != 0:
            raise RuntimeError(f"the C++ TensorRT parity test did not run (exit {done.returncode}): {last}")
        rec.summary += f"; C++ vs Python detections: {last}"


def _run_logged(
    rec: PartRecord, name: str, cmd: list[str], clock: Clock, build: Path, cwd: Path | None = None
) -> str | None:
    """Run one CMake step with the budget as timeout, its log in ``build/NAME.log`` and its tail in the figures.

    Returns the output, or None when the step failed.
    """
    build.mkdir(parents=True, exist_ok=True)
    done = run_bounded(cmd, max(5.0, clock.left()), name, cwd=cwd)
    output = done.stdout + done.stderr
    (build / f"{name}.log").write_text(output, encoding="utf-8")
    rec.figures[name] = {"exit": done.returncode, "log_tail": output.strip()[-1500:]}
    return output if done.returncode == 0 else None

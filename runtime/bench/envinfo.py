"""What machine a benchmark ran on, whether it was busy, and what its peak is (torch-free).

``environment()`` gathers CPU (model, SIMD flags, cores), GPUs (``nvidia-smi``: name, driver, CUDA,
clocks, power), Jetson power mode (``nvpmodel -q``), library versions. ``machine_load()`` samples
``/proc`` for a short interval: the share of CPU time other processes used and the busiest of them.
``peak_rss_reset()`` / ``peak_rss_bytes()`` bracket a measurement's peak host memory.
Every probe degrades to ``None`` where its tool or file is missing (macOS, containers, Jetson).
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import os
import platform
import re
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

from retina_deploy.runtime.post.native import host_post

BUSY_THRESHOLD = 0.25  # share of all CPUs' time used by other processes that makes a result suspect
CPU_FLAGS = (
    "avx2",
    "fma",
    "avx512f",
    "avx512_vnni",
    "avx_vnni",
    "avx512_bf16",
    "amx_bf16",
    "amx_int8",
    "asimddp",
    "bf16",
)
VERSIONS = ("numpy", "onnxruntime", "onnxruntime-gpu", "onnx", "tensorrt", "tensorrt-rtx-cu13", "cuda-python", "torch")
_SMI_FIELDS = (
    "name,driver_version,clocks.sm,clocks.max.sm,clocks.mem,power.draw,power.limit,pstate,memory.total,utilization.gpu"
)


def _run(cmd: list[str], timeout: float = 10.0) -> str | None:
    """stdout of ``cmd``, or None when it is absent, fails or hangs."""
    if shutil.which(cmd[0]) is None:
        return None
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout if out.returncode == 0 else None


def cpu_info() -> dict[str, Any]:
    """{model, arch, flags (those of CPU_FLAGS present), logical_cpus, physical_cores, usable_cpus}."""
    text = ""
    with contextlib.suppress(OSError):
        text = Path("/proc/cpuinfo").read_text()
    model = _first(r"^(?:model name|Model|Hardware)\s*:\s*(.+)$", text) or platform.processor() or platform.machine()
    flags_line = _first(r"^(?:flags|Features)\s*:\s*(.+)$", text) or ""
    present = set(flags_line.split())
    cores = {m for m in re.findall(r"physical id\s*:\s*(\d+)\n(?:.*\n)*?core id\s*:\s*(\d+)", text)}
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {
        "model": model.strip(),
        "arch": platform.machine(),
        "flags": [f for f in CPU_FLAGS if f in present],
        "logical_cpus": os.cpu_count(),
        "physical_cores": len(cores) or None,
        "usable_cpus": usable,
    }


def gpu_info() -> list[dict[str, Any]]:
    """One dict per GPU from ``nvidia-smi`` (empty where it is absent): name, driver, CUDA, clocks in MHz,
    power in W, performance state, memory in MiB, utilisation in %."""
    out = _run(["nvidia-smi", f"--query-gpu={_SMI_FIELDS}", "--format=csv,noheader,nounits"])
    if not out:
        return []
    cuda = _first(r"CUDA Version:\s*([\d.]+)", _run(["nvidia-smi"]) or "")
    keys = [k.replace(".", "_") for k in _SMI_FIELDS.split(",")]
    gpus = []
    for line in out.strip().splitlines():
        values = [v.strip() for v in line.split(",")]
        record = {k: _number(v) for k, v in zip(keys, values, strict=False)}
        record["cuda"] = cuda
        gpus.append(record)
    return gpus


def cuda_device_count() -> int | None:
    """Visible CUDA devices: cuda-python's count, else ``nvidia-smi -L``, else 0 on a machine with
    neither tool nor a Jetson GPU node; None when it cannot be told."""
    with contextlib.suppress(Exception):
        from cuda.bindings import runtime as cudart

        err, count = cudart.cudaGetDeviceCount()
        if int(err) == 0:
            return int(count)
        return 0
    listing = _run(["nvidia-smi", "-L"])
    if listing is not None:
        return sum(1 for line in listing.splitlines() if line.startswith("GPU "))
    if Path("/dev/nvhost-gpu").exists() or Path("/etc/nv_tegra_release").exists():
        return None  # a Jetson without cuda-python: assume its one GPU is there
    return 0


def jetson_info() -> dict[str, Any] | None:
    """L4T release and ``nvpmodel -q`` power mode on a Jetson; None elsewhere."""
    release = None
    with contextlib.suppress(OSError):
        release = Path("/etc/nv_tegra_release").read_text().splitlines()[0].strip()
    if release is None:
        return None
    mode = _run(["nvpmodel", "-q"])
    return {"l4t": release, "nvpmodel": " ".join(mode.split()) if mode else None}


def versions() -> dict[str, str]:
    """Installed versions of the libraries a result depends on (absent ones left out)."""
    found = {}
    for name in VERSIONS:
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            found[name] = importlib.metadata.version(name)
    if "tensorrt" not in found:  # Jetson: TensorRT comes as a system package, not a wheel
        with contextlib.suppress(ImportError):
            import tensorrt

            found["tensorrt"] = tensorrt.__version__
    return found


def environment() -> dict[str, Any]:
    """Everything above, plus host name, OS and Python."""
    return {
        "host": platform.node(),
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "cpu": cpu_info(),
        "gpus": gpu_info(),
        "jetson": jetson_info(),
        "versions": versions(),
        "host_post": host_post().name,  # --nms none files' top-k + NMS: "cpp" or "numpy" (RETINA_DEPLOY_HOST_POST)
    }


def _proc_cpu_ticks() -> tuple[int, int, dict[int, tuple[str, int]]]:
    """(total ticks of all CPUs, idle ticks, {pid: (name, utime + stime)}) from /proc."""
    fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    ticks = [int(v) for v in fields]
    idle = ticks[3] + (ticks[4] if len(ticks) > 4 else 0)
    procs = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError, ValueError, IndexError):
            stat = Path(entry.path, "stat").read_text()
            name = stat[stat.index("(") + 1 : stat.rindex(")")]
            rest = stat[stat.rindex(")") + 2 :].split()
            procs[int(entry.name)] = (name, int(rest[11]) + int(rest[12]))
    return sum(ticks), idle, procs


def machine_load(interval_s: float = 0.5) -> dict[str, Any] | None:
    """CPU use by other processes over ``interval_s`` (this process idles meanwhile); None without /proc.

    Returns {other_cpu_share: 0..1 of all CPUs' time, busy: share > BUSY_THRESHOLD, loadavg_1m,
    top: [{pid, name, cpu_pct}] of the three busiest other processes (100 = one CPU)}.
    """
    try:
        total0, idle0, procs0 = _proc_cpu_ticks()
        time.sleep(interval_s)
        total1, idle1, procs1 = _proc_cpu_ticks()
    except (OSError, ValueError, IndexError):
        return None
    span = max(total1 - total0, 1)
    me = os.getpid()
    own = procs1.get(me, ("", 0))[1] - procs0.get(me, ("", 0))[1]
    share = max(0.0, (span - (idle1 - idle0) - own) / span)
    ncpu = os.cpu_count() or 1
    per_tick_pct = 100.0 * ncpu / span  # ticks of one process -> % of one CPU
    deltas = [
        (pid, name, (t - procs0[pid][1]) * per_tick_pct)
        for pid, (name, t) in procs1.items()
        if pid in procs0 and pid != me and t > procs0[pid][1]
    ]
    deltas.sort(key=lambda d: -d[2])
    return {
        "other_cpu_share": round(share, 3),
        "busy": share > BUSY_THRESHOLD,
        "loadavg_1m": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
        "top": [{"pid": pid, "name": name, "cpu_pct": round(pct, 1)} for pid, name, pct in deltas[:3]],
    }


def peak_rss_reset() -> bool:
    """Reset this process's peak RSS (Linux ``clear_refs``); False where that is not possible."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def peak_rss_bytes() -> int | None:
    """Peak resident memory of this process since start or the last ``peak_rss_reset``."""
    with contextlib.suppress(OSError):
        match = re.search(r"^VmHWM:\s*(\d+) kB", Path("/proc/self/status").read_text(), re.M)
        if match:
            return int(match.group(1)) * 1024
    with contextlib.suppress(ImportError):
        import resource

        scale = 1 if platform.system() == "Darwin" else 1024
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale
    return None


def gpu_process_memory_bytes(device: int = 0) -> int | None:
    """GPU memory this process holds on ``device`` now (``nvidia-smi``), or None."""
    out = _run(
        ["nvidia-smi", "-i", str(device), "--query-compute-apps=pid,used_memory", "--format=csv,noheader,nounits"]
    )
    if out is None:
        return None
    for line in out.strip().splitlines():
        pid, _, used = line.partition(",")
        if pid.strip() == str(os.getpid()):
            return int(float(used)) * 2**20
    return 0


def _first(pattern: str, text: str) -> str | None:
    match = re.search(pattern, text, re.M)
    return match.group(1) if match else None


def _number(value: str) -> Any:
    with contextlib.suppress(ValueError):
        return float(value) if "." in value else int(value)
    return None if value in ("[N/A]", "N/A", "[Not Supported]") else value

"""The environment part: the GPU (name, memory, driver, CUDA, compute capability, clocks) and package versions."""

from __future__ import annotations

import importlib
import importlib.metadata
import platform
import shutil
import subprocess
import sys
from typing import Any

from retina_deploy.gpucheck.context import CheckContext
from retina_deploy.gpucheck.report import Clock, PartRecord, Skip

NVIDIA_SMI_FIELDS = (
    "name",
    "driver_version",
    "memory.total",
    "clocks.sm",
    "clocks.max.sm",
    "clocks.mem",
    "clocks.max.mem",
    "power.limit",
    "temperature.gpu",
    "persistence_mode",
)
DISTRIBUTIONS = (
    "torch",
    "torchvision",
    "numpy",
    "pillow",
    "safetensors",
    "onnx",
    "onnxslim",
    "onnxruntime",
    "onnxruntime-gpu",
    "tensorrt",
    "tensorrt-rtx-cu13",
    "cuda-python",
    "tqdm",
)


def package_versions() -> dict[str, str | None]:
    """Installed distribution versions (None: not installed), plus TensorRT's own module versions."""
    versions: dict[str, str | None] = {"python": platform.python_version()}
    for dist in DISTRIBUTIONS:
        try:
            versions[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            versions[dist] = None
    for module in ("tensorrt", "tensorrt_rtx"):
        if importlib.util.find_spec(module) is not None:
            try:
                versions[f"{module} (module)"] = str(importlib.import_module(module).__version__)
            except Exception as e:  # a broken install is itself worth reporting
                versions[f"{module} (module)"] = f"import failed: {type(e).__name__}: {str(e)[:120]}"
    return versions


def nvidia_smi() -> dict[str, str] | str:
    """nvidia-smi's view of GPU 0 (clocks in MHz, memory in MiB, power in W), or why it is unavailable."""
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return "nvidia-smi not found (Jetson: use tegrastats / jetson_clocks --show)"
    cmd = [exe, f"--query-gpu={','.join(NVIDIA_SMI_FIELDS)}", "--format=csv,noheader,nounits", "--id=0"]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=15, check=False)
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"nvidia-smi failed: {e}"
    if done.returncode != 0:
        return f"nvidia-smi exit {done.returncode}: {done.stderr.strip()[:200]}"
    values = [v.strip() for v in done.stdout.strip().splitlines()[0].split(",")]
    return dict(zip(NVIDIA_SMI_FIELDS, values, strict=False))


def torch_gpu() -> dict[str, Any]:
    """torch's view of device 0: name, memory, capability, SMs, CUDA and cuDNN versions, bf16 support."""
    import torch

    props = torch.cuda.get_device_properties(0)
    return {
        "name": props.name,
        "memory_gib": round(props.total_memory / 2**30, 2),
        "compute_capability": f"{props.major}.{props.minor}",
        "multiprocessors": props.multi_processor_count,
        "device_count": torch.cuda.device_count(),
        "torch_cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version(),
        "bf16_supported": bool(torch.cuda.is_bf16_supported()),
        "nccl": _nccl_version(),
    }


def _nccl_version() -> str | None:
    import torch
    import torch.distributed as dist

    if not dist.is_available() or not dist.is_nccl_available():
        return None
    version = torch.cuda.nccl.version()
    return ".".join(map(str, version)) if isinstance(version, tuple) else str(version)


def cuda_driver_version() -> str | None:
    """The CUDA version the driver supports (cuda-python), e.g. "13.0"; None without cuda-python."""
    try:
        from retina_deploy.runtime.backends.cuda_mem import import_cudart

        err, version = import_cudart().cudaDriverGetVersion()
    except Exception:  # optional figure: cuda-python missing or no driver
        return None
    if int(err) != 0 or version == 0:  # 0: no driver loaded
        return None
    return f"{version // 1000}.{(version % 1000) // 10}"


def part_env(ctx: CheckContext, rec: PartRecord, clock: Clock) -> None:
    """Record versions always; the GPU's figures when torch sees one (else Skip with the reason)."""
    rec.figures["packages"] = package_versions()
    rec.figures["platform"] = {"machine": platform.machine(), "system": platform.platform(), "argv": sys.argv}
    rec.figures["nvidia_smi"] = nvidia_smi()
    rec.figures["cuda_driver"] = cuda_driver_version()
    if importlib.util.find_spec("torch") is None:
        raise Skip("missing package: torch")
    import torch

    if not torch.cuda.is_available():
        raise Skip(f"no CUDA GPU (torch {torch.__version__}, built for CUDA {torch.version.cuda}): versions only")
    gpu = torch_gpu()
    rec.figures["gpu"] = gpu
    smi = rec.figures["nvidia_smi"]
    clocks = f", SM {smi.get('clocks.sm')}/{smi.get('clocks.max.sm')} MHz" if isinstance(smi, dict) else ""
    rec.summary = (
        f"{gpu['name']} ({gpu['memory_gib']} GiB, sm {gpu['compute_capability']}{clocks}), torch"
        f" {torch.__version__}, TensorRT {rec.figures['packages'].get('tensorrt') or 'none'},"
        f" ORT {rec.figures['packages'].get('onnxruntime-gpu') or rec.figures['packages'].get('onnxruntime')}"
    )

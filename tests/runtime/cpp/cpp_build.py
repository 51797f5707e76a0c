"""Builds runtime/cpp (CMake, Release) under .cpp-build/ for the tests that drive the C++ runtime.

``make test`` builds .cpp-build/release before pytest runs, so here that build is usually a no-op.
Where CMake or the C++ dependencies are missing, the tests skip and say how to install them.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[3]
SOURCE = REPO / "runtime" / "cpp"


def configure(name: str, args: tuple[str, ...] = ()) -> tuple[Path, str]:
    """Configure .cpp-build/<name> (once) with ``args``; returns (build folder, configure output)."""
    cmake = shutil.which("cmake")
    if cmake is None:
        pytest.skip("cmake not found; `make cpp-deps` installs the C++ toolchain")
    build = REPO / ".cpp-build" / name
    log = build.with_name(name + ".configure.log")
    if (build / "CMakeCache.txt").is_file() and log.is_file():
        return build, log.read_text()
    cmd = [cmake, "-S", str(SOURCE), "-B", str(build), "-DCMAKE_BUILD_TYPE=Release", *args]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        shutil.rmtree(build, ignore_errors=True)
        last = (done.stderr.strip().splitlines() or ["?"])[-1]
        pytest.skip(f"runtime/cpp does not configure here ({last}); `make cpp-deps` installs its dependencies")
    log.write_text(done.stdout + done.stderr)
    return build, done.stdout + done.stderr


def build_target(target: str, name: str = "release", args: tuple[str, ...] = ()) -> Path:
    """Configure (once) and build ``target``; returns the executable's path."""
    build, log = configure(name, args)
    if target == "retina_infer" and "retina_infer not built" in log:
        pytest.skip("retina_infer is not built here (stb not found; `make cpp-deps` installs it)")
    done = subprocess.run(
        ["cmake", "--build", str(build), "--target", target, "-j", "2"], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, f"building {target} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    path = build / "tests" / target if (build / "tests" / target).is_file() else build / target
    assert path.is_file(), f"{target} not found under {build}"
    return path


def wheel_cuda_args() -> tuple[str, ...]:
    """CMake arguments for the CUDA runtime of the venv's nvidia wheels, when there is no CUDA toolkit."""
    site = Path(sys.prefix) / "lib" / f"python{sys.version_info[0]}.{sys.version_info[1]}" / "site-packages"
    for cu in ("cu13", "cu12"):
        inc, lib = site / "nvidia" / cu / "include", sorted((site / "nvidia" / cu / "lib").glob("libcudart.so.*"))
        if (inc / "cuda_runtime_api.h").is_file() and lib:
            extra = site / "triton" / "backends" / "nvidia" / "include"  # crt/host_defines.h
            return (f"-DRETINA_CUDA_INCLUDE_DIRS={inc};{extra}", f"-DRETINA_CUDART_LIBRARY={lib[0]}")
    return ()

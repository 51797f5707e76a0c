"""The benchmark's environment probes and peak figures (quick: no model involved)."""

import subprocess
import sys

import pytest

from retina_deploy.runtime.bench import envinfo
from retina_deploy.runtime.bench.peak import cpu_peak_probe, gpu_datasheet_peak
from retina_deploy.runtime.post import native


def test_environment_record():
    env = envinfo.environment()
    assert env["cpu"]["logical_cpus"] >= 1 and env["cpu"]["usable_cpus"] >= 1
    assert set(env["cpu"]["flags"]) <= set(envinfo.CPU_FLAGS)
    assert "numpy" in env["versions"]
    assert env["host_post"] == ("cpp" if native.available() else "numpy")
    assert isinstance(env["gpus"], list)


def test_machine_load_and_peak_rss():
    load = envinfo.machine_load(0.05)
    if load is None:
        pytest.skip("no /proc here")
    assert 0.0 <= load["other_cpu_share"] <= 1.0 and load["busy"] == (load["other_cpu_share"] > envinfo.BUSY_THRESHOLD)
    assert len(load["top"]) <= 3
    # In a fresh process: a long-lived one may serve the block from heap pages already resident.
    code = (
        "from retina_deploy.runtime.bench import envinfo\n"
        "envinfo.peak_rss_reset(); before = envinfo.peak_rss_bytes()\n"
        "block = bytearray(64 * 2**20); block[::4096] = b'\\x01' * len(block[::4096])  # touch 64 MiB\n"
        "print(envinfo.peak_rss_bytes() - before)\n"
    )
    grown = int(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout)
    assert grown >= 48 * 2**20


def test_datasheet_peaks():
    assert gpu_datasheet_peak("NVIDIA H100 PCIe", "fp16").flops_per_s == pytest.approx(756e12)
    assert gpu_datasheet_peak("NVIDIA H100 80GB HBM3", "fp16").flops_per_s == pytest.approx(989.4e12)
    assert gpu_datasheet_peak("NVIDIA A100-SXM4-80GB", "fp32").flops_per_s == pytest.approx(19.5e12)
    assert gpu_datasheet_peak("NVIDIA A100-SXM4-80GB", "fp16-emulated").flops_per_s == pytest.approx(19.5e12)
    assert gpu_datasheet_peak("Orin (nvgpu)", "int8") is None  # Jetson: --peak-tflops


@pytest.mark.parametrize("precision", ["fp32", "int8"])
def test_cpu_probe_is_labelled_measured(precision):
    peak = cpu_peak_probe(precision, threads=1, seconds=0.05, n=128)
    assert peak.flops_per_s > 1e8 and peak.source.startswith("measured")

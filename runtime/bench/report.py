"""The bench report: its JSON schema (checked), the text table, and the plot (torch-free; plot needs matplotlib).

Schema ``retina-deploy/bench`` version 1 (times in milliseconds, rates per second, memory in MiB)::

    {
      "schema": "retina-deploy/bench", "schema_version": 1,
      "created": ISO-8601 UTC time, "command": the command line,
      "settings": {"batches": [int], "warmup_s": float, "duration_s": float | null, "iterations": int | null,
                   "device": str, "threads": int | null, "images": str, "cv_warn": float},
      "environment": {"host", "os", "python", "cpu": {...}, "gpus": [...], "jetson": {...} | null,
                      "versions": {...}, "host_post": "cpp" | "numpy" (--nms none files' top-k + NMS),
                      "load_before": {...} | null, "load_after": {...} | null},
      "results": [{
        "model": str, "kind": "checkpoint" | "onnx" | "engine", "backend": str, "precision": str,
        "device": str, "input_size": [H, W], "batch": int, "iterations": int, "warmup_iterations": int,
        "latency_ms": STATS, "images_per_s": float,
        "phases_ms": {"preprocess" | "h2d" | "compute" | "d2h" | "postprocess": mean ms | null},
        "compute_ms": STATS | null,
        "memory": {"host_peak_rss_mib": float | null, "gpu_mib": float | null},
        "flops_per_image": int | null, "flops_source": str | null,
        "achieved_tflops": float | null,      # flops_per_image * batch / mean compute time
        "peak_tflops": float | null, "peak_source": str | null, "fraction_of_peak": float | null,
        "cuda_graphs": null (off) | "captured" | "built-in (...)" | "not captured: WHY",   # optional
        "warnings": [str]
      }],
      "warnings": [str]
    }

STATS = {"n": int, "min", "mean", "median", "p90", "p95", "p99", "max", "std": float, "cv": float (std / mean)}.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

SCHEMA = "retina-deploy/bench"
SCHEMA_VERSION = 1
NUM = (int, float)
STATS_KEYS = {"n": int, **{k: NUM for k in ("min", "mean", "median", "p90", "p95", "p99", "max", "std", "cv")}}
SETTINGS_KEYS = {
    "batches": list,
    "warmup_s": NUM,
    "duration_s": (*NUM, type(None)),
    "iterations": (int, type(None)),
    "device": str,
    "threads": (int, type(None)),
    "images": str,
    "cv_warn": NUM,
}
RESULT_KEYS = {
    "model": str,
    "kind": str,
    "backend": str,
    "precision": str,
    "device": str,
    "input_size": list,
    "batch": int,
    "iterations": int,
    "warmup_iterations": int,
    "latency_ms": dict,
    "images_per_s": NUM,
    "phases_ms": dict,
    "compute_ms": (dict, type(None)),
    "memory": dict,
    "flops_per_image": (int, type(None)),
    "flops_source": (str, type(None)),
    "achieved_tflops": (*NUM, type(None)),
    "peak_tflops": (*NUM, type(None)),
    "peak_source": (str, type(None)),
    "fraction_of_peak": (*NUM, type(None)),
    "warnings": list,
}
REPORT_KEYS = {
    "schema": str,
    "schema_version": int,
    "created": str,
    "command": str,
    "settings": dict,
    "environment": dict,
    "results": list,
    "warnings": list,
}
PHASE_KEYS = ("preprocess", "h2d", "compute", "d2h", "postprocess")


def _check_keys(obj: Any, keys: dict, where: str) -> None:
    if not isinstance(obj, dict):
        raise ValueError(f"{where}: expected an object, got {type(obj).__name__}")
    missing = sorted(keys.keys() - obj.keys())
    if missing:
        raise ValueError(f"{where}: missing {missing}")
    for key, types in keys.items():
        value = obj[key]
        if isinstance(value, bool) or not isinstance(value, types):
            raise ValueError(f"{where}.{key}: {value!r} is not of type {types}")


def validate_report(report: dict) -> None:
    """ValueError naming the first key that breaks the schema above."""
    _check_keys(report, REPORT_KEYS, "report")
    if report["schema"] != SCHEMA or report["schema_version"] != SCHEMA_VERSION:
        raise ValueError(f"report: schema {report['schema']!r} v{report['schema_version']} is not {SCHEMA} v1")
    _check_keys(report["settings"], SETTINGS_KEYS, "settings")
    for key in ("cpu", "gpus", "versions"):
        if key not in report["environment"]:
            raise ValueError(f"environment: missing {key!r}")
    for i, r in enumerate(report["results"]):
        where = f"results[{i}]"
        _check_keys(r, RESULT_KEYS, where)
        _check_keys(r["latency_ms"], STATS_KEYS, f"{where}.latency_ms")
        if r["compute_ms"] is not None:
            _check_keys(r["compute_ms"], STATS_KEYS, f"{where}.compute_ms")
        _check_keys(r["phases_ms"], dict.fromkeys(PHASE_KEYS, (*NUM, type(None))), f"{where}.phases_ms")
        _check_keys(r["memory"], {"host_peak_rss_mib": (*NUM, type(None)), "gpu_mib": (*NUM, type(None))}, where)


def _f(value: float | None, spec: str = ".1f") -> str:
    return "-" if value is None else format(value, spec)


def _columns(rows: list[list[str]], header: list[str]) -> str:
    widths = [max(len(str(c)) for c in col) for col in zip(header, *rows, strict=True)]

    def line(cells) -> str:
        cells = [str(c) for c in cells]
        return "  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths, strict=True)))

    return "\n".join([line(header), line(["-" * w for w in widths]), *(line(r) for r in rows)])


def _graphs_label(result: dict) -> str:
    """The table's label: "CUDA graph" when the batch replayed one, "no CUDA graph" when asked for but not captured."""
    status = result.get("cuda_graphs")
    if status is None:
        return ""
    return ", CUDA graph" if status.startswith(("captured", "built-in")) else ", no CUDA graph"


def format_table(report: dict) -> str:
    """Two aligned tables (latency; phases and efficiency), the environment and the warnings, as text."""
    results = report["results"]
    name = lambda r: f"{r['model']} [{r['backend']}, {r['precision']}{_graphs_label(r)}]"  # noqa: E731
    latency = [
        [name(r), r["batch"], *(_f(r["latency_ms"][k]) for k in ("min", "mean", "median", "p90", "p95", "p99", "max")),
         f"{r['latency_ms']['cv']:.1%}", _f(r["images_per_s"], ".2f")]
        for r in results
    ]  # fmt: skip
    head = ["model [backend, precision]", "batch", "min", "mean", "median", "p90", "p95", "p99", "max", "CV", "img/s"]
    split = []
    for r in results:
        ph = r["phases_ms"]
        gflops = None if r["flops_per_image"] is None else r["flops_per_image"] / 1e9
        frac = r["fraction_of_peak"]
        split.append(
            [name(r), r["batch"], *(_f(ph[k]) for k in PHASE_KEYS), _f(gflops), _f(r["achieved_tflops"], ".3f"),
             _f(r["peak_tflops"], ".3f"), "-" if frac is None else f"{frac:.1%}",
             _f(r["memory"]["host_peak_rss_mib"], ".0f"), _f(r["memory"]["gpu_mib"], ".0f")]
        )  # fmt: skip
    head2 = ["model [backend, precision]", "batch", "pre", "h2d", "compute", "d2h", "post", "GFLOP/img", "TFLOP/s",
             "peak", "of peak", "RSS MiB", "GPU MiB"]  # fmt: skip
    env = report["environment"]
    cpu = env["cpu"]
    lines = [
        "latency per batch, ms (end to end: preprocess + inference + post-processing)",
        _columns(latency, head),
        "",
        "mean ms per phase; FLOPs per image (conv + matmul, 1 MAC = 2 FLOPs); TFLOP/s over the compute phase",
        _columns(split, head2),
        "",
        f"CPU: {cpu['model']} ({cpu['arch']}; {', '.join(cpu['flags']) or 'no listed SIMD flags'}), "
        f"{cpu['physical_cores']} cores / {cpu['logical_cpus']} threads, {cpu['usable_cpus']} usable; "
        f"bench threads: {report['settings']['threads'] or 'default'}",
    ]
    for gpu in env["gpus"]:
        lines.append(
            f"GPU: {gpu.get('name')}, driver {gpu.get('driver_version')}, CUDA {gpu.get('cuda')}, SM clock "
            f"{gpu.get('clocks_sm')}/{gpu.get('clocks_max_sm')} MHz, "
            f"power {gpu.get('power_draw')}/{gpu.get('power_limit')} W"
        )
    if env.get("jetson"):
        lines.append(f"Jetson: {env['jetson']['l4t']}; power mode: {env['jetson']['nvpmodel']}")
    lines.append("versions: " + ", ".join(f"{k} {v}" for k, v in env["versions"].items()))
    if "host_post" in env:
        lines.append(f"host top-k + NMS of --nms none files: {env['host_post']}")
    peaks = sorted({f"{r['peak_source']} = {r['peak_tflops']:.3f} TFLOP/s" for r in results if r["peak_source"]})
    lines.extend(f"peak: {p}" for p in peaks)
    for w in report["warnings"] + [f"{name(r)} batch {r['batch']}: {w}" for r in results for w in r["warnings"]]:
        lines.append(f"WARNING: {w}")
    return "\n".join(lines)


PLOT_SOFTWARE = "retina-deploy bench"  # a PNG's "Software" text chunk: marks a plot this command may replace


def _matplotlib() -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
    except ImportError as e:
        from retina_deploy.core.errors import ConfigError

        raise ConfigError(f"--plot needs matplotlib (pip install 'retina-deploy[bench]'): {e}") from e


def plot_suffixes() -> tuple[str, ...]:
    """The file suffixes (".png", ".pdf", ...) the plot can be written as; ConfigError without matplotlib."""
    _matplotlib()
    from matplotlib.backend_bases import FigureCanvasBase

    return tuple(sorted("." + ext for ext in FigureCanvasBase.get_supported_filetypes()))


def is_bench_report(path: Path) -> bool:
    """Whether ``path`` holds a JSON report of this schema (an earlier ``bench --json``, which may be replaced)."""
    try:
        if path.stat().st_size > 64 << 20:  # reports are kilobytes; a large file is something else
            return False
        report = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return False
    return isinstance(report, dict) and report.get("schema") == SCHEMA


def is_bench_plot(path: Path) -> bool:
    """Whether ``path`` is a PNG written by ``write_plot`` (its "Software" text chunk)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            return getattr(image, "text", {}).get("Software") == PLOT_SOFTWARE
    except (OSError, UnidentifiedImageError, ValueError):
        return False


def write_plot(report: dict, path: str | os.PathLike) -> Path:
    """A PNG (or the format of ``path``'s suffix, one of ``plot_suffixes()``), written atomically: latency
    (median, p90, p99) and images/s against batch size, one colour per model."""
    _matplotlib()
    import matplotlib.pyplot as plt

    from retina_deploy.core.fileio import atomic_path

    series: dict[str, list[dict]] = {}
    for r in report["results"]:
        series.setdefault(f"{r['model']} [{r['backend']}, {r['precision']}]", []).append(r)
    fig, (ax_lat, ax_thr) = plt.subplots(1, 2, figsize=(13, 5.5))
    for i, (label, rows) in enumerate(series.items()):
        rows = sorted(rows, key=lambda r: r["batch"])
        b = [r["batch"] for r in rows]
        colour = f"C{i % 10}"
        ax_lat.plot(b, [r["latency_ms"]["median"] for r in rows], "o-", color=colour, label=label)
        ax_lat.fill_between(b, [r["latency_ms"]["p90"] for r in rows], [r["latency_ms"]["p99"] for r in rows],
                            color=colour, alpha=0.2)  # fmt: skip
        ax_lat.plot(b, [r["latency_ms"]["p99"] for r in rows], "v--", color=colour, alpha=0.7, markersize=4)
        ax_thr.plot(b, [r["images_per_s"] for r in rows], "o-", color=colour, label=label)
    batches = sorted({r["batch"] for r in report["results"]})
    for ax, ylabel in ((ax_lat, "latency per batch, ms (line: median; band: p90-p99; v: p99)"),
                       (ax_thr, "throughput, images/s")):  # fmt: skip
        ax.set_xscale("log", base=2)
        ax.set_xticks(batches, [str(b) for b in batches])
        ax.set_xlabel("batch size")
        ax.set_ylabel(ylabel)
        ax.grid(True, alpha=0.3)
    ax_lat.set_yscale("log")
    ax_thr.legend(fontsize=7, loc="best")
    env = report["environment"]
    device = env["gpus"][0]["name"] if env["gpus"] and report["settings"]["device"] != "cpu" else env["cpu"]["model"]
    fig.suptitle(f"retina-deploy bench, {device}, {report['created'][:10]}, end to end (pre + inference + post)")
    fig.tight_layout()
    path = Path(path)
    fmt = path.suffix[1:].lower() or "png"
    metadata = {"Software": PLOT_SOFTWARE} if fmt == "png" else None
    try:
        with atomic_path(path) as tmp:  # the format from the final name: the temporary one ends in .tmp
            fig.savefig(tmp, dpi=110, format=fmt, metadata=metadata)
    finally:
        plt.close(fig)
    return path

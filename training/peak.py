"""The peak FLOP/s that ``train/mfu`` divides by, per device and precision.

GPUs: a table of the vendors' dense (no sparsity) peaks, matched against ``torch.cuda.get_device_name()``
by patterns that tell the variants apart (H100 SXM vs PCIe vs NVL, A10 vs A100 vs A10G). Which column
applies follows the trainer's precision: bf16/fp16 tensor cores for "bf16*"/"16*" precisions, TF32
for float32 matmuls when PyTorch allows TF32 (``torch.backends.cuda.matmul.allow_tf32`` or
``set_float32_matmul_precision('high'|'medium')``), plain FP32 otherwise.

CPUs: measured once per machine and thread count by a short float32 matmul benchmark (best of a few
2048 x 2048 products, about a second), cached as JSON under the cache directory, keyed by the CPU
model, the thread count and the torch version; MFU on a CPU is then "fraction of what this machine's
float32 matmul reaches", the same yardstick as on a GPU.
"""

from __future__ import annotations

import json
import os
import platform
import re
import time
from pathlib import Path

import torch

# (pattern, bf16/fp16 dense, tf32 dense, fp32) in FLOP/s; vendors' data sheets
GPU_PEAKS: list[tuple[str, float, float, float]] = [
    (r"H100.*PCIe", 756e12, 378e12, 51.2e12),
    (r"H100.*NVL", 835e12, 418e12, 60e12),
    (r"GH200|H200|H100|H800", 989e12, 495e12, 67e12),  # SXM (H100 80GB HBM3), H200 SXM/NVL within 10%
    (r"A100|A800", 312e12, 156e12, 19.5e12),
    (r"L40S", 362e12, 183e12, 91.6e12),
    (r"\bL4\b", 121e12, 60e12, 30.3e12),
    (r"\bA10\b", 125e12, 62.5e12, 31.2e12),
    (r"RTX 4090", 165e12, 82.6e12, 82.6e12),
    (r"V100", 125e12, 15.7e12, 15.7e12),  # fp16 tensor cores; no TF32
]


def gpu_peak(name: str, precision: str = "32", tf32: bool = False) -> float | None:
    """Dense peak FLOP/s of the GPU called ``name`` at ``precision`` (Lightning's string), None if unknown."""
    for pattern, half, tf, fp32 in GPU_PEAKS:
        if re.search(pattern, name, flags=re.IGNORECASE):
            if "16" in str(precision):
                return half
            return tf if tf32 else fp32
    return None


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def measure_cpu_peak(seconds: float = 1.0, n: int = 2048) -> float:
    """Best float32 matmul FLOP/s of this process's threads over about ``seconds``."""
    g = torch.Generator().manual_seed(0)  # leaves the global random state of the run alone
    a, b = torch.randn(n, n, generator=g), torch.randn(n, n, generator=g)
    a @ b  # warm-up
    best, start = float("inf"), time.perf_counter()
    while time.perf_counter() - start < seconds or best == float("inf"):
        t = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t)
    return 2 * n**3 / best


def cpu_peak(cache_dir: str | os.PathLike | None) -> float:
    """This machine's float32 matmul peak at the current thread count, from the cache or measured
    (and cached, written atomically; an unreadable cache file is measured over)."""
    key = f"{_cpu_name()}|threads={torch.get_num_threads()}|torch={torch.__version__}"
    path = None if cache_dir is None else Path(cache_dir).expanduser() / "cpu_peak_flops.json"
    table: dict[str, float] = {}
    if path is not None and path.is_file():
        try:
            table = dict(json.loads(path.read_text()))
        except (OSError, ValueError, TypeError):
            table = {}
    if isinstance(table.get(key), (int, float)) and table[key] > 0:
        return float(table[key])
    peak = measure_cpu_peak()
    if path is not None:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
            tmp.write_text(json.dumps({**table, key: peak}, indent=1))
            os.replace(tmp, path)
        except OSError:
            pass  # an unwritable cache only costs a re-measurement next time
    return peak


def peak_flops(configured: float | None, device: torch.device, precision: str = "32", cache_dir=None) -> float | None:
    """The per-device peak: ``configured`` when given; a known GPU's table entry; the measured CPU peak."""
    if configured is not None:
        return configured
    if device.type == "cuda":
        tf32 = torch.backends.cuda.matmul.allow_tf32 or torch.get_float32_matmul_precision() != "highest"
        return gpu_peak(torch.cuda.get_device_name(device), precision, tf32)
    if device.type == "cpu":
        return cpu_peak(cache_dir)
    return None

"""The MFU denominator: GPU names as PyTorch reports them map to their data-sheet peaks at the run's
precision; a CPU's peak is measured once and cached; a corrupt cache is measured over."""

import json

import pytest
import torch

from training.peak import cpu_peak, gpu_peak


@pytest.mark.parametrize(
    "name,precision,tf32,expected",
    [
        ("NVIDIA H100 80GB HBM3", "bf16-mixed", False, 989e12),
        ("NVIDIA H100 PCIe", "bf16-mixed", False, 756e12),
        ("NVIDIA H100 NVL", "16-mixed", False, 835e12),
        ("NVIDIA H200", "bf16-mixed", False, 989e12),
        ("NVIDIA H200 NVL", "bf16-true", False, 989e12),
        ("NVIDIA A100-SXM4-80GB", "bf16-mixed", False, 312e12),
        ("NVIDIA A100 80GB PCIe", "32-true", True, 156e12),
        ("NVIDIA A100-SXM4-40GB", "32-true", False, 19.5e12),
        ("NVIDIA L40S", "bf16-mixed", False, 362e12),
        ("NVIDIA A10", "bf16-mixed", False, 125e12),
        ("NVIDIA A10G", "bf16-mixed", False, None),  # not A10, not A100: unknown rather than wrong
        ("Tesla V100-SXM2-16GB", "16-mixed", False, 125e12),
        ("Some Future GPU", "bf16-mixed", False, None),
    ],
)
def test_gpu_names_map_to_their_peaks(name, precision, tf32, expected):
    assert gpu_peak(name, precision, tf32) == expected


def test_cpu_peak_is_measured_once_and_cached(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr("training.peak.measure_cpu_peak", lambda: calls.append(1) or 123e9)
    assert cpu_peak(tmp_path) == 123e9
    assert cpu_peak(tmp_path) == 123e9 and len(calls) == 1
    (tmp_path / "cpu_peak_flops.json").write_text("{not json")
    assert cpu_peak(tmp_path) == 123e9 and len(calls) == 2
    assert list(json.loads((tmp_path / "cpu_peak_flops.json").read_text()).values()) == [123e9]


def test_measured_cpu_peak_is_plausible_and_leaves_the_global_rng_alone():
    from training.peak import measure_cpu_peak

    torch.manual_seed(5)
    expected = torch.rand(3)
    torch.manual_seed(5)
    peak = measure_cpu_peak(seconds=0.1, n=256)
    assert torch.equal(torch.rand(3), expected)
    assert 1e8 < peak < 1e14

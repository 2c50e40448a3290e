"""eval.gpu_check on a CPU: every fused-kernel row says why it was skipped, and the preset table times a
real training step per preset (finite, positive)."""

from eval.gpu_check import main


def test_gpu_check_runs_on_cpu_with_skipped_kernels_and_timed_presets(capsys):
    main(["--device", "cpu", "--presets", "transformer,moe", "--seq-len", "32", "--batch", "2", "--steps", "1"])
    out = capsys.readouterr().out
    kernel_rows = [line for line in out.splitlines() if "skipped" in line]
    assert {row.split("|")[2].strip() for row in kernel_rows} == {"flash_attn", "fla", "causal_conv1d", "mamba_ssm"}
    presets = {line.split("|")[1].strip(): line for line in out.splitlines() if line.startswith(("| transformer", "| moe"))}
    assert set(presets) == {"transformer", "moe"}
    for row in presets.values():
        cells = [c.strip() for c in row.split("|")[1:-1]]
        assert "FAILED" not in row and float(cells[2]) > 0 and float(cells[3].replace(",", "")) > 0

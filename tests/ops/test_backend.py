"""The CPU allocator setting of the entry points (`keep_freed_memory`): freed temporaries stay in the
process for reuse when it is on, and go back to the system when it is off."""

import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

# A 16 MiB tensor is made and freed; mallinfo2 then reports how many free bytes the heap still holds.
PROBE = """
import ctypes, torch
from arch.ops.backend import keep_freed_memory
applied = keep_freed_memory()
class Info(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]
libc = ctypes.CDLL(None)
libc.mallinfo2.restype = Info
t = torch.ones(16 * 2**20 // 4)
del t
print(applied, libc.mallinfo2().fordblks)
"""

glibc_only = pytest.mark.skipif(
    platform.libc_ver()[0] != "glibc" or tuple(map(int, platform.libc_ver()[1].split(".")[:2])) < (2, 33),
    reason="mallinfo2 needs glibc >= 2.33",
)


def _probe(**env: str) -> tuple[bool, int]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_") and k != "LD_PRELOAD"}
    out = subprocess.run(
        [sys.executable, "-c", PROBE], cwd=ROOT, env={**environ, **env}, capture_output=True, text=True, check=True
    ).stdout.split()
    return out[0] == "True", int(out[1])


@glibc_only
def test_freed_blocks_stay_in_the_process_when_applied():
    applied, free_bytes = _probe()
    assert applied
    assert free_bytes >= 16 * 2**20


@glibc_only
def test_switched_off_by_environment_and_freed_blocks_go_back():
    applied, free_bytes = _probe(MIXERLAB_MALLOC_TUNING="0")
    assert not applied
    assert free_bytes < 16 * 2**20


@glibc_only
def test_users_own_glibc_settings_win():
    applied, _ = _probe(MALLOC_TRIM_THRESHOLD_="1000000")
    assert not applied

"""A real single-node SLURM cluster for the session: munged, slurmctld and slurmd started directly
(no systemd) with every file under a temporary folder, and stopped at the end.

Needs root and Debian's ``slurmctld slurmd slurm-client munge`` (installed by ``.ci/run``). Where
SLURM cannot start, the tests that use it skip with the reason; with ``MIXERLAB_REQUIRE_SLURM=1``
(set by CI) they fail instead.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

SLURM_CONF = """\
ClusterName=mixerlab-test
SlurmctldHost={host}(127.0.0.1)
SlurmctldPort={ctld_port}
SlurmdPort={slurmd_port}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket={dir}/munge.sock
StateSaveLocation={dir}/state
SlurmdSpoolDir={dir}/spool
SlurmctldPidFile={dir}/slurmctld.pid
SlurmdPidFile={dir}/slurmd.pid
SlurmctldLogFile={dir}/slurmctld.log
SlurmdLogFile={dir}/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
MpiDefault=none
SwitchType=switch/none
JobCompType=jobcomp/none
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobRequeue=1
ReturnToService=2
KillWait=10
MinJobAge=600
SlurmdParameters=config_overrides
NodeName={host} NodeAddr=127.0.0.1 CPUs={cpus} RealMemory={mem} State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _unavailable(reason: str):
    if os.environ.get("MIXERLAB_REQUIRE_SLURM") == "1":
        pytest.fail(f"SLURM is required here (MIXERLAB_REQUIRE_SLURM=1) but cannot start: {reason}")
    pytest.skip(f"SLURM cannot start on this machine: {reason}")


class Slurm:
    """Client side of the test cluster: commands run with its ``SLURM_CONF``."""

    def __init__(self, conf: Path, folder: Path):
        self.conf, self.folder = conf, folder
        self.env = {**os.environ, "SLURM_CONF": str(conf)}

    def run(self, *cmd: str, check: bool = True) -> subprocess.CompletedProcess:
        proc = subprocess.run(list(cmd), env=self.env, capture_output=True, text=True, timeout=60)
        if check and proc.returncode != 0:
            raise AssertionError(f"{' '.join(cmd)} failed: {proc.stderr.strip()}\n{self.logs()}")
        return proc

    def job(self, job_id: str) -> dict[str, str]:
        """``scontrol show job`` as a dict (JobState, Restarts, Reason, ...)."""
        out = self.run("scontrol", "show", "job", "-o", job_id).stdout
        return dict(field.split("=", 1) for field in out.split() if "=" in field)

    def logs(self) -> str:
        return "\n".join(f"--- {p.name}\n" + p.read_text()[-3000:] for p in sorted(self.folder.glob("*.log")))


@pytest.fixture(scope="session")
def slurm(tmp_path_factory):
    """Start the cluster (about 5 s), yield a `Slurm` client, stop the daemons."""
    missing = [b for b in ("munged", "slurmctld", "slurmd", "sbatch", "scontrol") if shutil.which(b) is None]
    if missing:
        _unavailable(f"{', '.join(missing)} not installed (apt-get install slurmctld slurmd slurm-client munge)")
    if os.geteuid() != 0:
        _unavailable("the test cluster's daemons run as root")
    if not Path("/etc/munge/munge.key").exists():
        _unavailable("/etc/munge/munge.key is missing (installed with the munge package)")
    folder = tmp_path_factory.mktemp("slurm")
    for sub in ("state", "spool"):
        (folder / sub).mkdir()
    conf = folder / "slurm.conf"
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2**20
    conf.write_text(SLURM_CONF.format(
        host=socket.gethostname().split(".")[0], dir=folder, cpus=os.cpu_count(), mem=mem,
        ctld_port=_free_port(), slurmd_port=_free_port(),
    ))
    cluster = Slurm(conf, folder)
    daemons: list[subprocess.Popen] = []

    def start(*cmd: str) -> None:
        daemons.append(
            subprocess.Popen(list(cmd), env=cluster.env, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, start_new_session=True)
        )

    try:
        start(
            "munged",
            "--foreground",
            "--force",
            f"--socket={folder}/munge.sock",
            "--key-file=/etc/munge/munge.key",
            f"--pid-file={folder}/munged.pid",
            f"--log-file={folder}/munged.log",
            f"--seed-file={folder}/munge.seed",
        )
        _wait(lambda: (folder / "munge.sock").exists(), 10, "munged did not create its socket", cluster)
        start("slurmctld", "-D", "-i", "-f", str(conf))
        start("slurmd", "-D", "-f", str(conf))
        _wait(lambda: "idle" in cluster.run("sinfo", "-h", "-o", "%T", check=False).stdout, 30, "the node never became idle", cluster)
    except _Unavailable as err:
        _stop(daemons)
        _unavailable(str(err))
    try:
        yield cluster
    finally:
        cluster.run("scancel", "--user=root", check=False)  # jobs still queued or running
        deadline = time.monotonic() + 30
        while cluster.run("squeue", "-h", check=False).stdout.strip() and time.monotonic() < deadline:
            time.sleep(0.5)
        _stop(daemons)


class _Unavailable(Exception):
    pass


def _wait(ready, timeout: float, message: str, cluster: Slurm) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        if time.monotonic() > deadline:
            raise _Unavailable(f"{message}\n{cluster.logs()}")
        time.sleep(0.3)


def _stop(daemons: list[subprocess.Popen]) -> None:
    """Stop the daemons (and the jobs' processes slurmd started, in its session) that we started."""
    for proc in reversed(daemons):
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
    for proc in reversed(daemons):
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()

"""A single-node SLURM cluster on this machine, for the tests: Debian's slurmctld, slurmd and
munged (`apt-get install slurm-wlm munge`, which .ci/run does), started as root from a
slurm.conf in a temporary folder and stopped afterwards. Clients find it through SLURM_CONF.

One partition `debug` with this machine's CPUs and no GPU, select/cons_tres,
proctrack/linuxproc (no cgroups), no accounting."""

import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

DAEMONS = ("slurmctld", "slurmd", "munged", "sbatch", "scontrol", "sinfo")


def unavailable_reason() -> str | None:
    """Why a cluster cannot be started here, or None."""
    missing = [d for d in DAEMONS if not shutil.which(d, path=f"{os.environ.get('PATH', '')}:/usr/sbin")]
    if missing:
        return (f"SLURM is not installed ({', '.join(missing)} missing): apt-get install "
                f"slurm-wlm munge (as .ci/run does)")
    if os.geteuid() != 0:
        return "starting slurmctld, slurmd and munged needs root"
    if not Path("/etc/munge/munge.key").is_file():
        return "munge has no key (/etc/munge/munge.key): reinstall munge"
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def memory_mb() -> int:
    total_kb = next(int(line.split()[1]) for line in Path("/proc/meminfo").read_text().splitlines()
                    if line.startswith("MemTotal:"))
    return int(total_kb / 1024 * 0.9)


class LocalSlurm:
    def __init__(self, root: Path):
        self.root = Path(root)
        self.conf = self.root / "slurm.conf"
        self.node = socket.gethostname().split(".")[0]
        self.started: list[Path] = []  # pid files of the daemons this object started

    def write_conf(self) -> None:
        for sub in ("state", "spool"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        r = self.root
        self.conf.write_text(f"""\
ClusterName=gantest
SlurmctldHost={self.node}
SlurmUser=root
SlurmdUser=root
SlurmctldPort={free_port()}
SlurmdPort={free_port()}
AuthType=auth/munge
StateSaveLocation={r}/state
SlurmdSpoolDir={r}/spool
SlurmctldPidFile={r}/slurmctld.pid
SlurmdPidFile={r}/slurmd.pid
SlurmctldLogFile={r}/slurmctld.log
SlurmdLogFile={r}/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
MpiDefault=none
ReturnToService=2
SchedulerType=sched/backfill
JobRequeue=1
MinJobAge=600
NodeName={self.node} CPUs={os.cpu_count()} RealMemory={memory_mb()} State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
""")

    def munge_running(self) -> bool:
        encoded = subprocess.run(["munge", "-n"], capture_output=True)
        return encoded.returncode == 0

    def start(self, timeout: float = 60) -> None:
        self.write_conf()
        if not self.munge_running():
            Path("/run/munge").mkdir(parents=True, exist_ok=True)
            shutil.chown("/run/munge", "munge", "munge")
            pid_file = Path("/run/munge/munged.pid")  # the munge user cannot enter self.root
            self.daemon("runuser", "-u", "munge", "--", "munged", f"--pid-file={pid_file}")
            self.started.append(pid_file)
        self.daemon("slurmctld", "-i", "-f", str(self.conf))
        self.started.append(self.root / "slurmctld.pid")
        self.daemon("slurmd", "-f", str(self.conf))
        self.started.append(self.root / "slurmd.pid")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            state = self.run("sinfo", "-h", "-o", "%T").stdout.strip()
            if state == "idle":
                return
            time.sleep(1)
        raise RuntimeError(f"the node did not become idle in {timeout} s (sinfo: {state!r}); see "
                           f"{self.root}/slurmctld.log and slurmd.log")

    @staticmethod
    def daemon(*command: str) -> None:
        """Starts a daemon (it forks and returns); its own error message if it cannot."""
        done = subprocess.run(command, capture_output=True, text=True, timeout=30)
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(command)} failed: {(done.stderr or done.stdout).strip()}")

    def env(self) -> dict:
        return {**os.environ, "SLURM_CONF": str(self.conf)}

    def run(self, *command: str, check: bool = False) -> subprocess.CompletedProcess:
        return subprocess.run(command, env=self.env(), capture_output=True, text=True, timeout=60,
                              check=check)

    def stop(self) -> None:
        """Cancels the cluster's jobs (a stopped slurmd leaves its job steps running), then
        stops the daemons this object started, by the pids in their pid files."""
        if self.started:
            self.run("scancel", "--user", str(os.geteuid()))
            deadline = time.monotonic() + 60
            while self.run("squeue", "-h").stdout.strip() and time.monotonic() < deadline:
                time.sleep(1)
        for pid_file in reversed(self.started):
            try:
                pid = int(pid_file.read_text().split()[0])
                os.kill(pid, 15)
            except (OSError, ValueError, IndexError):
                continue
            for _ in range(100):  # until it has exited, so its ports are free again
                try:
                    os.kill(pid, 0)
                except OSError:
                    break
                time.sleep(0.1)
        self.started.clear()

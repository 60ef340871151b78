"""What this process may use of the CPU, what other processes are using of it right now, and what
kind of CPU it is.

- `allowed_cores`: the cores the process may run on (its affinity), capped by a cgroup CPU quota
  (a container's `--cpus`).
- `thread_ceiling`: the most compute threads a run uses (trainer.threads=auto): a launcher's or
  the user's OMP_NUM_THREADS, else the allowed cores shared among torchrun's processes on this machine.
- `CpuUse`: samples /proc to tell how many cores *other* processes kept busy since the last
  sample (thread_governor.py gives them a core back; the slowdown notice names them as the cause).
- `cpu_description`: the model name and the instruction sets that decide speed (AVX2, AVX-512,
  AVX-512 BF16, AMX), for summary.json and the benchmarks' tables.

Linux reads /proc and /sys; elsewhere `CpuUse.available` is False and the rest falls back to os.cpu_count().
No torch here: the command line's checks import this before torch.
"""

from __future__ import annotations

import math
import os
import time
from pathlib import Path

PROC = Path("/proc")
CGROUP = Path("/sys/fs/cgroup")


def affinity_cores() -> set[int]:
    """The CPU ids this process may run on."""
    try:
        return set(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        return set(range(os.cpu_count() or 1))


def cgroup_quota(root: Path = CGROUP) -> float | None:
    """The cgroup's CPU quota in cores (cgroup v2 cpu.max, v1 cpu.cfs_quota_us), None when unlimited or unknown."""
    try:
        quota, period = (root / "cpu.max").read_text().split()[:2]
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        pass
    try:
        quota = int((root / "cpu" / "cpu.cfs_quota_us").read_text())
        period = int((root / "cpu" / "cpu.cfs_period_us").read_text())
        return quota / period if quota > 0 and period > 0 else None
    except (OSError, ValueError):
        return None


def allowed_cores(root: Path = CGROUP) -> int:
    """Whole cores this process may keep busy: its affinity, capped by a cgroup quota (at least 1)."""
    cores = len(affinity_cores())
    quota = cgroup_quota(root)
    if quota is not None:
        cores = min(cores, math.floor(quota))  # 1.5 cores of quota: a second thread would be throttled
    return max(1, cores)


def thread_ceiling(env: dict[str, str] | None = None, root: Path = CGROUP) -> tuple[int, str]:
    """(the most threads trainer.threads=auto uses, where that number comes from).

    OMP_NUM_THREADS, when set, is someone's choice (the user's, or a launcher's: joblib gives parallel
    sweep jobs a share each, torchrun gives each of several processes 1): it is kept, and kept fixed
    (run_callbacks.thread_governor). Otherwise the allowed cores, divided among the
    processes torchrun started on this machine (LOCAL_WORLD_SIZE)."""
    env = os.environ if env is None else env
    given = env.get("OMP_NUM_THREADS", "").strip()
    if given.isdigit() and int(given) > 0:
        return int(given), "OMP_NUM_THREADS"
    cores = allowed_cores(root)
    local = env.get("LOCAL_WORLD_SIZE", "")
    if local.isdigit() and int(local) > 1:
        return max(1, cores // int(local)), f"{cores} cores / {local} torchrun processes"
    return cores, f"{cores} cores"


def _ticks(fields: list[str], first: int, count: int) -> int:
    return sum(int(value) for value in fields[first : first + count])


class CpuUse:
    """How many of this process's cores other processes kept busy between two samples.

    Busy time of the cores in the affinity (/proc/stat: user, nice, system, irq, softirq and steal,
    the last being another virtual machine's), minus this process's own CPU time and that of its
    children (DataLoader workers), over the wall time between samples.
    """

    BUSY_COLUMNS = (0, 1, 2, 5, 6, 7)  # user nice system [idle iowait] irq softirq steal

    def __init__(self, proc: Path = PROC, clock=time.monotonic, cores: set[int] | None = None):
        self.proc = proc
        self.clock = clock
        self.cores = affinity_cores() if cores is None else cores
        self.ticks_per_second = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
        self.available = (proc / "stat").is_file() and (proc / "self" / "stat").is_file()
        self._last = self._try_sample()

    def _try_sample(self) -> tuple[float, int, int] | None:
        """A sample, or None from now on when /proc cannot give one (a sandbox, another format): a run is
        never failed for want of this figure."""
        if self.available:
            try:
                return self._sample()
            except (OSError, ValueError, IndexError):
                self.available = False
        return None

    def _sample(self) -> tuple[float, int, int]:
        """(time, busy ticks of our cores, ticks this process and its children used)."""
        return self.clock(), self._busy_ticks(), self._own_ticks()

    def _busy_ticks(self) -> int:
        busy = 0
        for line in (self.proc / "stat").read_text().splitlines():
            name, *fields = line.split()
            if name.startswith("cpu") and name[3:].isdigit() and int(name[3:]) in self.cores:
                busy += sum(int(fields[column]) for column in self.BUSY_COLUMNS if column < len(fields))
        return busy

    def _own_ticks(self) -> int:
        own = self._process_ticks(self.proc / "self" / "stat", children_reaped=True)
        for pid in self._children():
            own += self._process_ticks(self.proc / str(pid) / "stat", children_reaped=False)
        return own

    def _children(self) -> list[int]:
        pids = []
        for task in (self.proc / "self" / "task").glob("*/children"):
            try:
                pids += [int(pid) for pid in task.read_text().split()]
            except OSError:  # the thread ended between the listing and the read
                continue
        return pids

    @staticmethod
    def _process_ticks(stat: Path, children_reaped: bool) -> int:
        """utime + stime (and cutime + cstime: children already ended) of one process; 0 if it is gone."""
        try:
            text = stat.read_text()
        except OSError:
            return 0
        fields = text[text.rindex(")") + 2 :].split()  # after "pid (comm) ": the name may hold spaces
        return _ticks(fields, 11, 4 if children_reaped else 2)  # fields 14-17 of proc(5), counted from 3

    def others_busy(self) -> float | None:
        """Cores' worth of CPU that other processes used since the last call (None: cannot tell here)."""
        last, self._last = self._last, self._try_sample()
        if last is None or self._last is None:
            return None
        seconds = self._last[0] - last[0]
        if seconds <= 0:
            return None
        others = (self._last[1] - last[1]) - (self._last[2] - last[2])
        return max(0.0, others / self.ticks_per_second / seconds)


def cpu_model(proc: Path = PROC) -> str:
    """The CPU's model name (/proc/cpuinfo), else what the platform module says."""
    try:
        for line in (proc / "cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or platform.machine()


# The instruction sets that decide a CPU's training speed, as /proc/cpuinfo's flags name them.
ISA_FLAGS = {"avx2": "AVX2", "avx512f": "AVX-512", "avx512_bf16": "AVX-512 BF16", "amx_tile": "AMX"}


def cpu_isa(proc: Path = PROC) -> list[str]:
    """The speed-deciding instruction sets this CPU has: AVX2, AVX-512, AVX-512 BF16, AMX."""
    try:
        text = (proc / "cpuinfo").read_text()
    except OSError:
        return []
    flags = next((line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), [])
    return [name for flag, name in ISA_FLAGS.items() if flag in flags]


def cpu_description(proc: Path = PROC) -> str:
    """e.g. 'AMD EPYC (AVX2), 2 cores' or 'Intel Xeon ... (AVX2, AVX-512, AVX-512 BF16, AMX), 8 cores'."""
    isa = ", ".join(cpu_isa(proc))
    return f"{cpu_model(proc)}{f' ({isa})' if isa else ''}, {len(affinity_cores())} cores"

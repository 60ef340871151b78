"""trainer.threads: what the process may use of the CPU (cpu.py), the governor that gives cores back to busy
neighbours and the slowdown notice (contention.py), the setting's checks and its record in summary.json."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from cnntrain.contention import SlowdownWatch, ThreadGovernor, fitting_threads
from cnntrain.cpu import CpuUse, allowed_cores, cgroup_quota, cpu_description, cpu_isa, thread_ceiling
from cnntrain.errors import ConfigError
from cnntrain.run import train
from tests.conftest import compose_config

QUICK = ["data=synthetic", "data.train_size=128", "data.test_size=64", "data.batch_size=32", "model=softmax"]
QUICK += ["trainer.progress=none", "device=cpu", "trainer.epochs=1"]


class FakeClock:
    def __init__(self):
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class FakeUse:
    """CpuUse's interface with the others' use given in advance."""

    def __init__(self, others, cores: int = 2):
        self.others = others if callable(others) else list(others)
        self.cores = set(range(cores))

    def others_busy(self):
        if callable(self.others):
            return self.others()
        return self.others.pop(0) if len(self.others) > 1 else self.others[0]


@pytest.mark.parametrize(
    "current, ceiling, cores, others, expected",
    [
        (2, 2, 2, 0.02, 2),  # a quiet machine: every core
        (2, 2, 2, 1.0, 1),  # one busy neighbour: a core back
        (2, 2, 2, 0.49, 2),  # under half a core: kept
        (2, 2, 2, 0.5, 1),
        (1, 2, 2, 0.3, 1),  # back up only once they use under a quarter of it
        (1, 2, 2, 0.24, 2),
        (2, 2, 2, 2.0, 1),  # two busy: never below one thread
        (8, 8, 64, 32.0, 8),  # a container's quota on a big, half-busy host: its share is free
        (4, 4, 8, 5.0, 3),
        (1, 1, 2, 0.0, 1),  # a ceiling of one (OMP_NUM_THREADS=1, joblib's workers)
    ],
)
def test_fitting_threads_gives_a_core_back_per_busy_neighbour(current, ceiling, cores, others, expected):
    assert fitting_threads(current, ceiling, cores, others) == expected


def test_governor_lowers_and_restores_threads_and_tells_once():
    clock, said, logged, counts = FakeClock(), [], [], []
    use = FakeUse([0.0, 1.0, 1.0, 0.1, 0.1, 1.1, 1.2])
    governor = ThreadGovernor(2, "2 cores", said.append, logged.append, use=use, set_threads=counts.append, clock=clock)
    assert counts == [2]
    for seconds in (0.5, 1, 2, 3, 4, 5, 6, 7):  # looks at 1, 2, ... 7 s (not at 0.5)
        clock.now = 100.0 + seconds
        governor.on_train_step(None, 1, 10)
    assert counts == [2, 1, 2, 1]  # each change once two looks in a row wanted it
    assert said == [
        "notice: other processes are using 1.0 of the 2 cores this run may use: training on 1 thread instead of "
        "2 while they do (threads that share cores with them wait for each other and can run 10x slower). "
        "trainer.threads=2 would keep 2."
    ]
    assert logged == [
        "threads: 2 (other processes used 0.1 of 2 cores)",
        "threads: 1 (other processes used 1.2 of 2 cores)",
    ]
    summary = governor.summary()
    assert summary["lowest"] == 1 and summary["at_end"] == 1 and summary["ceiling_from"] == "2 cores"
    assert [change["threads"] for change in summary["changes"]] == [1, 2, 1]
    assert summary["changes"][0] == {"seconds": 3.0, "threads": 1, "others_busy_cores": 1.0}


def test_governor_ignores_a_single_busy_look():
    counts = []
    clock = FakeClock()
    use = FakeUse([0.9, 0.0, 1.0, 0.0])
    governor = ThreadGovernor(2, "2 cores", print, print, use=use, set_threads=counts.append, clock=clock)
    for seconds in (1, 2, 3, 4):
        clock.now = 100.0 + seconds
        governor.on_train_step(None, 1, 10)
    assert counts == [2] and governor.summary()["changes"] == []


def test_governor_does_nothing_where_proc_cannot_tell():
    counts = []
    governor = ThreadGovernor(2, "2 cores", print, print, use=FakeUse([None]), set_threads=counts.append)
    governor.look()
    assert counts == [2] and governor.threads == 2


def write_proc(root, cpu_ticks: dict[int, list[int]], own: tuple[int, int, int, int]):
    lines = ["cpu  1 2 3 4 5 6 7 8 0 0"] + [f"cpu{n} " + " ".join(map(str, ticks)) for n, ticks in cpu_ticks.items()]
    (root / "stat").write_text("\n".join(lines) + "\nintr 1 2\n")
    (root / "self" / "task").mkdir(parents=True, exist_ok=True)
    # pid (comm with spaces) state ppid ... utime stime cutime cstime are fields 14-17
    fields = ["S"] + ["0"] * 10 + [str(value) for value in own] + ["0"] * 5
    (root / "self" / "stat").write_text("4242 (python a b) " + " ".join(fields) + "\n")


def test_cpu_use_counts_other_processes_busy_ticks_on_our_cores(tmp_path):
    clock = FakeClock()
    # user nice system idle iowait irq softirq steal: busy = all but idle and iowait
    write_proc(tmp_path, {0: [100, 0, 50, 900, 5, 0, 0, 0], 1: [10, 0, 0, 900, 0, 0, 0, 0], 2: [0] * 8}, (40, 10, 0, 0))
    use = CpuUse(proc=tmp_path, clock=clock, cores={0, 1})
    assert use.available
    clock.now += 2.0
    # In 2 s: cpu0 +200 busy (incl. 20 irq, 10 steal), cpu1 +150 busy, cpu2 (not ours) +200; we used 100 + 50
    # (utime, stime) and a reaped child 30 (cutime): others = 350 - 180 = 170 ticks = 1.7 s in 2 s.
    write_proc(
        tmp_path,
        {0: [240, 0, 80, 950, 9, 20, 0, 10], 1: [130, 10, 20, 950, 0, 0, 0, 0], 2: [200] + [0] * 7},
        (140, 60, 30, 0),
    )
    assert use.others_busy() == pytest.approx(1.7 * 100 / use.ticks_per_second / 2.0)


def others_while_busy(use: CpuUse) -> float:
    """What others used over 1.5 s, once a busy process just started has got going."""
    time.sleep(0.3)
    use.others_busy()
    time.sleep(1.5)
    return use.others_busy()


def test_cpu_use_goes_quiet_when_proc_stops_answering(tmp_path):
    write_proc(tmp_path, {0: [1] * 8}, (1, 1, 0, 0))
    use = CpuUse(proc=tmp_path, cores={0})
    (tmp_path / "stat").write_text("cpu0 garbage\n")  # a format it cannot read: no figure, no exception
    assert use.others_busy() is None and not use.available
    assert use.others_busy() is None


def test_cpu_use_sees_a_real_busy_process():
    use = CpuUse()
    if not use.available:
        pytest.skip("needs Linux's /proc")
    # Started through a shell that exits at once: not this process's child (a child's CPU time counts as ours,
    # as DataLoader workers' must).
    started = subprocess.run(
        ["sh", "-c", f"'{sys.executable}' -c 'while True: pass' >/dev/null 2>&1 & echo $!"],
        capture_output=True,
        text=True,
        check=True,
    )
    hog = int(started.stdout)
    try:
        others = others_while_busy(use)
    finally:
        os.kill(hog, signal.SIGKILL)
    assert 0.7 <= others <= len(use.cores) + 0.1  # a whole core, plus whatever else the machine did


def test_cgroup_quota_v2_and_v1(tmp_path):
    (tmp_path / "cpu.max").write_text("150000 100000\n")
    assert cgroup_quota(tmp_path) == 1.5
    (tmp_path / "cpu.max").write_text("max 100000\n")
    assert cgroup_quota(tmp_path) is None
    v1 = tmp_path / "v1"
    (v1 / "cpu").mkdir(parents=True)
    (v1 / "cpu" / "cpu.cfs_quota_us").write_text("50000\n")
    (v1 / "cpu" / "cpu.cfs_period_us").write_text("100000\n")
    assert cgroup_quota(v1) == 0.5
    assert allowed_cores(v1) == 1  # never below one core


def test_thread_ceiling_keeps_omp_num_threads_and_shares_among_torchrun_processes(tmp_path):
    (tmp_path / "cpu.max").write_text("max 100000\n")
    cores = allowed_cores(tmp_path)
    assert thread_ceiling({"OMP_NUM_THREADS": "3"}, tmp_path) == (3, "OMP_NUM_THREADS")
    assert thread_ceiling({}, tmp_path) == (cores, f"{cores} cores")
    local = thread_ceiling({"LOCAL_WORLD_SIZE": "2"}, tmp_path)
    assert local == (max(1, cores // 2), f"{cores} cores / 2 torchrun processes")
    (tmp_path / "cpu.max").write_text("100000 100000\n")
    assert thread_ceiling({}, tmp_path) == (1, "1 cores")


def test_cpu_isa_and_description(tmp_path):
    (tmp_path / "cpuinfo").write_text(
        "processor : 0\nmodel name : Some Xeon\nflags : fpu sse avx2 avx512f avx512_bf16 amx_tile amx_bf16\n"
    )
    assert cpu_isa(tmp_path) == ["AVX2", "AVX-512", "AVX-512 BF16", "AMX"]
    assert cpu_description(tmp_path).startswith("Some Xeon (AVX2, AVX-512, AVX-512 BF16, AMX), ")
    (tmp_path / "cpuinfo").write_text("model name : Old one\nflags : fpu sse\n")
    assert cpu_description(tmp_path).startswith("Old one, ")


def test_slowdown_watch_tells_once_with_the_cause():
    clock, said = FakeClock(), []
    watch = SlowdownWatch(said.append, "cpu", use=FakeUse(lambda: 1.0 if clock.now > 110 else 0.0), clock=clock)
    watch.on_epoch_start(None, 1, 100)

    def steps(first: int, count: int, seconds: float):
        for step in range(first, first + count):
            clock.now += seconds
            watch.on_train_step(None, step, 100)

    steps(1, 40, 0.1)  # the pace: 0.1 s a step
    assert watch.pace == pytest.approx(0.1) and said == []
    steps(41, 40, 0.2)  # 2x: not yet worth a word (t = 112 at the end)
    assert said == []
    steps(81, 20, 0.35)  # 3.5x
    assert len(said) == 1
    assert said[0].startswith("notice: training slowed down: a step takes 0.35 s now against 0.1 s earlier in the run")
    assert "Other processes are using 1.0 of the 2 cores this run may use" in said[0]
    steps(1, 40, 1.0)
    assert len(said) == 1


def test_slowdown_without_busy_neighbours_names_other_causes():
    clock, said = FakeClock(), []
    watch = SlowdownWatch(said.append, "cpu", use=FakeUse([0.0] * 4), clock=clock)
    for step in range(1, 80):
        clock.now += 0.1 if step <= 40 else 0.5
        watch.on_train_step(None, step, 100)
    assert len(said) == 1 and "No other process is busy on its cores" in said[0]


@pytest.mark.parametrize("value", ["0", "-1", "many", "1.5", "2000"])
def test_bad_threads_are_refused_before_training(tmp_path, value):
    with pytest.raises(ConfigError) as err:
        train(compose_config(QUICK + [f"trainer.threads={value}"]), run_dir=tmp_path / "run")
    assert "trainer.threads must be auto (the cores no other process is using" in str(err.value)
    assert f"got {value}" in str(err.value) or f"got '{value}'" in str(err.value)


def test_threads_are_recorded_in_the_summary(tmp_path, monkeypatch):
    before = torch.get_num_threads()
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    try:
        train(compose_config(QUICK), run_dir=tmp_path / "omp")
        assert json.loads((tmp_path / "omp" / "summary.json").read_text())["threads"] == {
            "setting": "auto",
            "threads": 1,
            "from": "OMP_NUM_THREADS",
        }
        monkeypatch.delenv("OMP_NUM_THREADS")
        train(compose_config(QUICK + ["trainer.threads=1"]), run_dir=tmp_path / "fixed")
        fixed = json.loads((tmp_path / "fixed" / "summary.json").read_text())
        assert fixed["threads"] == {"setting": 1, "threads": 1}
        assert "1 thread at the end" in fixed["device"]
        train(compose_config(QUICK), run_dir=tmp_path / "auto")
        auto = json.loads((tmp_path / "auto" / "summary.json").read_text())
    finally:
        torch.set_num_threads(before)
    ceiling = thread_ceiling()[0]
    assert auto["threads"]["setting"] == "auto" and auto["threads"]["ceiling"] == ceiling
    assert 1 <= auto["threads"]["at_end"] <= ceiling


def test_slowdown_watch_takes_a_new_pace_for_a_finetunings_second_stage():
    clock, said = FakeClock(), []
    watch = SlowdownWatch(said.append, "cpu", use=FakeUse([0.0]), clock=clock)

    class Stage:
        stage = 1

    trainer = Stage()
    for stage, seconds in ((1, 0.1), (2, 0.5)):  # frozen backbone, then every layer
        trainer.stage = stage
        watch.on_epoch_start(trainer, stage, 100)
        for step in range(1, 100):
            clock.now += seconds
            watch.on_train_step(trainer, step, 100)
    assert said == [] and watch.pace == pytest.approx(0.5)


def test_slowdown_under_a_time_limit_says_fewer_steps_fit():
    clock, said = FakeClock(), []
    watch = SlowdownWatch(said.append, "cpu", use=FakeUse([1.0]), clock=clock, budgeted=True)
    for step in range(1, 80):
        clock.now += 0.1 if step <= 40 else 0.5
        watch.on_train_step(None, step, 100)
    assert "so fewer steps fit in trainer.time_limit" in said[0] and "estimate" not in said[0]


def test_cpu_use_counts_its_own_children_as_its_own():
    use = CpuUse()
    if not use.available:
        pytest.skip("needs Linux's /proc")
    time.sleep(1.5)
    before = use.others_busy()  # whatever else the machine does
    child = subprocess.Popen([sys.executable, "-c", "while True: pass"])  # as a DataLoader worker would be
    try:
        others = others_while_busy(use)
    finally:
        child.kill()
        child.wait()
    assert others < before + 0.5  # the child's busy core is not counted as another process's

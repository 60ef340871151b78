"""trainer.time_limit: the setting read and refused, the plan's arithmetic, the schedule fitted to it, and real
budgeted runs (on time, resumed with their plan, refitted after a slowdown)."""

from __future__ import annotations

import json
import time

import pytest
import torch

from cnntrain import optim
from cnntrain.checkpoint import load_checkpoint
from cnntrain.checks import check_config
from cnntrain.errors import ConfigError, RunInterrupted
from cnntrain.resuming import resume
from cnntrain.run import train
from cnntrain.time_fitting import rebuild_schedule
from cnntrain.time_plan import Costs, PaceCheck, Plan, Position, fit_plan, parse_time_limit
from cnntrain.trainer import Callback
from tests.conftest import StopAt, compose_config
from tests.helpers import run_cli

SMOKE = ["experiment=smoke", "trainer.progress=plain"]


@pytest.fixture(autouse=True)
def _one_thread():
    """One thread: on a shared machine, OpenMP threads that spin while another process runs make a step's time
    swing tenfold (issue 26), and these tests time real runs."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# -- the setting ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("2m", 120),
        ("90s", 90),
        ("1h", 3600),
        ("1h30m", 5400),
        ("2.5m", 150),
        ("150s", 150),
        ("2min", 120),
        ("90sec", 90),
        ("1hour", 3600),
        ("1h 30min", 5400),
        (" 2M ", 120),
    ],
)
def test_time_limits_are_read_with_their_units(text, seconds):
    limit = parse_time_limit(text)
    assert limit.seconds == seconds
    assert limit.text == text.strip()


def test_no_time_limit_is_none():
    assert parse_time_limit(None) is None


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (120, "trainer.time_limit=120 has no unit: write 120s, 2m or 1h."),
        (2.5, "trainer.time_limit=2.5 has no unit: write 2.5s, 2m or 1h."),
        (0, "trainer.time_limit must be a time above zero such as 90s, 2m, 2.5m or 1h30m (null: no limit), got 0."),
        (-5, "trainer.time_limit must be a time above zero such as 90s, 2m, 2.5m or 1h30m (null: no limit), got -5."),
        (
            "0s",
            "trainer.time_limit must be a time above zero such as 90s, 2m, 2.5m or 1h30m (null: no limit), got '0s'.",
        ),
        ("-2m", "trainer.time_limit must be null (no limit) or a time with its unit such as 90s, 2m, 2.5m or 1h30m"),
        ("abc", "got 'abc'."),
        ("2x", "got '2x'."),
        ("1m1m", "got '1m1m'."),
        ("m", "got 'm'."),
        (True, "got True."),
    ],
)
def test_bad_time_limits_are_refused_with_what_to_write(value, message):
    with pytest.raises(ConfigError) as err:
        parse_time_limit(value)
    assert message in str(err.value)


def test_check_config_refuses_a_bare_number_and_a_two_stage_finetune():
    with pytest.raises(ConfigError, match=r"trainer.time_limit=120 has no unit: write 120s, 2m or 1h\."):
        check_config(compose_config([*SMOKE, "trainer.time_limit=120"]))
    with pytest.raises(ConfigError, match=r"trainer.time_limit=1m cannot be combined with finetune.unfreeze_at"):
        check_config(compose_config([*SMOKE, "trainer.time_limit=1m", "finetune.unfreeze_at=1"]))
    assert check_config(compose_config([*SMOKE, "trainer.time_limit=1h30m"])).trainer.time_limit.seconds == 5400
    assert check_config(compose_config(SMOKE)).trainer.time_limit is None


def test_a_bad_time_limit_on_the_command_line_is_one_line_and_exit_2(tmp_path):
    result = run_cli("cnntrain", *SMOKE, "trainer.time_limit=120", cwd=tmp_path)
    assert result.returncode == 2
    assert "trainer.time_limit=120 has no unit: write 120s, 2m or 1h." in result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    assert not list(tmp_path.glob("outputs/*/*/checkpoints/*.pt"))  # refused before any training


# -- the arithmetic ------------------------------------------------------------------------------------------
COSTS = Costs(step_seconds=0.125, epoch_end_seconds=2.0, final_seconds=5.0)


def test_the_plan_fits_whole_epochs_and_a_part_of_the_last():
    # 100 s left at batch 20 of 100: e epoch ends leave floor((95 - 2e) / 0.125) = 760 - 16e batches; 7 ends
    # hold 648 of them (80 to end this epoch, 5 whole ones, 68 into the 7th); 8 ends could not reach the 8th.
    plan = fit_plan(100.0, COSTS, Position(epoch=1, batch=20, batches_per_epoch=100, max_epochs=10))
    assert plan == Plan(epochs=7, last_epoch_batches=68, batches_per_epoch=100)
    assert (plan.optimizer_steps, plan.last_epoch_steps, plan.partial) == (668, 68, True)
    assert plan.text() == "6 epochs + 68 steps"


def test_a_plan_inside_the_first_epoch_says_its_share_of_an_epoch():
    plan = Plan(epochs=1, last_epoch_batches=697, batches_per_epoch=844)
    assert plan.text() == "0.83 of an epoch"


def test_the_pace_is_looked_at_every_so_often_inside_an_epoch():
    pace = PaceCheck(every=6.0)
    assert not pace.due(10, 100.0)  # the first step of the epoch (or since a restart): the look starts here
    assert not pace.due(20, 105.9)
    assert pace.due(22, 106.0) and pace.take(22, 106.0) == pytest.approx(0.5)  # 12 steps in 6 s
    assert not pace.due(23, 106.5) and pace.due(30, 112.0) and pace.take(30, 112.0) == pytest.approx(0.75)
    pace.restart()  # an epoch's start: validation is not a step's time
    assert not pace.due(31, 200.0) and pace.due(33, 206.0) and pace.take(33, 206.0) == pytest.approx(3.0)


def test_the_plan_counts_optimizer_steps_with_accumulation():
    # 100.25 s: 7 ends hold 650 batches, 70 into the 7th epoch, rounded down to whole steps of 4 batches.
    plan = fit_plan(100.25, COSTS, Position(epoch=1, batch=20, batches_per_epoch=100, max_epochs=10, accumulate=4))
    assert plan == Plan(epochs=7, last_epoch_batches=68, batches_per_epoch=100, accumulate=4)
    assert (plan.steps_per_epoch, plan.last_epoch_steps, plan.optimizer_steps) == (25, 17, 6 * 25 + 17)


def test_the_plan_stops_at_trainer_epochs_when_time_is_plenty():
    plan = fit_plan(1000.0, COSTS, Position(epoch=1, batch=20, batches_per_epoch=100, max_epochs=3))
    assert plan == Plan(epochs=3, last_epoch_batches=100, batches_per_epoch=100)
    assert plan.text() == "3 epochs"


def test_a_spent_budget_ends_the_epoch_where_it_is():
    at = Position(epoch=2, batch=21, batches_per_epoch=100, max_epochs=10, accumulate=4)
    assert fit_plan(3.0, COSTS, at) == Plan(epochs=2, last_epoch_batches=24, batches_per_epoch=100, accumulate=4)
    assert fit_plan(-10.0, COSTS, Position(2, 21, 100, 10)) == Plan(2, 21, 100)


def test_at_an_epoch_end_the_plan_may_stop_there_or_go_on():
    at = Position(epoch=3, batch=100, batches_per_epoch=100, max_epochs=10)
    assert fit_plan(8.0, COSTS, at) == Plan(epochs=3, last_epoch_batches=100, batches_per_epoch=100)
    # 20 s: 2 ends leave (20 - 5 - 4) / 0.125 = 88 batches of epoch 4.
    assert fit_plan(20.0, COSTS, at) == Plan(epochs=4, last_epoch_batches=88, batches_per_epoch=100)


# -- the schedule --------------------------------------------------------------------------------------------
class _Holder:
    """What rebuild_schedule reads of a trainer."""

    def __init__(self, optimizer, schedule):
        self.optimizer, self.schedule = optimizer, schedule


def _stepped(schedule, optimizer, steps):
    for _ in range(steps):
        optimizer.step()
        schedule.scheduler.step()


@pytest.mark.parametrize("name", ["onecycle", "cosine"])
def test_the_schedule_is_rebuilt_for_the_fitted_steps_and_continues_from_the_step_taken(name):
    builder = {"onecycle": optim.onecycle, "cosine": lambda o, e, s: optim.cosine(o, e, s, min_lr=0.001)}[name]
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)
    trainer = _Holder(optimizer, builder(optimizer, 10, 10))  # 100 steps as configured
    _stepped(trainer.schedule, optimizer, 30)
    plan = Plan(epochs=5, last_epoch_batches=4, batches_per_epoch=10)  # 44 optimizer steps fit
    assert rebuild_schedule(trainer, lambda o, epochs: builder(o, epochs, 10), plan, 30, 3) is None
    assert trainer.schedule.scheduler.last_epoch == 30
    # Where a schedule built for 44 steps from the start is at step 30.
    fresh_optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)
    fresh = builder(fresh_optimizer, 4.4, 10)
    _stepped(fresh, fresh_optimizer, 30)
    assert optimizer.param_groups[0]["lr"] == pytest.approx(fresh_optimizer.param_groups[0]["lr"], rel=1e-9)
    _stepped(trainer.schedule, optimizer, 13)  # the 44th step uses the lr set after the 43rd
    if name == "onecycle":  # its last step's lr: initial lr (0.1 / 25) / final_div_factor (1e4)
        assert optimizer.param_groups[0]["lr"] == pytest.approx(0.1 / 25 / 1e4, rel=1e-6)
    else:  # cosine reaches min_lr after its last step
        _stepped(trainer.schedule, optimizer, 1)
        assert optimizer.param_groups[0]["lr"] == pytest.approx(0.001, abs=1e-9)


def test_a_plateau_schedule_and_a_constant_rate_are_kept():
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)
    plateau = optim.plateau(optimizer, 10, 10)
    trainer = _Holder(optimizer, plateau)
    assert rebuild_schedule(trainer, lambda o, e: pytest.fail("not rebuilt"), Plan(2, 5, 10), 15, 1) is None
    assert trainer.schedule is plateau


# -- real runs -----------------------------------------------------------------------------------------------
class SlowSteps(Callback):
    """Every training step takes `seconds` longer (a slower model or machine)."""

    def __init__(self, seconds):
        self.seconds = seconds

    def on_train_step(self, trainer, step, steps):
        time.sleep(self.seconds)


class LastLr(Callback):
    """The learning rate after the run's last optimizer step, and the plan the fit started with."""

    def on_fit_start(self, trainer):
        self.start_plan = (trainer.epochs, trainer.last_epoch_batches)

    def on_fit_end(self, trainer):
        self.lr = trainer.current_lr()


def _budgeted(limit, *extra):
    return [
        *SMOKE,
        "trainer.epochs=50",
        f"trainer.time_limit={limit}",
        "scheduler=cosine",
        "scheduler.min_lr=0.001",
        *extra,
    ]


def test_a_budgeted_run_ends_on_time_with_its_schedule_annealed(tmp_path):
    last = LastLr()
    began = time.monotonic()
    summary = train(compose_config(_budgeted("10s")), tmp_path / "run", callbacks=[SlowSteps(0.03), last])
    took = time.monotonic() - began
    budget = summary["time_limit"]
    assert summary["status"] == "completed"
    # On time: counted from the job's start (the Python API); 1 s of tolerance for what runs after the
    # summary (the end table, the folder's lock released).
    assert budget["counted_from"] == "job start"
    assert budget["seconds_used"] <= 10.0 and took <= 11.0
    assert budget["stop"] in ("plan", "cut")
    assert summary["stopped_early"].startswith("the time limit (10s): ")
    assert 1 <= budget["fitted_epochs"] < 50 and summary["epochs"] == budget["fitted_epochs"]
    assert budget["step_seconds"] >= 0.03
    if budget["stop"] == "plan":  # the schedule ran to its end on the fitted last step
        assert last.lr == pytest.approx(0.001, abs=1e-6)
    saved = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert saved["time_limit"]["fitted_steps"] == budget["fitted_steps"]
    assert (tmp_path / "run" / "checkpoints" / "best.pt").is_file()


def test_a_budgeted_run_from_the_command_line_counts_the_whole_process(tmp_path):
    began = time.monotonic()
    result = run_cli("cnntrain", *_budgeted("15s"), "hydra.run.dir=run", cwd=tmp_path, env={"OMP_NUM_THREADS": "1"})
    took = time.monotonic() - began
    assert result.returncode == 0, result.stderr
    budget = json.loads((tmp_path / "run" / "summary.json").read_text())["time_limit"]
    assert budget["counted_from"] == "process start"
    # The tolerance, 2 s: Python's start before cnntrain's import, and after the summary the end table and the
    # interpreter's exit (torch's), which no run can time; the plan keeps 1.8 s free for them.
    assert budget["seconds_used"] <= 15.0 and took <= 17.0
    assert "time limit 15s: " in result.stdout


def test_a_resumed_budgeted_run_keeps_its_plan_and_counts_the_time_used(tmp_path, capsys):
    run_dir = tmp_path / "run"
    with pytest.raises(RunInterrupted):
        train(compose_config(_budgeted("8s")), run_dir, callbacks=[SlowSteps(0.03), StopAt(2, 3)])
    saved = load_checkpoint(run_dir / "checkpoints" / "last.pt")["callbacks"]["TimeBudget"]
    # last.pt is epoch 1's end (StopAt asks after the checkpointer's turn at that step), 13 batches done.
    assert saved["plan"]["epochs"] < 50 and saved["used"] > 0 and saved["at"] == [1, 13]
    plan = Plan(**saved["plan"])
    capsys.readouterr()
    last = LastLr()
    summary = resume(run_dir, callbacks=[SlowSteps(0.03), last])
    said = capsys.readouterr().out
    assert f"s of it were used before; the fitted plan ({plan.optimizer_steps:,} steps, {plan.text()}) goes on" in said
    budget = summary["time_limit"]
    # The plan the resumed fit starts with: the saved one, or what the time left made of it at once.
    at_resume = [refit for refit in budget["refits"][len(saved["refits"]) :] if refit["at"] == "resume"]
    starts = [(plan.epochs, plan.last_epoch_batches)] + [
        (refit["fitted_epochs"], refit["last_epoch_steps"]) for refit in at_resume[:1]
    ]
    assert last.start_plan in starts
    assert budget["used_before_resume_seconds"] == pytest.approx(saved["used"], abs=1e-3)
    assert summary["status"] == "completed" and budget["seconds_used"] <= 8.0


class VirtualClock:
    """time.monotonic() plus seconds added by a callback: a slowdown the budget sees, without sleeping."""

    def __init__(self):
        self.extra = 0.0

    def __call__(self):
        return time.monotonic() + self.extra


class SlowsDown(Callback):
    """Steps take `before` seconds more until epoch `at`, then `after` seconds more (on the virtual clock)."""

    def __init__(self, clock, at, before, after):
        self.clock, self.at, self.before, self.after = clock, at, before, after

    def on_train_step(self, trainer, step, steps):
        epoch = len(trainer.history) + 1
        self.clock.extra += self.after if epoch >= self.at else self.before


def test_a_slowdown_mid_run_is_refitted(tmp_path, monkeypatch):
    import cnntrain.run_callbacks as run_callbacks
    from cnntrain.time_budget import TimeBudget

    clock = VirtualClock()
    monkeypatch.setattr(run_callbacks, "TimeBudget", lambda *args, **kwargs: TimeBudget(*args, **kwargs, clock=clock))
    # Steps of 0.5 s (virtual) for 2 epochs of 13 steps, then of 2 s: a budget of 60 s first fits about 100 steps.
    summary = train(compose_config(_budgeted("60s")), tmp_path / "run", callbacks=[SlowsDown(clock, 3, 0.5, 2.0)])
    budget = summary["time_limit"]
    # Refitted inside epoch 3 already (the step time is looked at every 6 s, a tenth of the budget).
    slowed = next(refit for refit in budget["refits"] if refit["at"].startswith("epoch 3 step"))
    assert slowed["step_seconds"] >= 1.5
    assert budget["fitted_steps"] < 3 * 13 + 10  # at most 10 steps of 2 s after epoch 3, not some 60 more
    assert summary["epochs"] == budget["fitted_epochs"]
    assert summary["status"] == "completed" and budget["seconds_used"] <= 60.0


@pytest.fixture
def virtual_clock(monkeypatch):
    """Every TimeBudget of the test times its run on a VirtualClock (SlowsDown adds to it)."""
    import cnntrain.run_callbacks as run_callbacks
    from cnntrain.time_budget import TimeBudget

    clock = VirtualClock()
    monkeypatch.setattr(run_callbacks, "TimeBudget", lambda *args, **kwargs: TimeBudget(*args, **kwargs, clock=clock))
    return clock


class Ending(Callback):
    """The schedule's step count when fit ends."""

    def on_fit_end(self, trainer):
        self.schedule_steps = trainer.schedule.scheduler.last_epoch


def test_accumulation_ema_tta_and_batch_limits_take_the_plan(tmp_path, virtual_clock):
    ending = Ending()
    overrides = ["trainer.accumulate_grad_batches=2", "trainer.ema=0.9", "trainer.tta=hflip"]
    cfg = compose_config(_budgeted("30s", *overrides, "trainer.limit_train_batches=9"))
    summary = train(cfg, tmp_path / "run", callbacks=[SlowsDown(virtual_clock, 99, 0.5, 0.5), ending])
    budget = summary["time_limit"]
    # 9 batches an epoch (the limit applies first) make 5 optimizer steps of 2 batches (the last one of 1).
    assert budget["fitted_steps"] == (budget["fitted_epochs"] - 1) * 5 + budget["last_epoch_steps"]
    assert ending.schedule_steps == budget["fitted_steps"]  # every fitted step taken, and no more
    assert summary["status"] == "completed" and summary["epochs"] == budget["fitted_epochs"] < 50


def test_early_stopping_still_ends_a_budgeted_run(tmp_path, virtual_clock):
    cfg = compose_config(_budgeted("60s", "trainer.early_stopping.patience=1", "trainer.early_stopping.min_delta=10"))
    summary = train(cfg, tmp_path / "run", callbacks=[SlowsDown(virtual_clock, 99, 0.1, 0.1)])
    assert summary["epochs"] == 2 and summary["stopped_early"].startswith("early stopping: ")
    assert summary["time_limit"]["stop"] == summary["stopped_early"]


def test_a_resume_may_give_a_finished_budgeted_run_more_time_but_not_none(tmp_path, virtual_clock):
    run_dir = tmp_path / "run"
    first = train(compose_config(_budgeted("15s")), run_dir, callbacks=[SlowsDown(virtual_clock, 99, 0.3, 0.3)])
    assert first["time_limit"]["stop"] == "plan"
    with pytest.raises(ConfigError, match="without a time limit: its learning-rate schedule is fitted"):
        resume(run_dir, ["trainer.time_limit=null"])
    # The time counted on is what the last checkpoint saved at its epoch's end: the first run's test came after it.
    saved = load_checkpoint(run_dir / "checkpoints" / "last.pt")["callbacks"]["TimeBudget"]["used"]
    virtual_clock.extra = 0.0
    more = resume(run_dir, ["trainer.time_limit=40s"], callbacks=[SlowsDown(virtual_clock, 99, 0.3, 0.3)])
    budget = more["time_limit"]
    assert budget["used_before_resume_seconds"] == pytest.approx(saved, abs=0.001)
    assert 0.5 * first["time_limit"]["seconds_used"] < saved <= first["time_limit"]["seconds_used"]
    assert budget["refits"][-1]["at"] in ("resume",) or any(refit["at"] == "resume" for refit in budget["refits"])
    assert more["epochs"] > first["epochs"] and more["status"] == "completed" and budget["seconds_used"] <= 40.0


def test_every_rank_of_a_distributed_run_takes_rank_zeros_plan(tmp_path):
    """Two processes under torchrun: rank 0 fits the plan and shares it; a rank on another plan would wait in a
    collective the other never calls (the run would hang), so finishing on time is the check."""
    launcher = ("-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2")
    began = time.monotonic()
    result = run_cli(
        "python -m cnntrain",
        *_budgeted("25s"),
        "hydra.run.dir=run",
        cwd=tmp_path,
        env={"OMP_NUM_THREADS": "1"},
        python=launcher,
        timeout=120,
    )
    took = time.monotonic() - began
    assert result.returncode == 0, result.stderr
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    budget = summary["time_limit"]
    assert summary["status"] == "completed" and budget["stop"] in ("plan", "cut", "trainer.epochs")
    assert summary["epochs"] == budget["fitted_epochs"] or budget["stop"] == "cut"
    assert result.stdout.count("time limit 25s: ") >= 1 and result.stdout.count("cnntrain result") == 1
    assert budget["seconds_used"] <= 25.0 and took <= 30.0  # torchrun's own start and end: 5 s of tolerance


def test_the_first_run_of_a_command_counts_from_the_process_start_and_later_ones_from_their_own():
    import cnntrain
    from cnntrain.process import budget_start, count_from_process_start

    count_from_process_start()  # what cli.main does
    assert budget_start() == (cnntrain._IMPORTED_AT, "process start")
    began = time.monotonic()
    start, counted_from = budget_start()  # a sweep's second job in this process, or the Python API
    assert counted_from == "job start" and began <= start <= time.monotonic()


def test_a_cosine_with_warm_up_and_a_per_epoch_schedule_are_rebuilt_where_they_were():
    def warm_cosine(o, e, s):
        return optim.cosine(o, e, s, warmup_epochs=1, min_lr=0.001)

    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)
    trainer = _Holder(optimizer, warm_cosine(optimizer, 10, 10))
    _stepped(trainer.schedule, optimizer, 30)
    assert rebuild_schedule(trainer, lambda o, e: warm_cosine(o, e, 10), Plan(5, 4, 10), 30, 3) is None
    fresh_optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)
    _stepped(warm_cosine(fresh_optimizer, 4.4, 10), fresh_optimizer, 30)
    assert optimizer.param_groups[0]["lr"] == pytest.approx(fresh_optimizer.param_groups[0]["lr"], rel=1e-9)
    # step: x0.5 every 2 epochs; 3 epochs done -> 0.1 * 0.5 once, whatever the fitted length.
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)
    trainer = _Holder(optimizer, optim.step(optimizer, 10, 10, step_size=2, gamma=0.5))
    _stepped(trainer.schedule, optimizer, 3)
    assert (
        rebuild_schedule(trainer, lambda o, e: optim.step(o, e, 10, step_size=2, gamma=0.5), Plan(5, 4, 10), 30, 3)
        is None
    )
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.05)
    # a warm-up longer than the fitted run: said, and the schedule goes on as it was
    kept = trainer.schedule = warm_cosine(optimizer, 10, 10)
    lr = optimizer.param_groups[0]["lr"]
    problem = rebuild_schedule(trainer, lambda o, e: optim.cosine(o, e, 10, warmup_epochs=5), Plan(2, 4, 10), 12, 1)
    assert "leaves no epochs for the cosine decay" in problem
    assert trainer.schedule is kept and optimizer.param_groups[0]["lr"] == lr

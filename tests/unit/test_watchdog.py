"""The watchdog's detectors on a clock the test turns, and nan / inf as trainers write them."""

from __future__ import annotations

import math

from agent.attempt.watchdog import Anomaly, Watchdog
from agent.trainers.command import decode_report
from agent.trainers.parsing.trainer_output import metrics_of, parse_log_dict
from shared import events as ev
from shared.jobspec import CommandJob
from shared.watch import WatchPolicy


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def dog(policy: WatchPolicy | None = None, gpus: tuple[int, ...] = (0, 1)) -> tuple[Watchdog, list[Anomaly], Clock]:
    found: list[Anomaly] = []
    clock = Clock()
    return Watchdog(policy or WatchPolicy(), list(gpus), found.append, clock=clock), found, clock


def points(w: Watchdog, step: int | None, epoch: float | None, values: dict[str, float]) -> None:
    """One report's points, as the reporter hands them over (column-wise)."""
    n = len(values)
    w.metric_points([step] * n, [epoch] * n, list(values), list(values.values()))


def test_nan_in_a_watched_metric_fires_once_with_its_step() -> None:
    w, found, _ = dog(WatchPolicy(on_nan="stop"))
    points(w, 1, 0.1, {"loss": 1.0, "grad_norm": math.nan})  # grad_norm is not watched
    assert found == []
    points(w, 7, 0.2, {"eval_loss": math.inf})
    points(w, 8, 0.3, {"loss": math.nan})
    assert found == [Anomaly("nan", "stop", "eval_loss was inf at step 7", metric="eval_loss", step=7, value="inf")]


def test_nan_without_a_step_names_the_epoch_and_patterns_are_case_blind() -> None:
    w, found, _ = dog(WatchPolicy(nan_metrics=("ACC",)))
    points(w, None, 2.5, {"loss": math.nan, "val_accuracy": -math.inf})
    assert [a.detail for a in found] == ["val_accuracy was -inf at epoch 2.5"]


def test_a_stall_counts_from_the_first_output_and_from_each_new_step() -> None:
    w, found, clock = dog(WatchPolicy(stall_timeout_s=60))
    clock.now += 3600  # loading a model before any output is no stall
    w.check()
    assert found == []
    w.output()
    w.progress(5)
    clock.now += 59
    w.check()
    w.progress(5)  # the same step again (a checkpoint line) is no progress
    w.output()  # nor is output, once the trainer reports steps
    clock.now += 1
    w.check()
    w.check()
    assert found == [Anomaly("stall", "notify", "stalled: no new step for 60s (the last was step 5)", step=5)]


def test_a_trainer_without_steps_stalls_on_silence_and_a_zero_timeout_is_off() -> None:
    w, found, clock = dog(WatchPolicy(stall_timeout_s=10))
    w.output()
    clock.now += 9
    w.output()
    clock.now += 9
    w.check()
    assert found == []
    clock.now += 1
    w.check()
    assert [a.detail for a in found] == ["stalled: no output for 10s"]
    off, none, clock = dog(WatchPolicy(stall_timeout_s=0))
    off.output()
    clock.now += 1e6
    off.check()
    assert none == []


def test_idle_gpus_are_those_below_the_threshold_for_the_whole_timeout() -> None:
    w, found, clock = dog(WatchPolicy(idle_timeout_s=30, idle_gpu_util_pct=5, on_idle="stop"), gpus=(2, 3))
    w.gpu_utilisation({2: 80.0, 3: 1.0, 0: 0.0})  # GPU 0 is another job's
    clock.now += 20
    w.gpu_utilisation({2: 2.0, 3: None})  # not measured: not idle either
    clock.now += 20
    w.gpu_utilisation({2: 3.0, 3: 0.0})
    w.check()
    assert found == []
    clock.now += 10
    w.check()
    assert found == [Anomaly("idle_gpu", "stop", "GPU 2 below 5% utilisation for 30s", gpus=(2,))]


def test_a_simulated_gpus_utilisation_comes_from_the_gpu_util_metric() -> None:
    set_to: list[tuple[int, float | None]] = []
    w = Watchdog(WatchPolicy(), [4, 6], lambda a: None, simulate_util=lambda g, p: set_to.append((g, p)))
    points(w, None, None, {"gpu_util": 50.0})
    points(w, None, None, {"gpu_util.1": 7.0, "gpu_util.9": 1.0, "gpu_util.x": 1.0})
    assert set_to == [(4, 50.0), (6, 50.0), (6, 7.0)]


def test_bare_nan_and_inf_of_transformers_4_are_read() -> None:
    logged = parse_log_dict("{'loss': nan, 'grad_norm': inf, 'learning_rate': 1e-05, 'epoch': 0.5}")
    assert logged is not None
    values = metrics_of(logged)
    assert math.isnan(values["loss"]) and values["grad_norm"] == math.inf and values["learning_rate"] == 1e-05
    assert parse_log_dict("{'loss': -inf, 'hist': [nan, 1]}") == {"loss": "-inf", "hist": ["nan", 1]}
    assert parse_log_dict("{'note': 'a: nan, b', 'x': 1}") == {"note": "a: nan, b", "x": 1}  # text stays text
    assert parse_log_dict("{'loss': nan + 1}") is None  # still only literals


def test_python_json_nan_in_a_report_is_read() -> None:
    report = decode_report('{"step": 3, "metrics": {"loss": NaN, "x": -Infinity, "y": Infinity}}')
    assert report.step == 3 and math.isnan(report.metrics["loss"])
    assert (report.metrics["x"], report.metrics["y"]) == (-math.inf, math.inf)


def test_nonfinite_points_travel_as_json_and_come_back() -> None:
    event = ev.MetricsRecorded.of_points(job_id="j", attempt=1, ts_s=1.0, first_seq=0, step=[1, 2, 3, 4],
                                         epoch=[None] * 4, name=["loss"] * 4,
                                         value=[1.5, math.nan, math.inf, -math.inf], point_ts_s=[1.0] * 4)
    back = ev.decode_job_event(ev.encode(event))
    assert isinstance(back, ev.MetricsRecorded)
    values = back.values()
    assert values[0] == 1.5 and math.isnan(values[1]) and values[2:] == [math.inf, -math.inf]
    assert back.nonfinite == [(1, "nan"), (2, "inf"), (3, "-inf")]


def test_a_job_keeps_what_it_set_and_takes_the_rest_from_the_settings() -> None:
    settings = WatchPolicy(on_nan="stop", stall_timeout_s=600)
    spec = settings.filled_in(CommandJob(command=["x"], stall_timeout_s=0, nan_metrics=["acc"]))
    assert (spec.on_nan, spec.stall_timeout_s, spec.nan_metrics, spec.on_idle) == ("stop", 0, ["acc"], "notify")
    assert WatchPolicy().for_job(spec) == WatchPolicy(nan_metrics=("acc",), on_nan="stop", stall_timeout_s=0)
    assert WatchPolicy().for_job(CommandJob(command=["x"])) == WatchPolicy()  # an old job: the defaults

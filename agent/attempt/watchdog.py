"""The watchdog of one attempt: what a live process hides (README: Watching the training).

- nan: a watched metric (by default any whose name contains `loss`) is nan or inf;
- stall: no new step for `stall_timeout_s` (from a trainer that reports no steps: no output),
  counted from its first output, so loading a model is no stall unless it takes that long too;
- idle_gpu: a GPU of the job below `idle_gpu_util_pct` for `idle_timeout_s`, from the
  heartbeat's samples (NVML, or the utilisation a simulated GPU's trainer set).

Each kind fires once per attempt; what happens then (notify, or stop and fail) is the run's
business (TrainerRun.anomaly). Pure but for the clock, which tests may pass in.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from typing import Literal, NamedTuple

from shared.watch import Action, WatchPolicy

Kind = Literal["nan", "stall", "idle_gpu"]
# A metric of this name from a job on simulated GPUs sets their utilisation (all of the job's
# GPUs; `gpu_util.<i>`: its i-th, cuda:i as the trainer sees it), so idle GPUs are testable
# without a GPU. On real GPUs it is an ordinary metric.
SIMULATED_UTIL_METRIC = "gpu_util"


class Anomaly(NamedTuple):
    kind: Kind
    action: Action
    detail: str  # said as the job's reason if it stops it: "loss was nan at step 3000"
    metric: str | None = None
    step: int | None = None
    value: str | None = None
    gpus: tuple[int, ...] = ()


def spelled(value: float) -> str:
    return "nan" if math.isnan(value) else "inf" if value > 0 else "-inf"


class Watchdog:
    def __init__(self, policy: WatchPolicy, gpu_ids: list[int], found: Callable[[Anomaly], None], *,
                 simulate_util: Callable[[int, float | None], None] | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.policy = policy
        self.gpu_ids = list(gpu_ids)
        self._found = found
        self._simulate_util = simulate_util
        self._clock = clock
        self.fired: set[Kind] = set()
        self._last_step: int | None = None
        self._saw_steps = False
        self._since: float | None = None  # the stall clock: the last new step (or output)
        self._idle_since: dict[int, float] = {}

    def _fire(self, anomaly: Anomaly) -> None:
        if anomaly.kind not in self.fired:
            self.fired.add(anomaly.kind)
            self._found(anomaly)

    # ---- what the attempt reports (Reporter) -----------------------------------------------
    def metric_points(self, steps: list[int | None], epochs: list[float | None], names: list[str],
                      values: list[float]) -> None:
        """Points as the reporter takes them, column-wise. Checked value by value only when the
        batch holds something to look at: a finite sum means no nan or inf (either would carry
        into it), and no name starting with gpu_util means no simulated utilisation."""
        if math.isfinite(sum(values)) and not any(n.startswith(SIMULATED_UTIL_METRIC) for n in set(names)):
            return
        for step, epoch, name, value in zip(steps, epochs, names, values, strict=True):
            self._point(step, epoch, name, value)

    def _point(self, step: int | None, epoch: float | None, name: str, value: float) -> None:
        if name == SIMULATED_UTIL_METRIC or name.startswith(SIMULATED_UTIL_METRIC + "."):
            self._simulated(name, value)
        if "nan" not in self.fired and not math.isfinite(value) and self.policy.watches_for_nan(name):
            at = f" at step {step}" if step is not None else f" at epoch {epoch:g}" if epoch is not None else ""
            self._fire(Anomaly("nan", self.policy.on_nan, f"{name} was {spelled(value)}{at}",
                               metric=name, step=step, value=spelled(value)))

    def _simulated(self, name: str, value: float) -> None:
        if self._simulate_util is None or not math.isfinite(value):
            return
        _, _, which = name.partition(".")
        if not which:
            chosen = self.gpu_ids
        elif which.isdigit() and int(which) < len(self.gpu_ids):
            chosen = [self.gpu_ids[int(which)]]
        else:
            return
        for gpu in chosen:
            self._simulate_util(gpu, value)

    def progress(self, step: int | None) -> None:
        if step is not None and step != self._last_step:
            self._last_step = step
            self._saw_steps = True
            self._since = self._clock()

    def output(self) -> None:
        if self._since is None or not self._saw_steps:
            self._since = self._clock()

    # ---- what the agent samples --------------------------------------------------------------
    def gpu_utilisation(self, utilisation: Mapping[int, float | None]) -> None:
        """One heartbeat's samples of this host's GPUs (index -> percent, None: not measured)."""
        now = self._clock()
        for gpu in self.gpu_ids:
            pct = utilisation.get(gpu)
            if pct is None or pct >= self.policy.idle_gpu_util_pct:
                self._idle_since.pop(gpu, None)
            else:
                self._idle_since.setdefault(gpu, now)

    def check(self) -> None:
        """Called about once a second while the trainer runs: the clocks' detectors."""
        now = self._clock()
        policy = self.policy
        if policy.stall_timeout_s and self._since is not None and now - self._since >= policy.stall_timeout_s:
            what = (f"no new step for {policy.stall_timeout_s:g}s (the last was step {self._last_step})"
                    if self._saw_steps else f"no output for {policy.stall_timeout_s:g}s")
            self._fire(Anomaly("stall", policy.on_stall, f"stalled: {what}", step=self._last_step))
        if policy.idle_timeout_s:
            idle = tuple(sorted(g for g, since in self._idle_since.items() if now - since >= policy.idle_timeout_s))
            if idle:
                self._fire(Anomaly(
                    "idle_gpu", policy.on_idle,
                    f"GPU{'s' if len(idle) > 1 else ''} {', '.join(map(str, idle))} below "
                    f"{policy.idle_gpu_util_pct:g}% utilisation for {policy.idle_timeout_s:g}s",
                    gpus=idle))

"""What the agent's watchdog looks for in a job's training (README: Watching the training), and
what it does when it finds it: `notify` (an `anomaly` event and a `job.anomaly` webhook) or
`stop` (gracefully; the job then ends `failed` with the anomaly as its reason).

A job may set each field; the gateway fills those it leaves out from its `[gateway.watch]`
settings when it accepts the job, so the job's spec shows the policy it runs under. The agent
falls back to these defaults only for a job submitted before the fields existed.
"""

from __future__ import annotations

from typing import Annotated, Literal, TypeVar

import msgspec
from msgspec import Meta

Action = Literal["notify", "stop"]
MetricPattern = Annotated[str, Meta(min_length=1, max_length=128)]
Seconds = Annotated[float, Meta(ge=0, le=365 * 86400)]
Percent = Annotated[float, Meta(ge=0, le=100)]
S = TypeVar("S", bound=msgspec.Struct)

# The fields a job may set, each also a setting (names shared with shared.jobspec).
WATCH_FIELDS = ("nan_metrics", "on_nan", "stall_timeout_s", "on_stall", "idle_gpu_util_pct",
                "idle_timeout_s", "on_idle")


class WatchPolicy(msgspec.Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    # A metric is watched for nan/inf when its name contains one of these (case-insensitive).
    nan_metrics: tuple[MetricPattern, ...] = ("loss",)
    on_nan: Action = "notify"
    # No new step (or, from a trainer that reports none, no output) for this long after its
    # first output: a stall. 0: not watched.
    stall_timeout_s: Seconds = 1800.0
    on_stall: Action = "notify"
    # A GPU of the job below this utilisation for `idle_timeout_s` (0: not watched): idle.
    idle_gpu_util_pct: Percent = 5.0
    idle_timeout_s: Seconds = 1800.0
    on_idle: Action = "notify"

    def for_job(self, spec: object) -> WatchPolicy:
        """This policy with whatever the job set itself."""
        own = {name: value for name in WATCH_FIELDS if (value := getattr(spec, name, None)) is not None}
        if "nan_metrics" in own:
            own["nan_metrics"] = tuple(own["nan_metrics"])
        return msgspec.structs.replace(self, **own) if own else self

    def filled_in(self, spec: S) -> S:
        """`spec` with each watch field it left out (None) taken from this policy: what the
        gateway stores, so the job shows the policy it runs under."""
        missing = {name: list(value) if isinstance(value := getattr(self, name), tuple) else value
                   for name in WATCH_FIELDS if getattr(spec, name, 0) is None}
        return msgspec.structs.replace(spec, **missing) if missing else spec

    def watches_for_nan(self, metric: str) -> bool:
        name = metric.lower()
        return any(pattern.lower() in name for pattern in self.nan_metrics)

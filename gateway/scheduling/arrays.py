"""Job arrays and sweeps (like Slurm's `--array`, or a grid search): one request, many jobs.

`"array": {"count": N}` makes N copies of the job; `"sweep": {"learning_rate": [1e-4, 3e-4],
"lora_rank": [8, 16]}` one job per combination (the cross product, in the order given). Each
child is an ordinary job with `array_id` (the parent's id, which names the whole array) and
`array_index`, and `TRAINYARD_ARRAY_INDEX` (and, for a sweep, `TRAINYARD_SWEEP`, its values as
JSON) in its environment. A sweep value goes where the trainer takes it: a field of the job
(`learning_rate` of a swift job, `config.optimizer.lr` of a diffusion-pipe job, a dotted path
into a dict field), else `--name value` in an hf script's `args`, else an environment variable
of a command job. `max_parallel` caps how many of the array run at once.

Pure: expanding a request and the scheduler's cap are functions of plain data.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Mapping
from typing import Any

import msgspec

from gateway.scheduling.placement import JobNeeds, QueuedJob
from shared.jobspec import SPECS, CommandJob, HfJob, JobRequest
from shared.jobstate import ON_HOST, JobState

MAX_CHILDREN = 1000
ARRAY_ENV = ("TRAINYARD_ARRAY_INDEX", "TRAINYARD_SWEEP")  # what each child's environment gets
# Fields a sweep key may not name (env and args take values their own way; the rest define
# the array itself or what it waits for).
NOT_SWEPT = frozenset({"env", "args", "command", "array", "sweep", "max_parallel", "array_id", "array_index",
                       "depends_on", "depends_mode", "trainer"})


class ArrayError(ValueError):
    """The array or sweep cannot be expanded; `field` names what is wrong."""

    def __init__(self, message: str, field: str) -> None:
        super().__init__(message)
        self.field = field


def combinations(spec: JobRequest) -> list[dict[str, Any]]:
    """Each child's sweep values ({} for each of an array's copies)."""
    if spec.sweep:
        keys = list(spec.sweep)
        values = [spec.sweep[k] for k in keys]
        return [dict(zip(keys, combo, strict=True)) for combo in itertools.product(*values)]
    return [{} for _ in range(spec.array.count if spec.array else 0)]


def expand(spec: JobRequest, parent_id: str) -> list[JobRequest]:
    """The children of an array or sweep request, in index order. ArrayError if a sweep key
    fits nowhere, a value does not suit its field, or there would be too many."""
    combos = combinations(spec)
    if len(combos) > MAX_CHILDREN:
        raise ArrayError(f"{len(combos)} jobs: at most {MAX_CHILDREN} in one array or sweep", "sweep")
    base = msgspec.structs.replace(spec, array=None, sweep={}, array_id=parent_id)
    return [_child(base, index, values) for index, values in enumerate(combos)]


def _child(base: JobRequest, index: int, values: dict[str, Any]) -> JobRequest:
    raw = msgspec.to_builtins(base)
    env = dict(raw.get("env") or {})
    args = list(raw.get("args") or [])
    for key, value in values.items():
        if _set_field(raw, key, value, type(base)):
            continue
        if isinstance(base, HfJob):
            args = _with_arg(args, f"--{key}", _text(value))
        elif isinstance(base, CommandJob) and key.isidentifier():
            env[key] = _text(value)
        else:
            raise ArrayError(f"sweep key {key!r} is not a field of a {base.trainer} job", f"sweep.{key}")
    env["TRAINYARD_ARRAY_INDEX"] = str(index)
    if values:
        env["TRAINYARD_SWEEP"] = json.dumps(values)
    raw.update(env=env, array_index=index, **({"args": args} if isinstance(base, HfJob) else {}))
    try:
        return msgspec.convert(raw, SPECS[base.trainer])
    except msgspec.ValidationError as exc:
        raise ArrayError(f"sweep values: {exc}", "sweep") from None


def _set_field(raw: dict[str, Any], key: str, value: Any, spec_type: type[JobRequest]) -> bool:
    """Set a field (or a dotted path into a dict field, e.g. config.optimizer.lr); False if the
    key names none. Lists, env, args and the array fields are not swept this way."""
    head, _, rest = key.partition(".")
    if head not in spec_type.__struct_fields__ or head in NOT_SWEPT:
        return False
    if not rest:
        raw[head] = value
        return True
    node = raw.setdefault(head, {})
    *path, last = rest.split(".")
    for part in path:
        if not isinstance(node, dict):
            return False
        node = node.setdefault(part, {})
    if not isinstance(node, dict):
        return False
    node[last] = value
    return True


def _with_arg(args: list[str], flag: str, value: str) -> list[str]:
    """`args` with `flag value` (an existing `flag v` or `flag=v` replaced)."""
    out, skip = [], False
    for i, arg in enumerate(args):
        if skip:
            skip = False
            continue
        if arg == flag and i + 1 < len(args):
            skip = True
            continue
        if arg.startswith(flag + "="):
            continue
        out.append(arg)
    return [*out, flag, value]


def _text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value)


def parallel_limits(queue: list[QueuedJob], states: Mapping[str, JobState],
                    needs: Mapping[str, JobNeeds]) -> tuple[list[QueuedJob], dict[str, str]]:
    """The queued jobs an array's `max_parallel` lets start now (in queue order), and why the
    others wait: each array's jobs on hosts count, then the first queued ones fill it."""
    limited = {q.needs.spec.array_id: q.needs.spec.max_parallel for q in queue
               if q.needs.spec.array_id and q.needs.spec.max_parallel}
    if not limited:
        return queue, {}
    running = dict.fromkeys(limited, 0)
    for job_id, state in states.items():
        if state.status in ON_HOST and (n := needs.get(job_id)) is not None and n.spec.array_id in running:
            running[n.spec.array_id] += 1
    ready: list[QueuedJob] = []
    waiting: dict[str, str] = {}
    for q in queue:
        array, cap = q.needs.spec.array_id, q.needs.spec.max_parallel
        if not array or not cap:
            ready.append(q)
        elif running[array] < cap:
            running[array] += 1  # (placed or not this pass, it holds its turn)
            ready.append(q)
        else:
            waiting[q.job_id] = f"array {array} runs {running[array]} of at most {cap} at once (max_parallel)"
    return ready, waiting

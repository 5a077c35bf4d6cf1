"""Arrays and sweeps (gateway/scheduling/arrays.py): expansion and max_parallel, on plain data."""

from __future__ import annotations

import json

import pytest

from gateway.projection.projector import JobNeeds
from gateway.scheduling.arrays import ArrayError, expand, parallel_limits
from gateway.scheduling.placement import QueuedJob
from shared.jobspec import ArraySpec, CommandJob, DiffusionPipeJob, HfJob, JobRequest, SwiftJob
from shared.jobstate import JobState, JobStatus

PARENT = "job_20261130_000000_aaaaaa"


def test_a_sweep_is_the_cross_product_in_order_with_values_on_the_trainers_fields() -> None:
    spec = SwiftJob(model_path="m", data_path="d", sweep={"learning_rate": [1e-4, 3e-4], "lora_rank": [8, 16]})
    children = expand(spec, PARENT)
    assert [(c.learning_rate, c.lora_rank, c.array_index) for c in children] == [
        (1e-4, 8, 0), (1e-4, 16, 1), (3e-4, 8, 2), (3e-4, 16, 3)]
    assert all(c.array_id == PARENT and c.sweep == {} and c.array is None for c in children)
    assert children[3].env == {"TRAINYARD_ARRAY_INDEX": "3",
                               "TRAINYARD_SWEEP": json.dumps({"learning_rate": 3e-4, "lora_rank": 16})}


def test_sweep_values_reach_hf_flags_command_env_and_dict_paths() -> None:
    hf = HfJob(script="t.py", args=["--learning_rate", "1", "--seed=3", "--keep"], sweep={"learning_rate": [0.1],
                                                                                          "seed": [7]})
    assert expand(hf, PARENT)[0].args == ["--keep", "--learning_rate", "0.1", "--seed", "7"]
    cmd = CommandJob(command=["x"], env={"A": "1"}, sweep={"LR": [0.5, "x"]})
    assert [c.env["LR"] for c in expand(cmd, PARENT)] == ["0.5", "x"] and expand(cmd, PARENT)[0].env["A"] == "1"
    dp = DiffusionPipeJob(model_type="flux", dataset={}, config={"optimizer": {"lr": 1, "type": "adamw"}},
                          sweep={"config.optimizer.lr": [2e-5, 4e-5], "config.epochs": [3]})
    assert [c.config for c in expand(dp, PARENT)] == [
        {"optimizer": {"lr": 2e-5, "type": "adamw"}, "epochs": 3},
        {"optimizer": {"lr": 4e-5, "type": "adamw"}, "epochs": 3}]
    assert dp.config["optimizer"]["lr"] == 1  # the request itself is untouched


def test_an_array_is_n_copies_with_their_index() -> None:
    children = expand(CommandJob(command=["x"], array=ArraySpec(count=3), max_parallel=2), PARENT)
    assert [(c.array_index, c.env, c.max_parallel) for c in children] == [
        (0, {"TRAINYARD_ARRAY_INDEX": "0"}, 2), (1, {"TRAINYARD_ARRAY_INDEX": "1"}, 2),
        (2, {"TRAINYARD_ARRAY_INDEX": "2"}, 2)]


@pytest.mark.parametrize(("spec", "field"), [
    (SwiftJob(model_path="m", data_path="d", sweep={"nope": [1]}), "sweep.nope"),
    (SwiftJob(model_path="m", data_path="d", sweep={"lora_rank": ["eight"]}), "sweep"),
    (SwiftJob(model_path="m", data_path="d", sweep={"env": [1]}), "sweep.env"),
    (CommandJob(command=["x"], sweep={"a": list(range(40)), "b": list(range(40))}), "sweep"),
])
def test_a_sweep_that_fits_nowhere_or_is_too_big_is_refused(spec: JobRequest, field: str) -> None:
    with pytest.raises(ArrayError) as raised:
        expand(spec, PARENT)
    assert raised.value.field == field


def queued(job_id: str, array: str | None, cap: int | None, seq: int) -> QueuedJob:
    spec = CommandJob(command=["x"], array_id=array, max_parallel=cap)
    return QueuedJob(job_id, 0, JobNeeds(priority=5, submit_seq=seq, gpus=0, gpu_ids=(), host=None,
                                         min_gpu_memory_gb=None, spec=spec))


def test_max_parallel_counts_the_arrays_jobs_on_hosts_then_the_queue_in_order() -> None:
    arr = "job_20261130_000000_bbbbbb"
    running = queued("r1", arr, 2, 0)
    queue = [queued("a1", arr, 2, 1), queued("free", None, None, 2), queued("a2", arr, 2, 3)]
    states = {"r1": JobState(job_id="r1", status=JobStatus.RUNNING)}
    needs = {"r1": running.needs, **{q.job_id: q.needs for q in queue}}
    ready, waiting = parallel_limits(queue, states, needs)
    assert [q.job_id for q in ready] == ["a1", "free"]
    assert waiting == {"a2": f"array {arr} runs 2 of at most 2 at once (max_parallel)"}
    states["r1"] = JobState(job_id="r1", status=JobStatus.SUCCEEDED)
    assert [q.job_id for q in parallel_limits(queue, states, needs)[0]] == ["a1", "free", "a2"]

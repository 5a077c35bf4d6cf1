"""The keeper's claim on a run dir (agent/process/keeper.py), with real processes: one run dir,
one trainer, ever; and an exit status that needs no new disk block at the end."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from agent.process import tree as process
from agent.process.spawner import Spawner


@pytest.fixture
async def spawner() -> AsyncIterator[Spawner]:
    spawner = Spawner()
    yield spawner
    await spawner.close()


def _run_dir(tmp_path: Path) -> Path:
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    for name in ("stdout.log", "stderr.log"):
        (run_dir / name).touch()
    return run_dir


async def _spawn(spawner: Spawner, run_dir: Path, code: str) -> process.ProcRef:
    spawned = await spawner.spawn([sys.executable, "-c", code], run_dir, {}, run_dir,
                                  run_dir / "stdout.log", run_dir / "stderr.log")
    return spawned.keeper if spawned.started_here else pytest.fail("the first start did not start")


async def test_a_second_start_into_the_same_run_dir_gets_the_first_keeper_and_starts_nothing(
    spawner: Spawner, tmp_path: Path,
) -> None:
    run_dir = _run_dir(tmp_path)
    first = await _spawn(spawner, run_dir, "import time; print('once', flush=True); time.sleep(1)")
    again = await spawner.spawn([sys.executable, "-c", "print('twice')"], run_dir, {}, run_dir,
                                run_dir / "stdout.log", run_dir / "stderr.log")
    assert again == (first, False)
    await process.wait_gone(first)
    assert (run_dir / "stdout.log").read_text() == "once\n"
    assert process.read_exit_status(run_dir) == 0
    # Once the keeper is gone its record still holds the run dir; its pid is no longer "alive".
    late = await spawner.spawn([sys.executable, "-c", "print('twice')"], run_dir, {}, run_dir,
                               run_dir / "stdout.log", run_dir / "stderr.log")
    assert not late.started_here and not late.keeper.is_alive()
    assert (run_dir / "stdout.log").read_text() == "once\n"


async def test_a_run_dir_with_output_but_no_keeper_record_is_refused(spawner: Spawner, tmp_path: Path) -> None:
    run_dir = _run_dir(tmp_path)
    (run_dir / "stdout.log").write_text("from an earlier start\n")
    with pytest.raises(OSError, match="already holds output of an earlier start"):
        await spawner.spawn([sys.executable, "-c", "print('again')"], run_dir, {}, run_dir,
                            run_dir / "stdout.log", run_dir / "stderr.log")
    assert (run_dir / "stdout.log").read_text() == "from an earlier start\n"


async def test_the_exit_status_is_read_from_the_reserved_file_when_the_rename_did_not_happen(
    spawner: Spawner, tmp_path: Path,
) -> None:
    run_dir = _run_dir(tmp_path)
    keeper = await _spawn(spawner, run_dir, "import sys; sys.exit(7)")
    await process.wait_gone(keeper)
    assert process.read_exit_status(run_dir) == 7
    (run_dir / "exit_status").rename(run_dir / "exit_status.tmp")  # as a rename refused on a full disk leaves it
    assert process.read_exit_status(run_dir) == 7


async def test_concurrent_starts_into_one_run_dir_start_one_trainer(tmp_path: Path) -> None:
    run_dir = _run_dir(tmp_path)
    spawners = [Spawner() for _ in range(4)]  # four helpers, as if four agents raced
    try:
        results = await asyncio.gather(*(
            s.spawn([sys.executable, "-c", "print('ran', flush=True)"], run_dir, {}, run_dir,
                    run_dir / "stdout.log", run_dir / "stderr.log") for s in spawners))
    finally:
        await asyncio.gather(*(s.close() for s in spawners))
    assert sum(r.started_here for r in results) == 1
    assert len({r.keeper.pid for r in results}) == 1
    deadline = asyncio.get_running_loop().time() + 10
    while process.read_exit_status(run_dir) is None:
        assert asyncio.get_running_loop().time() < deadline
        await asyncio.sleep(0.02)
    assert (run_dir / "stdout.log").read_text() == "ran\n"

"""The agent's wake-up on writes to a trainer's output files (agent/attempt/filewatch.py)."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import pytest

from agent.attempt.filewatch import FileWatch

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="inotify is Linux's")


@pytest.fixture
def files(tmp_path: Path) -> list[Path]:
    paths = [tmp_path / "stdout.log", tmp_path / "stderr.log"]
    for path in paths:
        path.touch()
    return paths


async def test_a_write_wakes_the_wait(files: list[Path]) -> None:
    watch = FileWatch.open(files)
    assert watch is not None
    never = asyncio.get_running_loop().create_future()
    try:
        waiting = asyncio.create_task(watch.wait(never, timeout_s=60))
        await asyncio.sleep(0.05)
        assert not waiting.done(), "nothing was written yet"
        with open(files[1], "a") as f:
            f.write("a line\n")
        await asyncio.wait_for(waiting, 10)  # woken by the write, long before its 60 s
    finally:
        watch.close()


async def test_cleared_writes_do_not_wake_and_the_wait_ends_on_its_timeout_or_the_other_future(
    files: list[Path],
) -> None:
    watch = FileWatch.open(files)
    assert watch is not None
    try:
        files[0].write_text("before\n")
        watch.clear()
        never = asyncio.get_running_loop().create_future()
        waiting = asyncio.create_task(watch.wait(never, timeout_s=0.3))
        await asyncio.sleep(0.1)
        assert not waiting.done(), "a cleared write must not wake it"
        await asyncio.wait_for(waiting, 10)
        exited = asyncio.get_running_loop().create_future()
        waiting = asyncio.create_task(watch.wait(exited, timeout_s=60))
        await asyncio.sleep(0.05)
        exited.set_result(None)  # the trainer's end
        await asyncio.wait_for(waiting, 10)
    finally:
        watch.close()


def test_missing_files_mean_polling(tmp_path: Path) -> None:
    assert FileWatch.open([tmp_path / "not-there.log"]) is None

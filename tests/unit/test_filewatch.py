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


def watches(watch: FileWatch) -> int:
    """How many inotify watches the descriptor holds now (the kernel lists them in fdinfo)."""
    fdinfo = Path(f"/proc/self/fdinfo/{watch._fd}").read_text()
    return sum(line.startswith("inotify wd:") for line in fdinfo.splitlines())


def test_after_the_first_write_the_trainer_writes_without_a_watch(files: list[Path]) -> None:
    """Once a write has been noticed, the watch is gone until the agent has read and cleared:
    a trainer printing many lines does not pay the kernel's notification for each write (a
    standing watch made a trainer printing 100k flushed lines run 25-80 % longer)."""
    watch = FileWatch.open(files)
    assert watch is not None
    try:
        watch.clear()
        assert watches(watch) == 2
        with open(files[0], "a") as f:
            f.write("a line\n")
            f.flush()
            assert watches(watch) == 1  # stdout's watch fired and went; stderr's is still there
            f.write("another line\n")
        watch.clear()  # the agent read: watched again
        assert watches(watch) == 2
    finally:
        watch.close()

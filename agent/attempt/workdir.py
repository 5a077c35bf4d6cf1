"""An attempt's code: the archive named by the job's `workdir`, fetched from the Object Store
and unpacked into the run dir before the trainer starts (shared/workdir.py)."""

from __future__ import annotations

import asyncio
import logging
import tempfile
from pathlib import Path

from nats.js import JetStreamContext
from nats.js.errors import NotFoundError

from agent.trainers.base import LaunchError
from shared import subjects
from shared.workdir import ArchiveRefused, object_name, unpack

log = logging.getLogger("trainyard.agent.workdir")
TRIES = 5


async def fetch_workdir(js: JetStreamContext, ref: str, run_dir: Path) -> int:
    """Unpack archive `ref` into `run_dir`; returns its file count. A fetch that breaks off (NATS
    failing over, a node restarting) is tried again; an archive that is gone is a LaunchError
    saying so (the job fails with that reason)."""
    with tempfile.NamedTemporaryFile(dir=run_dir.parent, prefix=".workdir-", suffix=".tar.gz") as tmp:
        for attempt in range(TRIES):
            try:
                store = await js.object_store(subjects.WORKDIR_BUCKET)
                tmp.seek(0)
                tmp.truncate()
                await store.get(object_name(ref), writeinto=tmp)  # type: ignore[arg-type]
                tmp.flush()
                break
            except NotFoundError:
                raise LaunchError(f"the job's code archive {ref} is gone from the object store (expired or "
                                  "deleted): submit it again with --workdir") from None
            except Exception as exc:  # a timeout, a broken connection, a digest that did not match
                if attempt == TRIES - 1:
                    raise LaunchError(f"could not fetch the job's code archive {ref}: {exc}") from None
                log.warning("fetching %s failed (%s); trying again", ref, exc)
                await asyncio.sleep(0.5 * 2**attempt)
        try:
            return await asyncio.to_thread(unpack, Path(tmp.name), run_dir)
        except (ArchiveRefused, OSError) as exc:
            raise LaunchError(f"could not unpack the job's code archive {ref}: {exc}") from None

"""Files to and from the cluster: `submit --workdir DIR` packs and uploads the code, `trainyard
files JOB` lists what a job left on its host, `trainyard download JOB PATH` fetches one file
with a progress bar, resuming a download that broke off (its `.part` file)."""

from __future__ import annotations

import argparse
import datetime
import os
from pathlib import Path
from typing import Any

import httpx
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn, TransferSpeedColumn

from shared.workdir import pack
from trainyard.gateway_client import ClientError, Gateway
from trainyard.render import output, print_table

API = "/api/v1/training"
# The gateway's cap (workdir_max_bytes, 100 MiB by default) decides; this only keeps the CLI
# from packing a whole disk before being told.
PACK_LIMIT_BYTES = 4 * 1024**3


def upload_workdir(gw: Gateway, directory: str, limit_bytes: int = PACK_LIMIT_BYTES) -> str:
    """Pack `directory` (its .gitignore honoured) and upload it; the `workdir` to submit with."""
    archive = pack(Path(directory), limit_bytes)
    try:
        with open(archive, "rb") as f:
            stored = gw.call("POST", f"{API}/workdirs", content=f,
                             headers={"Content-Type": "application/gzip",
                                      "Content-Length": str(archive.stat().st_size)})
    finally:
        archive.unlink(missing_ok=True)
    return str(stored["workdir"])


def cmd_files(gw: Gateway, args: argparse.Namespace) -> None:
    listing = gw.call("GET", f"{API}/jobs/{args.job}/files")

    def render(found: dict[str, Any]) -> None:
        rows = [{"path": f["path"], "size": f["size"],
                 "modified": datetime.datetime.fromtimestamp(f["mtime_s"]).strftime("%Y-%m-%d %H:%M:%S")}
                for f in found["files"]]
        print_table(rows, [("path", "path"), ("size", "bytes"), ("modified", "modified")],
               title=f"{len(rows)} files of {found['job_id']} on {found['host']}"
                     + (" (the first 10,000)" if found["truncated"] else ""))

    output(listing, args.json, render)


def cmd_download(gw: Gateway, args: argparse.Namespace) -> None:
    """Into OUT.part, then renamed to OUT: an interrupted download resumes from the part."""
    out = Path(args.output or Path(args.path).name)
    part = out.with_name(out.name + ".part")
    have = part.stat().st_size if part.exists() else 0
    headers = {"Range": f"bytes={have}-"} if have else {}
    try:
        with gw.http.stream("GET", f"{API}/jobs/{args.job}/files/{args.path}", headers=headers,
                            timeout=None) as r:
            if r.status_code == 416:  # the part is the whole file already
                r.read()
                os.replace(part, out)
                print(f"{out} ({have:,} bytes)")
                return
            if r.status_code >= 400:
                r.read()
                raise gw.failure(r)
            if r.status_code == 200:
                have = 0  # no range served: start over
            total = have + int(r.headers.get("content-length", 0))
            columns = (TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
                       TimeRemainingColumn())
            with open(part, "ab" if have else "wb") as f, Progress(*columns, disable=args.json) as bar:
                task = bar.add_task(out.name, total=total, completed=have)
                for chunk in r.iter_bytes():
                    f.write(chunk)
                    bar.update(task, advance=len(chunk))
    except httpx.HTTPError as exc:
        raise ClientError(f"download broken off ({exc}); run the same command again to resume from "
                          f"{part.stat().st_size if part.exists() else 0:,} bytes") from None
    os.replace(part, out)
    print(f"{out} ({out.stat().st_size:,} bytes)")

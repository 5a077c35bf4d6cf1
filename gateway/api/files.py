"""Code in, results out: `POST /workdirs` takes a code archive (`submit --workdir`), `GET
/jobs/{id}/files` lists what a job left in its dir on its host, `GET /jobs/{id}/files/{path}`
streams one file (HTTP Range: an interrupted download resumes where it stopped)."""

from __future__ import annotations

import re
from urllib.parse import quote

from litestar import Request, get, post
from litestar.handlers import HTTPRouteHandler
from litestar.response import Stream
from litestar.types import Guard

from gateway.errors import BadRequest, Conflict, RangeNotSatisfiable
from gateway.runtime import GatewayRuntime
from gateway.services.host_files import FileListing
from gateway.services.lookup import shown_state
from gateway.services.workdirs import StoredWorkdir

_RANGE = re.compile(r"^bytes=(\d+)-(\d*)$")


def files_routes(runtime: GatewayRuntime, prefix: str, *, viewer: list[Guard],
                 operator: list[Guard]) -> list[HTTPRouteHandler]:
    def host_of(job_id: str) -> str:
        state = shown_state(runtime.projector, job_id)
        if not state.host:
            raise Conflict(f"job {job_id} has not been placed on a host yet: it has no files")
        return state.host

    @post(f"{prefix}/workdirs", guards=operator, status_code=201, request_max_body_size=None)
    async def upload_workdir(request: Request) -> StoredWorkdir:
        """A gzipped tar of the job's code (`trainyard submit --workdir DIR` makes and sends it),
        at most `workdir_max_bytes` (100 MiB; 413 past it). Give the answer's `workdir` as the
        job's `workdir`: the agent unpacks it into each attempt's run dir."""
        declared = request.headers.get("content-length", "")
        return await runtime.workdirs.store(request.stream(), int(declared) if declared.isdigit() else None)

    @get(f"{prefix}/jobs/{{job_id:str}}/files", guards=viewer)
    async def job_files(job_id: str) -> FileListing:
        """The files in the job's dir on the host it ran on: every attempt's run dir, as
        `<attempt>/<path>`, with size and mtime (at most 10,000; `truncated` says so)."""
        return await runtime.host_files.listing(host_of(job_id), job_id)

    @get(f"{prefix}/jobs/{{job_id:str}}/files/{{path:path}}", guards=viewer)
    async def job_file(job_id: str, path: str, request: Request) -> Stream:
        """One file, streamed from its host. `Range: bytes=N-` (or N-M) resumes a download: 206."""
        host = host_of(job_id)
        offset, end = 0, None
        if (wanted := request.headers.get("range")) is not None:
            found = _RANGE.match(wanted.strip())
            if found is None:
                raise BadRequest(f"Range {wanted!r}: only one range of bytes, as bytes=START- or bytes=START-END")
            offset = int(found.group(1))
            end = int(found.group(2)) + 1 if found.group(2) else None
            if end is not None and end <= offset:
                raise RangeNotSatisfiable(f"Range {wanted!r}: its end comes before its start")
        size, body = await runtime.host_files.open(host, job_id, path.lstrip("/"), offset, end)
        stop = size if end is None else min(end, size)
        if wanted is not None and offset >= size:
            raise RangeNotSatisfiable(f"Range {wanted!r}: the file has {size} bytes")
        headers = {"Accept-Ranges": "bytes", "Content-Length": str(max(0, stop - offset)),
                   "Content-Disposition": f"attachment; filename*=UTF-8''{quote(path.rsplit('/', 1)[-1])}"}
        if wanted is not None:
            headers["Content-Range"] = f"bytes {offset}-{max(offset, stop) - 1}/{size}"
        return Stream(body, media_type="application/octet-stream", headers=headers,
                      status_code=206 if wanted is not None else 200)

    return [upload_workdir, job_files, job_file]

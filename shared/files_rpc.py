"""A job's files on its host, asked for over core NATS request/reply (subjects.host_files): the
gateway lists them or reads one chunk at a time; the agent answers from the job's dir only.

Why not through an Object Store: a 20 GB checkpoint would first be copied whole into JetStream
(twice the disk, no first byte until the copy ends); chunks by request stream at once, hold
constant memory, and resume at any offset (HTTP Range), which is what a download needs.
"""

from __future__ import annotations

from typing import Literal

import msgspec

CHUNK_BYTES = 4 * 1024 * 1024  # under nats-server's max_payload (8 MB) with room for the envelope
MAX_LISTED = 10_000


class FilesRequest(msgspec.Struct, kw_only=True):
    op: Literal["list", "read"]
    job_id: str
    path: str = ""  # read: relative to the job's dir (`<attempt>/...`)
    offset: int = 0
    length: int = CHUNK_BYTES


class FileEntry(msgspec.Struct, kw_only=True):
    path: str  # relative to the job's dir: `<attempt>/<path in the run dir>`
    size: int
    mtime_s: float


class FilesReply(msgspec.Struct, kw_only=True):
    error: str = ""
    missing: bool = False  # the job's dir or the file is not there (404, not 400)
    files: list[FileEntry] = []
    truncated: bool = False  # more than MAX_LISTED files: the first ones, by path
    size: int = 0  # read: the file's whole size
    data: bytes = b""


request_encoder = msgspec.msgpack.Encoder()
request_decoder = msgspec.msgpack.Decoder(FilesRequest)
reply_decoder = msgspec.msgpack.Decoder(FilesReply)

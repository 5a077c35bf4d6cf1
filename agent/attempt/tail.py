"""Reading a trainer's output file from where the last read stopped."""

from __future__ import annotations

import os
from pathlib import Path

from agent.output.lines import LineSplitter

READ_CHUNK = 1 << 20
READ_CHUNKS_AT_ONCE = 8


class FileTail:
    """Reads what was appended to one output file since the last read."""

    def __init__(self, path: Path, stream: str, max_line_bytes: int, offset: int = 0) -> None:
        self.path = path
        self.stream = stream
        self.offset = offset
        self._fd: int | None = None
        self.splitter = LineSplitter(max_line_bytes)

    def read(self) -> bytes:
        if self._fd is None:
            try:
                self._fd = os.open(self.path, os.O_RDONLY)
            except FileNotFoundError:
                return b""
            os.lseek(self._fd, self.offset, os.SEEK_SET)
        chunks = []
        for _ in range(READ_CHUNKS_AT_ONCE):  # bounded, so that a backlog can stop the reading
            data = os.read(self._fd, READ_CHUNK)
            if not data:
                break
            chunks.append(data)
            if len(data) < READ_CHUNK:
                break
        out = b"".join(chunks)
        self.offset += len(out)
        return out

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

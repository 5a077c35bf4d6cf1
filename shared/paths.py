"""Paths in requests must lie under the deployment's allowed roots (DESIGN §10), checked by the
gateway at submit and again by the agent right before launch, with its own roots (a symlink made
after submit, or another host's filesystem, cannot lead elsewhere).

The path is checked as text (normalised, `..` folded), then with symlinks resolved as far as
they exist on the gateway's filesystem (a link inside a root that points outside is refused).
Percent-encodings and backslashes are refused outright: no client has a reason to send them in
a JSON path, and some tool on the way might decode them.
"""

from __future__ import annotations

import fcntl
import os
import re
import sys
import unicodedata
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

_ENCODED = re.compile(r"%[0-9a-fA-F]{2}")


def private_dir(path: Path) -> Path:
    """Create `path` (and its parents) if needed and make it the owner's alone (0700); from now on
    this process creates files no other user may read (umask 077): API tokens, credentials, the
    projection (which holds jobs' requests), state and log files (security review M5)."""
    os.umask(0o077)
    path.mkdir(parents=True, exist_ok=True)
    path.chmod(0o700)
    return path


def write_private(path: Path, data: bytes) -> None:
    """Write `data` to `path` readable by the owner alone (0600), atomically (a temporary file
    beside it, then renamed): a reader never sees half a token, key or config."""
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def hold_lock(path: Path) -> int | str:
    """An exclusive lock on `path`, held as long as this process lives (by the returned
    descriptor, which records our pid), or the pid of the process that holds it."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "unknown"
        os.close(fd)
        return holder
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


class PathNotAllowed(ValueError):
    pass


class RootNotAllowed(ValueError):
    """A configured allowed root would expose what no job may read (refused at start)."""


class Forbidden(NamedTuple):
    path: str
    what: str
    # Also no root inside it (the data dir, trainyard's code); a Python prefix such as /usr only
    # may not be inside a root.
    nor_inside: bool = True


def trainyard_own_paths() -> list[Forbidden]:
    """What no allowed root may expose, on any host: trainyard's Python environment (its
    `trainyard` executable mints tokens) and trainyard's own code."""
    code = Path(__file__).resolve().parents[1]
    own = [Forbidden(str(Path(sys.prefix).resolve()), "trainyard's Python environment", nor_inside=False),
           Forbidden(str(Path(sys.prefix).resolve() / "bin"), "trainyard's executables")]
    own += [Forbidden(str(code / package), "trainyard's own code")
            for package in ("gateway", "agent", "shared", "trainyard")]
    return own


def check_roots(roots: list[str], forbidden: list[Forbidden], inside_ok: Sequence[str] = ()) -> list[str]:
    """The roots, resolved; RootNotAllowed naming the first that would expose a forbidden path.
    `inside_ok`: folders inside a forbidden one that may be roots (the data dir's workspace)."""
    resolved = [os.path.realpath(r) for r in roots]
    allowed_inside = [os.path.realpath(ok) for ok in inside_ok]
    for root in resolved:
        for f in forbidden:
            real = os.path.realpath(f.path)
            inside = f.nor_inside and _under(root, [real]) and not _under(root, allowed_inside)
            if _under(real, [root]) or inside:
                raise RootNotAllowed(f"allowed root {root} would expose {real} ({f.what}); "
                                     "choose a root that holds only training data and scripts")
    return resolved


def confine(raw: str, roots: list[str], what: str) -> str:
    """The normalised absolute path, or PathNotAllowed naming why."""
    if not raw or "\x00" in raw:
        raise PathNotAllowed(f"{what} is empty or contains a NUL byte")
    # Look-alike characters (fullwidth dots and slashes) become what they imitate before checking.
    text = unicodedata.normalize("NFKC", raw)
    if text != raw:
        raise PathNotAllowed(f"{what} contains characters that normalise to other characters")
    if _ENCODED.search(text) or "\\" in text:
        raise PathNotAllowed(f"{what} contains percent-encoded characters or backslashes")
    if not os.path.isabs(text):
        if not roots:
            raise PathNotAllowed(f"{what} must be absolute")
        text = os.path.join(roots[0], text)
    path = os.path.normpath(text)
    if not _under(path, [os.path.normpath(os.path.abspath(r)) for r in roots]):
        raise PathNotAllowed(f"{what} {raw!r} is outside the allowed roots ({', '.join(roots) or 'none'}); "
                             "the allowed_roots setting (TRAINYARD_ALLOWED_ROOTS) of the gateway and agents adds one")
    real = os.path.realpath(path)
    if real != path and not _under(real, [os.path.realpath(r) for r in roots]):
        raise PathNotAllowed(f"{what} {raw!r} leads through a symlink to {real}, outside the allowed roots")
    return path


def _under(path: str, roots: list[str]) -> bool:
    return any(path == root or path.startswith(root.rstrip(os.sep) + os.sep) for root in roots)

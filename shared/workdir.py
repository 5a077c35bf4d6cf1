"""Code that travels with a job (`submit --workdir DIR`): packed as a gzipped tar by the CLI,
checked and stored by content (`sha256:<hex>`) by the gateway in a JetStream Object Store,
unpacked by the agent into each attempt's run dir.

Packing honours DIR/.gitignore (pathspec, git's own matching rules) and leaves out `.git`.
An archive is accepted only when every member is a plain file or directory under its root:
no absolute names, no `..`, no links or devices (tarfile's "data" filter then unpacks it).
"""

from __future__ import annotations

import hashlib
import os
import tarfile
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pathspec

DEFAULT_MAX_BYTES = 100 * 1024**2
REF_PREFIX = "sha256:"


class ArchiveRefused(ValueError):
    """An archive the gateway does not store (not a .tar.gz, or a member that escapes)."""


class TooLarge(ValueError):
    pass


def ref_of(digest_hex: str) -> str:
    return REF_PREFIX + digest_hex


def object_name(ref: str) -> str:
    """The Object Store name of an archive (`sha256-<hex>.tar.gz`)."""
    return ref.replace(":", "-", 1) + ".tar.gz"


def files_to_pack(root: Path) -> Iterator[Path]:
    """Files under `root` (relative), sorted, without `.git` and what root/.gitignore ignores."""
    ignore_file = root / ".gitignore"
    spec = (pathspec.GitIgnoreSpec.from_lines(ignore_file.read_text(errors="replace").splitlines())
            if ignore_file.is_file() else None)
    for dirpath, dirnames, filenames in os.walk(root):
        here = Path(dirpath).relative_to(root)
        kept = []
        for name in sorted(dirnames):
            rel = here / name
            if name == ".git" or (spec is not None and spec.match_file(f"{rel.as_posix()}/")):
                continue
            kept.append(name)
        dirnames[:] = kept
        for name in sorted(filenames):
            rel = here / name
            if spec is not None and spec.match_file(rel.as_posix()):
                continue
            if (root / rel).is_file():  # links to files are packed as the file they point to
                yield rel


def pack(root: Path, max_bytes: int = DEFAULT_MAX_BYTES) -> Path:
    """A temporary .tar.gz of `root` (the caller deletes it); TooLarge past `max_bytes`."""
    root = root.resolve()
    if not root.is_dir():
        raise ValueError(f"{root}: not a directory")
    fd, name = tempfile.mkstemp(suffix=".tar.gz", prefix="trainyard-workdir-")
    os.close(fd)
    out = Path(name)
    try:
        with tarfile.open(out, "w:gz") as tar:
            for rel in files_to_pack(root):
                info = tar.gettarinfo(str(root / rel), arcname=rel.as_posix())
                info.uid = info.gid = 0
                info.uname = info.gname = ""
                with open(root / rel, "rb") as f:
                    tar.addfile(info, f)
                if out.stat().st_size > max_bytes:
                    raise TooLarge(f"{root}: its archive passes {max_bytes / 1024**2:.0f} MiB (leave big files "
                                   "out with .gitignore, or give --cwd a directory under the allowed roots)")
        if out.stat().st_size > max_bytes:
            raise TooLarge(f"{root}: its archive is {out.stat().st_size / 1024**2:.1f} MiB, over "
                           f"{max_bytes / 1024**2:.0f} MiB (leave big files out with .gitignore)")
    except BaseException:
        out.unlink(missing_ok=True)
        raise
    return out


def check_archive(path: Path) -> str:
    """The archive's ref if the gateway may store it; ArchiveRefused says why not."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1024 * 1024), b""):
            digest.update(block)
    try:
        with tarfile.open(path, "r:gz") as tar:
            for member in tar:
                _check_member(member)
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise ArchiveRefused(f"not a gzipped tar archive ({exc})") from None
    return ref_of(digest.hexdigest())


def _check_member(member: tarfile.TarInfo) -> None:
    name = member.name
    if name.startswith("/") or ".." in Path(name).parts:
        raise ArchiveRefused(f"member {name!r} leaves the archive's root")
    if not (member.isfile() or member.isdir()):
        raise ArchiveRefused(f"member {name!r} is not a plain file or directory")


def unpack(path: Path, dest: Path) -> int:
    """Unpack into `dest` (checked again: the agent trusts no archive); returns the file count."""
    count = 0
    with tarfile.open(path, "r:gz") as tar:
        members = list(tar)
        for member in members:
            _check_member(member)
            count += member.isfile()
        tar.extractall(dest, members=members, filter="data")
    return count

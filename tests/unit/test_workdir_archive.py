"""Code archives (`submit --workdir`): what is packed, what the gateway refuses to store, and what
the agent unpacks."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import pytest

from shared.workdir import ArchiveRefused, TooLarge, check_archive, files_to_pack, object_name, pack, unpack


def _project(root: Path) -> Path:
    (root / "src").mkdir(parents=True)
    (root / "src" / "train.py").write_text("print('hi')\n")
    (root / "data.txt").write_text("42\n")
    (root / "weights.bin").write_bytes(b"\0" * 100)
    (root / "runs").mkdir()
    (root / "runs" / "old.log").write_text("x")
    (root / ".git").mkdir()
    (root / ".git" / "HEAD").write_text("ref")
    (root / ".gitignore").write_text("*.bin\nruns/\n")
    return root


def test_packing_honours_gitignore_and_leaves_git_out(tmp_path: Path) -> None:
    root = _project(tmp_path / "p")
    assert [p.as_posix() for p in files_to_pack(root)] == [".gitignore", "data.txt", "src/train.py"]
    archive = pack(root)
    try:
        ref = check_archive(archive)
        assert ref.startswith("sha256:") and object_name(ref) == ref.replace("sha256:", "sha256-") + ".tar.gz"
        dest = tmp_path / "run"
        dest.mkdir()
        assert unpack(archive, dest) == 3
        assert (dest / "src" / "train.py").read_text() == "print('hi')\n"
        assert not (dest / "weights.bin").exists() and not (dest / ".git").exists()
    finally:
        archive.unlink()


def test_a_directory_over_the_cap_is_refused_and_leaves_no_file(tmp_path: Path) -> None:
    import os

    root = tmp_path / "big"
    root.mkdir()
    (root / "noise").write_bytes(os.urandom(200_000))
    before = set(Path(os.environ.get("TMPDIR", "/tmp")).glob("trainyard-workdir-*"))
    with pytest.raises(TooLarge, match="MiB"):
        pack(root, max_bytes=100_000)
    assert set(Path(os.environ.get("TMPDIR", "/tmp")).glob("trainyard-workdir-*")) == before


def _archive(tmp_path: Path, add) -> Path:
    path = tmp_path / "a.tar.gz"
    with tarfile.open(path, "w:gz") as tar:
        add(tar)
    return path


def _file(tar: tarfile.TarFile, name: str) -> None:
    info = tarfile.TarInfo(name)
    info.size = 2
    tar.addfile(info, io.BytesIO(b"hi"))


@pytest.mark.parametrize("make, why", [
    (lambda tar: _file(tar, "../escape.py"), "leaves the archive's root"),
    (lambda tar: _file(tar, "/etc/cron.d/x"), "leaves the archive's root"),
    (lambda tar: tar.addfile(_link("link", "/etc/passwd")), "not a plain file"),
    (lambda tar: tar.addfile(_link("hard", "../../x", tarfile.LNKTYPE)), "not a plain file"),
])
def test_archives_that_would_write_outside_the_run_dir_are_refused(tmp_path: Path, make, why: str) -> None:
    archive = _archive(tmp_path, make)
    with pytest.raises(ArchiveRefused, match=why):
        check_archive(archive)
    dest = tmp_path / "run"
    dest.mkdir()
    with pytest.raises(ArchiveRefused):  # the agent checks again: it trusts no archive
        unpack(archive, dest)
    assert list(dest.iterdir()) == []


def _link(name: str, target: str, kind: bytes = tarfile.SYMTYPE) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = target
    return info


def test_what_is_not_a_gzipped_tar_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "x.tar.gz"
    path.write_bytes(b"PK\x03\x04 a zip, not a tar")
    with pytest.raises(ArchiveRefused, match="not a gzipped tar"):
        check_archive(path)

"""Paths in requests must lie under the deployment's allowed roots (DESIGN §10).

The path is checked as text (normalised, `..` folded), then with symlinks resolved as far as
they exist on the gateway's filesystem (a link inside a root that points outside is refused).
Percent-encodings and backslashes are refused outright: no client has a reason to send them in
a JSON path, and some tool on the way might decode them.
"""

from __future__ import annotations

import os
import re
import unicodedata

_ENCODED = re.compile(r"%[0-9a-fA-F]{2}")


class PathNotAllowed(ValueError):
    pass


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
        raise PathNotAllowed(f"{what} {raw!r} is outside the allowed roots ({', '.join(roots) or 'none'})")
    real = os.path.realpath(path)
    if real != path and not _under(real, [os.path.realpath(r) for r in roots]):
        raise PathNotAllowed(f"{what} {raw!r} leads through a symlink to {real}, outside the allowed roots")
    return path


def _under(path: str, roots: list[str]) -> bool:
    return any(path == root or path.startswith(root.rstrip(os.sep) + os.sep) for root in roots)

"""Paths in requests must lie under the deployment's allowed roots (DESIGN §10).

The gateway checks the path as text (it may not share the agent's filesystem); the agent checks
again with symlinks resolved before it uses the path.
"""

from __future__ import annotations

import os
import unicodedata


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
    if not os.path.isabs(text):
        if not roots:
            raise PathNotAllowed(f"{what} must be absolute")
        text = os.path.join(roots[0], text)
    path = os.path.normpath(text)
    for root in roots:
        root = os.path.normpath(os.path.abspath(root))
        if path == root or path.startswith(root.rstrip(os.sep) + os.sep):
            return path
    raise PathNotAllowed(f"{what} {raw!r} is outside the allowed roots ({', '.join(roots) or 'none'})")

"""Turn raw trainer output into log lines: split, handle `\\r` progress bars, find levels.

Hot path (every byte a trainer prints goes through here), so the work per line is a couple of
string operations and at most two bounded regex searches.
"""

from __future__ import annotations

import codecs
import re

# Level words as trainers print them: `[INFO]`, `INFO:`, `| WARNING |`, `level=error`.
_LEVEL_RE = re.compile(
    r"\b(DEBUG|INFO|WARNING|WARN|ERROR|CRITICAL|FATAL)\b"
    r"|\[(debug|info|warning|warn|error|critical|fatal)\]"
    r"|level=(debug|info|warning|warn|error|critical|fatal)\b"
    r"|\b([A-Za-z]*Warning):"
    r"|^(Traceback \(most recent call last\):)",
    re.IGNORECASE,
)
_CANONICAL = {
    "debug": "DEBUG",
    "info": "INFO",
    "warning": "WARNING",
    "warn": "WARNING",
    "error": "ERROR",
    "critical": "CRITICAL",
    "fatal": "CRITICAL",
}
# The last line of a traceback: `ValueError: boom`, `torch.OutOfMemoryError: ...`, `KeyboardInterrupt`.
_EXC_LINE_RE = re.compile(r"^[A-Za-z_][\w.]*(Error|Exception|Interrupt|Exit)\b")
_EVAL_RE = re.compile(r"\beval", re.IGNORECASE)
LEVEL_SCAN_CHARS = 96


class LevelClassifier:
    """Assigns a level per line; remembers when it is inside a Python traceback."""

    def __init__(self, default: str = "INFO") -> None:
        self.default = default
        self._in_traceback = False

    def level(self, line: str) -> str:
        if self._in_traceback:
            if line.startswith((" ", "\t")) or not line:
                return "ERROR"
            self._in_traceback = False
            if _EXC_LINE_RE.match(line):
                return "ERROR"
        m = _LEVEL_RE.search(line, 0, LEVEL_SCAN_CHARS)
        if m is None:
            return self.default
        if m.group(5):
            self._in_traceback = True
            return "ERROR"
        if m.group(4):
            return "WARNING"
        word = m.group(1) or m.group(2) or m.group(3)
        # Bare words only count in capitals ("no error found" is not an ERROR line).
        if m.group(1) and not word.isupper():
            return self.default
        return _CANONICAL[word.lower()]


def kind_of(line: str) -> str:
    return "eval" if _EVAL_RE.search(line, 0, 200) else "train"


def _visible(segment: str) -> str:
    """What a terminal shows of `a\rb\rc`: the last non-empty redraw."""
    for part in reversed(segment.split("\r")):
        if part:
            return part
    return ""


class LineSplitter:
    """Incremental splitter for one output stream.

    `\n` and `\r\n` end a line. Text rewritten with a lone `\r` (a progress bar redraw) is
    folded to what a terminal would show: an unfinished redraw is returned as the latest
    *transient* text, not as a log line, so a tqdm bar yields one progress value instead of
    thousands of lines. A line longer than `max_line_chars` is cut into pieces of that size:
    nothing is dropped.
    """

    def __init__(self, max_line_chars: int) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._pending = ""
        self._max = max_line_chars

    def feed(self, data: bytes, final: bool = False) -> tuple[list[str], str | None]:
        text = self._pending + self._decoder.decode(data, final)
        transient: str | None = None
        if "\r" in text:
            # A `\r` held back from the last chunk meets its `\n` here.
            lines = text.replace("\r\n", "\n").split("\n")
            tail = lines.pop()
            lines = [_visible(line) if "\r" in line else line for line in lines]
            if "\r" in tail:
                transient = _visible(tail) or None
                tail = (transient or "") + ("\r" if tail.endswith("\r") else "")
        else:
            lines = text.split("\n")
            tail = lines.pop()
        if final:
            tail = _visible(tail)
            if tail:
                lines.append(tail)
            tail = ""
        if len(tail) > self._max:
            cut = len(tail) - len(tail) % self._max
            lines.extend(tail[i : i + self._max] for i in range(0, cut, self._max))
            tail = tail[cut:]
        self._pending = tail
        if lines and max(map(len, lines)) > self._max:
            lines = [piece for line in lines for piece in self._cut(line)]
        return lines, transient

    def _cut(self, line: str) -> list[str]:
        if len(line) <= self._max:
            return [line]
        return [line[i : i + self._max] for i in range(0, len(line), self._max)]

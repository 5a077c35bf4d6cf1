"""Turn raw trainer output into log lines: split, handle `\\r` progress bars, find levels.

Hot path: every byte a trainer prints goes through here (DESIGN §9: 200k lines/s end to end,
the agent within 10 % of a core at 10k lines/s). Levels and kinds are therefore found for a
whole chunk at once: the lines are joined and a few regexes, each starting with a literal so
that `re` scans for it at memchr-like speed, run over the joined text. Python only touches the
lines where something matched. (One regex with alternatives, or `\\b`/IGNORECASE at its start,
makes `re` try every position and runs 30x slower.)
"""

from __future__ import annotations

import codecs
import re

_NAMES = "debug|info|warning|warn|error|critical|fatal"
_TRACEBACK = "TRACEBACK"
# Each pattern starts with a literal. Bare words count in capitals only ("no error here" is
# INFO) and need a word boundary before them, checked in Python (see above for why).
_LEVEL_PATTERNS: tuple[tuple[re.Pattern[str], str | None, bool], ...] = (
    # (pattern, level (None: from the captured name), needs a word boundary before it)
    (re.compile(r"DEBUG\b"), "DEBUG", True),
    (re.compile(r"INFO\b"), "INFO", True),
    (re.compile(r"WARN(?:ING)?\b"), "WARNING", True),
    (re.compile(r"ERROR\b"), "ERROR", True),
    (re.compile(r"CRITICAL\b"), "CRITICAL", True),
    (re.compile(r"FATAL\b"), "CRITICAL", True),
    (re.compile(r"Warning:"), "WARNING", False),  # UserWarning:, FutureWarning: ...
    (re.compile(r"\[(?i:(" + _NAMES + r"))\]"), None, False),  # [info], [WARN]
    (re.compile(r"level=(?i:(" + _NAMES + r"))\b"), None, False),  # logfmt
    (re.compile(r"Traceback \(most recent call last\):"), _TRACEBACK, False),
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
_EVAL_ANY_CASE_RE = re.compile(r"eval", re.IGNORECASE)
# A level word further into a line than this is part of the message, not its level.
LEVEL_SCAN_CHARS = 96
KIND_SCAN_CHARS = 200


def _word_char(ch: str) -> bool:
    return ch.isalnum() or ch == "_"


def _line_starts(text: str, positions: list[int], within: int) -> dict[int, int]:
    """Line index -> position of the first of `positions` (sorted) on that line, for those
    lying within `within` characters of their line's start."""
    first: dict[int, int] = {}
    line, last = 0, 0
    for pos in positions:
        line += text.count("\n", last, pos)
        last = pos
        if line not in first and pos - (text.rfind("\n", 0, pos) + 1) < within:
            first[line] = pos
    return first


class LevelClassifier:
    """Assigns a level per line; remembers across chunks when it is inside a Python traceback."""

    def __init__(self, default: str = "INFO") -> None:
        self.default = default
        self._in_traceback = False

    def level(self, line: str) -> str:
        return self.levels([line], line)[0]

    def levels(self, lines: list[str], text: str) -> list[str]:
        """Levels of `lines`; `text` is `"\\n".join(lines)` (the caller has it already)."""
        out = [self.default] * len(lines)
        resume = self._traceback_body(lines, 0, out) if self._in_traceback else 0
        found: dict[int, str] = {}
        for pattern, level, bounded in _LEVEL_PATTERNS:
            for m in pattern.finditer(text):
                pos = m.start()
                if bounded and pos and _word_char(text[pos - 1]):
                    continue
                if level == _TRACEBACK and pos and text[pos - 1] != "\n":
                    continue
                found[pos] = level or _CANONICAL[m.group(1).lower()]
        if not found:
            return out
        positions = sorted(found)
        for index, pos in _line_starts(text, positions, LEVEL_SCAN_CHARS).items():
            if index < resume:
                continue  # inside a traceback already classified
            level = found[pos]
            if level == _TRACEBACK:
                out[index] = "ERROR"
                resume = self._traceback_body(lines, index + 1, out)
            else:
                out[index] = level
        return out

    def _traceback_body(self, lines: list[str], start: int, out: list[str]) -> int:
        """Mark the indented body of a traceback and its final `SomeError: ...` line as ERROR;
        returns the index of the first line after it."""
        self._in_traceback = True
        for index in range(start, len(lines)):
            line = lines[index]
            if not line or line[0] in " \t":
                out[index] = "ERROR"
                continue
            self._in_traceback = False
            if _EXC_LINE_RE.match(line):
                out[index] = "ERROR"
                return index + 1
            return index
        return len(lines)


def kinds(lines: list[str], text: str) -> list[str]:
    """`eval` for lines that mention evaluation (`eval_loss`, `Evaluating`) near their start."""
    out = ["train"] * len(lines)
    if text.isascii():  # lower() keeps positions, and the literal search is fast
        low = text.lower()
        positions = [m.start() for m in re.finditer("eval", low)]
    else:
        positions = [m.start() for m in _EVAL_ANY_CASE_RE.finditer(text)]
    positions = [p for p in positions if not p or not _word_char(text[p - 1])]
    for index in _line_starts(text, positions, KIND_SCAN_CHARS):
        out[index] = "eval"
    return out


def kind_of(line: str) -> str:
    return kinds([line], line)[0]


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
    thousands of lines. A line longer than `max_line_bytes` in UTF-8 is cut into pieces of at
    most that many bytes, at character boundaries: nothing is dropped, and no piece can exceed
    the NATS message limit (a character is up to 4 bytes: a cut by characters once let a CJK
    line through at 3x the limit, and its publish was retried forever).
    """

    def __init__(self, max_line_bytes: int) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._pending = ""
        self._max = max_line_bytes
        # A text of at most this many characters fits whatever it holds (4 bytes a character).
        self._surely_fits = max_line_bytes // 4

    @property
    def clean(self) -> bool:
        """Everything fed so far has become lines: nothing held back, not even half a UTF-8
        character (a reader may start over from here)."""
        return not self._pending and not self._decoder.getstate()[0]

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
        if len(tail) > self._surely_fits and len(tail.encode()) > self._max:
            *whole, tail = self._cut(tail)  # full pieces go now; the rest waits for its end
            lines.extend(whole)
        self._pending = tail
        if lines and max(map(len, lines)) > self._surely_fits:
            lines = [piece for line in lines for piece in self._cut(line)]
        return lines, transient

    def _cut(self, line: str) -> list[str]:
        """`line` in pieces of at most `max_line_bytes` UTF-8 bytes, cut between characters."""
        data = line.encode()
        if len(data) <= self._max:
            return [line]
        pieces, start = [], 0
        while start < len(data):
            end = min(start + self._max, len(data))
            while end < len(data) and (data[end] & 0xC0) == 0x80:  # not inside a character
                end -= 1
            pieces.append(data[start:end].decode())
            start = end
        return pieces

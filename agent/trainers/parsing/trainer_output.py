"""What transformers' Trainer (and ms-swift on top of it) print, parsed (reference/trainers.md §2-3).

- The per-logging-step dict, written with `tqdm.write` to stdout: `str(dict)`, floats as numbers
  in transformers 4.x (`{'loss': 2.1234, 'epoch': 0.08}`) and as `.4g` strings in 5.x
  (`{'loss': '2.123', 'epoch': '0.08'}`). ms-swift adds `global_step/max_steps` ('5/42'),
  `percentage`, `elapsed_time`, `remaining_time` and speed/memory keys. Eval dicts have `eval_*`
  keys; the final summary has `train_runtime`, `train_loss`, ...
- The tqdm bar on stderr, redrawn with `\\r`: `Train:  12%|█▏   | 5/42 [01:02<07:40, 12.44s/it]`.
  The line splitter hands its latest redraw over as the *transient* text.

Everything here is pure and line-by-line testable.
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass

# Keys that are progress or timing text, not metrics.
NOT_METRICS = frozenset({
    "epoch", "step", "global_step/max_steps", "percentage", "elapsed_time", "remaining_time",
    "total_flos",
})

# transformers 4.x prints a nan or inf float bare (`{'loss': nan, 'grad_norm': inf}`), which is no
# Python literal: such a value, where a value stands, is quoted before `ast.literal_eval` reads it
# again ('nan' is a number to `number`), so the points of a diverged run are not lost.
_BARE_NONFINITE_RE = re.compile(r"(?:(?<=[:,] )|(?<=[\[(]))(-?)(nan|inf)(?=\s*[,}\])])")

_BAR_RE = re.compile(
    r"(?:^|\s)(?P<desc>[A-Za-z][\w ]*?)?:?\s*(?P<pct>\d{1,3})%\|[^|]*\|\s*(?P<n>\d+)/(?P<total>\d+)"
    r"\s*\[(?P<elapsed>[\d:]+)<(?P<remaining>[\d:?]+)(?:,\s*(?P<rate>[\d.]+|\?)\s*(?P<unit>s/it|it/s))?"
)


def parse_log_dict(line: str) -> dict[str, object] | None:
    """The dict a Trainer logged, or None if the line is not one. `ast.literal_eval` only
    accepts literals: nothing in the line is ever executed."""
    text = line.strip()
    if not (text.startswith("{'") and text.endswith("}")) or len(text) > 100_000:
        return None
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError, MemoryError, RecursionError):
        quoted = _BARE_NONFINITE_RE.sub(r"'\1\2'", text)
        if quoted == text:
            return None
        try:
            value = ast.literal_eval(quoted)
        except (ValueError, SyntaxError, MemoryError, RecursionError):
            return None
    return value if isinstance(value, dict) else None


def number(value: object) -> float | None:
    """4.x logs numbers, 5.x logs `.4g` strings; anything else is not a metric."""
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return None
    return None


def metrics_of(logged: dict[str, object]) -> dict[str, float]:
    out: dict[str, float] = {}
    for key, value in logged.items():
        if key in NOT_METRICS:
            continue
        v = number(value)
        if v is not None:
            out[str(key)] = v
    return out


def is_eval(logged: dict[str, object]) -> bool:
    return any(str(k).startswith("eval_") for k in logged)


def global_step_of(logged: dict[str, object]) -> tuple[int, int] | None:
    """ms-swift's `'global_step/max_steps': '5/42'`."""
    raw = logged.get("global_step/max_steps")
    if isinstance(raw, str) and "/" in raw:
        a, _, b = raw.partition("/")
        if a.strip().isdigit() and b.strip().isdigit():
            return int(a), int(b)
    return None


@dataclass(frozen=True)
class Bar:
    desc: str
    n: int
    total: int
    rate_steps_s: float | None
    remaining_s: float | None


def _clock_s(text: str) -> float | None:
    if not text or "?" in text:
        return None
    seconds = 0.0
    for part in text.split(":"):
        if not part.isdigit():
            return None
        seconds = seconds * 60 + int(part)
    return seconds


def parse_bar(text: str) -> Bar | None:
    """The last tqdm bar in `text` (a redraw), or None."""
    matches = list(_BAR_RE.finditer(text))
    if not matches:
        return None
    m = matches[-1]
    rate = None
    if m.group("rate") and m.group("rate") != "?":
        value = float(m.group("rate"))
        rate = value if m.group("unit") == "it/s" else (1.0 / value if value else None)
    return Bar(desc=(m.group("desc") or "").strip(), n=int(m.group("n")), total=int(m.group("total")),
               rate_steps_s=rate, remaining_s=_clock_s(m.group("remaining")))


def is_eval_bar(bar: Bar) -> bool:
    return bar.desc.lower().startswith(("val", "eval", "predict", "test"))

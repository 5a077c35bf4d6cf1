"""How the CLI shows what a gateway answered: tables (rich) with local times, cells safe for a
terminal, or the API's JSON with --json."""

from __future__ import annotations

import json
import re
import sys
import time
from collections.abc import Callable
from typing import Any

from rich.console import Console
from rich.markup import escape as rich_escape
from rich.table import Table


def console() -> Console:
    # Piped output (scripts, `| grep`) gets whole cells, not a table cut to 80 columns.
    return Console() if sys.stdout.isatty() else Console(width=400)


CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def shown(text: str) -> str:
    """A value as plain text in a terminal: Rich markup escaped, control characters (escape
    sequences a terminal would act on) shown as `?` (security review L4)."""
    return rich_escape(CONTROL.sub("?", text))


# Columns that hold a time (seconds since the epoch): shown as a local date and time.
TIME_COLUMNS = frozenset({"ts_s", "submitted_s", "started_s", "finished_s", "last_seen_s"})


def cell(key: str, value: object) -> str:
    if value is None:
        return ""
    if key in TIME_COLUMNS and isinstance(value, int | float):
        return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(value))
    if isinstance(value, list):
        return shown(", ".join(map(str, value)))
    return shown(str(value))


def print_table(rows: list[dict], columns: list[tuple[str, str]], title: str | None = None) -> None:
    table = Table(title=title, header_style="bold")
    for _, header in columns:
        table.add_column(header, overflow="fold")
    for row in rows:
        table.add_row(*(cell(k, row.get(k)) for k, _ in columns))
    console().print(table)


def output(value: Any, as_json: bool, render: Callable[[Any], None]) -> None:
    if as_json:
        print(json.dumps(value, indent=1, default=str))
    else:
        render(value)

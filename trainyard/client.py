"""The CLI's client commands: they talk to a gateway over HTTP, like any other client.

The gateway is `--url` (or TRAINYARD_URL, default http://127.0.0.1:8000); the token is
`--token`, TRAINYARD_TOKEN, or the `api-token` file `trainyard up` wrote in `--data-dir`.
Listings print a table (rich) or, with `--json`, the API's JSON. An error is one line on stderr
and a non-zero exit.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import sys
import tomllib
from pathlib import Path
from typing import Any

import httpx
from rich.console import Console
from rich.markup import escape as rich_escape
from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

API = "/api/v1/training"


class ClientError(Exception):
    """A failed call, already phrased for the user."""


class Gateway:
    def __init__(self, url: str, token: str | None) -> None:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.http = httpx.Client(base_url=url.rstrip("/"), headers=headers, timeout=60)

    def call(self, method: str, path: str, **kw: Any) -> Any:
        try:
            r = self.http.request(method, path, **kw)
        except httpx.HTTPError as exc:
            raise ClientError(f"cannot reach the gateway at {self.http.base_url}: {exc}") from None
        if r.status_code >= 400:
            try:
                body = r.json()
                detail = body.get("detail") or body.get("message") or r.text
                field = body.get("field")
            except ValueError:
                detail, field = r.text, None
            raise ClientError(
                f"{r.status_code}: {detail}" + (f" (field {field})" if field and field not in detail else "")
            )
        return r.json() if r.content else None

    def stream(self, path: str, **params: Any):
        """(event, data) of an SSE stream."""
        event, data = "message", list[str]()
        try:
            with self.http.stream("GET", path, params=params, timeout=None) as r:
                if r.status_code >= 400:
                    r.read()
                    raise ClientError(f"{r.status_code}: {r.json().get('detail', r.text)}")
                for line in r.iter_lines():
                    if line == "":
                        if data:
                            yield event, "\n".join(data)
                        event, data = "message", []
                    elif line.startswith("event:"):
                        event = line[6:].strip()
                    elif line.startswith("data:"):
                        data.append(line[5:].lstrip())
        except httpx.HTTPError as exc:
            raise ClientError(f"stream broken: {exc}") from None


def _token(args: argparse.Namespace) -> str | None:
    if args.token:
        return args.token
    if os.environ.get("TRAINYARD_TOKEN"):
        return os.environ["TRAINYARD_TOKEN"]
    path = Path(args.data_dir) / "api-token"
    return path.read_text().strip() if path.is_file() else None


def _console() -> Console:
    # Piped output (scripts, `| grep`) gets whole cells, not a table cut to 80 columns.
    return Console() if sys.stdout.isatty() else Console(width=400)


_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def _shown(text: str) -> str:
    """A value as plain text in a terminal: Rich markup escaped, control characters (escape
    sequences a terminal would act on) shown as `?` (security review L4)."""
    return rich_escape(_CONTROL.sub("?", text))


def _table(rows: list[dict], columns: list[tuple[str, str]], title: str | None = None) -> None:
    table = Table(title=title, header_style="bold")
    for _, header in columns:
        table.add_column(header, overflow="fold")
    for row in rows:
        table.add_row(*("" if row.get(k) is None else _shown(str(row.get(k))) for k, _ in columns))
    _console().print(table)


def _print(value: Any, as_json: bool, render) -> None:
    if as_json:
        print(json.dumps(value, indent=1, default=str))
    else:
        render(value)


# ---- commands -------------------------------------------------------------------------------------
def cmd_submit(gw: Gateway, args: argparse.Namespace) -> None:
    body: dict[str, Any] = {}
    if args.file:
        text = Path(args.file).read_bytes()
        body = tomllib.loads(text.decode()) if args.file.endswith(".toml") else json.loads(text)
    for key in ("trainer", "name", "priority", "gpus", "host", "max_retries"):
        value = getattr(args, key)
        if value is not None:
            body[key] = value
    if args.argv:
        body.setdefault("trainer", "command")
        body["command"] = args.argv
    made = gw.call("POST", f"{API}/jobs", json=body)
    _print(made, args.json, lambda m: print(f"{m['job_id']}  {m['status']}  {m['message']}"))


def cmd_list(gw: Gateway, args: argparse.Namespace) -> None:
    params = {k: v for k, v in (("status", args.status), ("limit", args.limit), ("trainer", args.trainer)) if v}
    page = gw.call("GET", f"{API}/jobs", params=params)
    _print(page, args.json, lambda p: _table(p["jobs"], [
        ("job_id", "job"), ("name", "name"), ("trainer", "trainer"), ("status", "status"),
        ("priority", "prio"), ("host", "host"), ("gpu_ids", "gpus"), ("attempt", "attempt"),
        ("reason", "reason")], title=f"{p['total']} jobs"))


def cmd_show(gw: Gateway, args: argparse.Namespace) -> None:
    detail = gw.call("GET", f"{API}/jobs/{args.job}")
    _print(detail, args.json, lambda d: _console().print_json(data=d))


def cmd_logs(gw: Gateway, args: argparse.Namespace) -> None:
    params = {k: v for k, v in (("type", args.type), ("level", args.level)) if v}
    if args.follow:
        for event, data in gw.stream(f"{API}/jobs/{args.job}/logs/stream", **params):
            if event == "log":
                print(json.loads(data)["text"], flush=True)
            elif event == "end":
                print(f"-- job {data}", file=sys.stderr)
        return
    page = gw.call("GET", f"{API}/jobs/{args.job}/logs", params={**params, "tail": args.tail})
    _print(page, args.json, lambda p: print("\n".join(line["text"] for line in p["lines"])))


def cmd_progress(gw: Gateway, args: argparse.Namespace) -> None:
    """A live bar (step, loss, rate, ETA) until the job ends."""
    columns = [TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed:.0f}/{task.total}"),
               TextColumn("{task.fields[loss]}"), TextColumn("{task.fields[rate]}"), TimeRemainingColumn()]
    with Progress(*columns) as bar:
        task = bar.add_task(args.job, total=None, loss="", rate="")
        for event, data in gw.stream(f"{API}/jobs/{args.job}/progress/stream"):
            if event == "end":
                bar.update(task, description=f"{args.job} {data}")
                break
            p = json.loads(data)
            loss = p["latest_metrics"].get("loss")
            bar.update(task, completed=p["step"] or 0, total=p["total_steps"],
                       description=f"{args.job} {p['status']}",
                       loss=f"loss {loss:.4g}" if loss is not None else "",
                       rate=f"{p['rate_steps_s']:.2f} step/s" if p["rate_steps_s"] else "")


def cmd_stop(gw: Gateway, args: argparse.Namespace) -> None:
    body = {"force": args.force, **({"grace_s": args.grace} if args.grace is not None else {})}
    done = gw.call("POST", f"{API}/jobs/{args.job}/stop", json=body)
    _print(done, args.json, lambda d: print(f"{d['job_id']}  {d['status']}  {d['message']}"))


def cmd_resume(gw: Gateway, args: argparse.Namespace) -> None:
    body = {"checkpoint": args.checkpoint} if args.checkpoint else {}
    done = gw.call("POST", f"{API}/jobs/{args.job}/resume", json=body)
    _print(done, args.json, lambda d: print(f"{d['job_id']}  {d['status']}  {d['message']}"))


def cmd_export(gw: Gateway, args: argparse.Namespace) -> None:
    body = {"checkpoint": args.checkpoint} if args.checkpoint else {}
    done = gw.call("POST", f"{API}/jobs/{args.job}/export", json=body)
    _print(done, args.json, lambda d: print(f"{d['export_id']}  {d['status']}  {d['message']}"))


def cmd_queue(gw: Gateway, args: argparse.Namespace) -> None:
    q = gw.call("GET", f"{API}/queue")
    _print(q, args.json, lambda q: _table(q["jobs"], [
        ("position", "#"), ("job_id", "job"), ("priority", "prio"), ("gpus", "gpus"),
        ("waiting_reason", "why it waits"), ("estimated_wait_s", "eta s")],
        title=f"queue: {q['length']} jobs, processor {'running' if q['processor_running'] else 'stopped'}"))


def cmd_gpus(gw: Gateway, args: argparse.Namespace) -> None:
    g = gw.call("GET", f"{API}/gpus")

    def render(g: dict) -> None:
        rows = [{**x, "memory": f"{x['memory_used_mb']}/{x['memory_total_mb']} MiB",
                 "util": f"{x['utilization_pct']:.0f}%" if x["utilization_pct"] is not None else "",
                 "temp": f"{x['temperature_c']:.0f}C" if x["temperature_c"] is not None else ""}
                for x in g["gpus"]]
        _table(rows, [("host", "host"), ("index", "gpu"), ("name", "name"), ("state", "state"),
                      ("job_id", "job"), ("memory", "memory"), ("util", "util"), ("temp", "temp")],
               title=f"{g['free']} free / {g['busy']} busy / {g['offline']} offline"
                     + (" (simulated)" if g["simulated"] else ""))

    _print(g, args.json, render)


def cmd_hosts(gw: Gateway, args: argparse.Namespace) -> None:
    hosts = gw.call("GET", f"{API}/hosts")
    _print(hosts, args.json, lambda h: _table(h, [
        ("host", "host"), ("status", "status"), ("seconds_since_heartbeat", "last beat s"),
        ("gpus", "gpus"), ("gpus_free", "free"), ("cpu_percent", "cpu %"), ("running_jobs", "jobs"),
        ("note", "note")]))


def cmd_events(gw: Gateway, args: argparse.Namespace) -> None:
    events = gw.call("GET", f"{API}/jobs/{args.job}/events")
    _print(events, args.json, lambda e: _table(e, [
        ("stream_seq", "seq"), ("type", "type"), ("attempt", "attempt"), ("ts_s", "time"),
        ("applied", "applied"), ("note", "note")]))


def cmd_sql(gw: Gateway, args: argparse.Namespace) -> None:
    result = gw.call("POST", "/api/v1/sql", json={"sql": args.query, "limit": args.limit})

    def render(r: dict) -> None:
        _table([dict(zip(r["columns"], row, strict=False)) for row in r["rows"]], [(c, c) for c in r["columns"]],
               title=f"{r['row_count']} rows{' (cut at the limit)' if r['truncated'] else ''}")

    _print(result, args.json, render)


COMMANDS = {
    "submit": cmd_submit, "list": cmd_list, "show": cmd_show, "logs": cmd_logs,
    "progress": cmd_progress, "stop": cmd_stop, "resume": cmd_resume, "export": cmd_export,
    "queue": cmd_queue, "gpus": cmd_gpus, "hosts": cmd_hosts, "events": cmd_events, "sql": cmd_sql,
}


def add_client_commands(sub: argparse._SubParsersAction) -> None:
    def command(name: str, help_text: str, *, job: bool = False) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text)
        p.add_argument("--url", default=os.environ.get("TRAINYARD_URL", "http://127.0.0.1:8000"))
        p.add_argument("--token", default=None)
        p.add_argument("--data-dir", default="./trainyard-data", help="where `trainyard up` left api-token")
        p.add_argument("--json", action="store_true", help="print the API's JSON")
        if job:
            p.add_argument("job")
        p.set_defaults(func=run_client, client_command=name)
        return p

    p = command("submit", "submit a job (flags, a TOML/JSON file, or `-- argv...` for a command job)")
    p.add_argument("--file", default=None)
    p.add_argument("--trainer", default=None)
    p.add_argument("--name", default=None)
    p.add_argument("--priority", type=int, default=None)
    p.add_argument("--gpus", type=int, default=None)
    p.add_argument("--host", default=None)
    p.add_argument("--max-retries", dest="max_retries", type=int, default=None)
    p.add_argument("argv", nargs="*")
    p = command("list", "list jobs, newest first")
    p.add_argument("--status", default=None)
    p.add_argument("--trainer", default=None)
    p.add_argument("--limit", type=int, default=50)
    command("show", "a job's detail", job=True)
    p = command("logs", "a job's log (-f follows it until the job ends)", job=True)
    p.add_argument("-f", "--follow", action="store_true")
    p.add_argument("--tail", type=int, default=100)
    p.add_argument("--type", default=None)
    p.add_argument("--level", default=None)
    command("progress", "a live progress bar until the job ends", job=True)
    p = command("stop", "stop a job", job=True)
    p.add_argument("--force", action="store_true")
    p.add_argument("--grace", type=float, default=None)
    p = command("resume", "a new attempt from the latest or a named checkpoint", job=True)
    p.add_argument("--checkpoint", default=None)
    p = command("export", "the job's export step (swift: merge the LoRA)", job=True)
    p.add_argument("--checkpoint", default=None)
    command("queue", "the queue, in order, with why each job waits")
    command("gpus", "every GPU of every host")
    command("hosts", "the agents")
    command("events", "a job's whole event history", job=True)
    p = command("sql", "read-only SQL over the projection (admin)")
    p.add_argument("query")
    p.add_argument("--limit", type=int, default=1000)


def run_client(args: argparse.Namespace) -> int:
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per request is noise here
    gw = Gateway(args.url, _token(args))
    try:
        COMMANDS[args.client_command](gw, args)
    except ClientError as exc:
        print(f"trainyard {args.client_command}: {exc}", file=sys.stderr)
        return 1
    except (OSError, ValueError) as exc:
        print(f"trainyard {args.client_command}: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return 0

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
import sys
import time
import tomllib
from pathlib import Path
from typing import Any

from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

from shared.workdir import DEFAULT_MAX_BYTES
from trainyard.gateway_client import ClientError, Gateway, is_local, token_for, url_and_ca
from trainyard.render import CONTROL, console, output, print_table
from trainyard.transfer import cmd_download, cmd_files, upload_workdir

API = "/api/v1/training"


# ---- commands -------------------------------------------------------------------------------------
def cmd_submit(gw: Gateway, args: argparse.Namespace) -> None:
    body: dict[str, Any] = {}
    if args.file:
        text = Path(args.file).read_bytes()
        body = tomllib.loads(text.decode()) if args.file.endswith(".toml") else json.loads(text)
    for key in ("trainer", "name", "priority", "gpus", "host", "max_retries", "webhook_url", "max_runtime_s", "project",
                "on_nan", "stall_timeout_s", "on_stall", "idle_timeout_s", "on_idle", "preemptible",
                "preempt_grace_s", "min_runtime_s", "max_preemptions"):
        value = getattr(args, key)
        if value is not None:
            body[key] = value
    if args.gpu_ids is not None:
        body["gpu_ids"] = [int(i) for i in args.gpu_ids.split(",") if i.strip()]
    if args.hold:
        body["hold"] = True
    if args.array is not None:
        body["array"] = {"count": args.array}
    if args.sweep:
        body["sweep"] = {**body.get("sweep", {}), **dict(_sweep_values(item) for item in args.sweep)}
    if args.max_parallel is not None:
        body["max_parallel"] = args.max_parallel
    if args.after:
        body["depends_on"] = args.after
        if args.after_any:
            body["depends_mode"] = "any_end"
    if args.env:
        body["env"] = {**body.get("env", {}), **dict(_key_value(item) for item in args.env)}
    if args.argv:
        body.setdefault("trainer", "command")
        body["command"] = args.argv
    here = False
    if args.workdir:
        # The code travels: packed, uploaded, unpacked into each attempt's run dir on its host.
        body["workdir"] = upload_workdir(gw, args.workdir)
    elif body.get("trainer", "command") in ("command", "hf") and "cwd" not in body:
        if args.cwd:
            body["cwd"] = str(Path(args.cwd).resolve())
        elif is_local(args.url):
            # Where the user stands, as `python train.py` means it; a remote gateway's hosts do
            # not share this directory.
            body["cwd"], here = os.getcwd(), True
    try:
        made = gw.call("POST", f"{API}/jobs", json=body)
    except ClientError as exc:
        if not (here and exc.field == "cwd"):
            raise
        # This directory is outside the allowed roots: its code travels with the job instead
        # (an empty run dir would not hold the `train.py` the user meant).
        here_dir = body.pop("cwd")
        print(f"trainyard submit: note: {here_dir} is outside the gateway's allowed roots, so it is shipped with "
              f"the job (as --workdir {here_dir}) and the job runs in a copy of it; its outputs: trainyard files JOB",
              file=sys.stderr)
        body["workdir"] = upload_workdir(gw, here_dir, limit_bytes=DEFAULT_MAX_BYTES)
        made = gw.call("POST", f"{API}/jobs", json=body)
    output(made, args.json, lambda m: print(f"{m['job_id']}  {m['status']}  {m['message']}"
                                            + "".join(f"\n  {j}" for j in m.get("jobs") or [])))


def _sweep_values(item: str) -> tuple[str, list[Any]]:
    """`lr=1e-4,3e-4` -> ("lr", [0.0001, 0.0003]): each value read as JSON where it is one
    (numbers, true), else kept as text."""
    key, values = _key_value(item)
    parsed: list[Any] = []
    for text in values.split(","):
        try:
            parsed.append(json.loads(text))
        except ValueError:
            parsed.append(text)
    return key, parsed


def _key_value(item: str) -> tuple[str, str]:
    key, sep, value = item.partition("=")
    if not sep or not key:
        raise ValueError(f"--env {item!r}: give KEY=VALUE")
    return key, value


def cmd_list(gw: Gateway, args: argparse.Namespace) -> None:
    params = {k: v for k, v in (("status", args.status), ("limit", args.limit), ("trainer", args.trainer),
                                ("submitted_by", "me" if args.mine else args.user), ("array", args.array)) if v}
    page = gw.call("GET", f"{API}/jobs", params=params)
    output(page, args.json, lambda p: print_table(p["jobs"], [
        ("job_id", "job"), ("name", "name"), ("trainer", "trainer"), ("status", "status"),
        ("priority", "prio"), ("host", "host"), ("gpu_ids", "gpus"), ("attempt", "attempt"),
        ("submitted_by", "by"), ("submitted_s", "submitted"), ("anomaly_kinds", "anomalies"), ("reason", "reason")],
        title=f"{p['total']} jobs"))


def cmd_show(gw: Gateway, args: argparse.Namespace) -> None:
    detail = gw.call("GET", f"{API}/jobs/{args.job}")
    output(detail, args.json, _show)


def _show(detail: dict[str, Any]) -> None:
    console().print_json(data=detail)
    for a in detail.get("anomalies") or []:  # last, where the eye lands
        print(f"anomaly (attempt {a['attempt']}, {a['action']}): {a['detail']}")


def cmd_logs(gw: Gateway, args: argparse.Namespace) -> None:
    params = {k: v for k, v in (("type", args.type), ("level", args.level)) if v}
    if args.follow:
        for event, data in gw.stream(f"{API}/jobs/{args.job}/logs/stream", **params):
            if event == "log":
                print(json.loads(data)["text"], flush=True)
            elif event == "end":
                print(f"-- job {data}", file=sys.stderr)
        return
    if args.attempt is not None:
        params["attempt"] = args.attempt
    if args.json:
        page = gw.call("GET", f"{API}/jobs/{args.job}/logs", params={**params, "tail": args.tail or 1000})
        output(page, True, print)
        return
    out = sys.stdout.buffer
    tty = sys.stdout.isatty()
    for chunk in gw.text(f"{API}/jobs/{args.job}/logs.txt", **params, **({"tail": args.tail} if args.tail else {})):
        # Shown on a terminal, a trainer's escape sequences would act on it (security review L4).
        out.write(CONTROL.sub("?", chunk.decode(errors="replace")).encode() if tty else chunk)
    out.flush()


def cmd_progress(gw: Gateway, args: argparse.Namespace) -> None:
    """A live bar (step, loss, rate, ETA) until the job ends."""
    gw.call("GET", f"{API}/jobs/{args.job}/status")  # an unknown job is one error line, not a bar first
    columns = [TextColumn("{task.description}"), BarColumn(), TextColumn("{task.fields[count]}"),
               TextColumn("{task.fields[loss]}"), TextColumn("{task.fields[rate]}"), TimeRemainingColumn()]
    with Progress(*columns) as bar:
        task = bar.add_task(args.job, total=None, loss="", rate="", count="")
        for event, data in gw.stream(f"{API}/jobs/{args.job}/progress/stream"):
            if event == "end":
                bar.update(task, description=f"{args.job} {data}")
                break
            p = json.loads(data)
            loss = p["latest_metrics"].get("loss")
            step, total = p["step"], p["total_steps"]
            bar.update(task, completed=step or 0, total=total,
                       count=f"{step}/{total}" if step is not None and total else (f"step {step}" if step else ""),
                       description=f"{args.job} {p['status']}",
                       loss=f"loss {loss:.4g}" if loss is not None else "",
                       rate=f"{p['rate_steps_s']:.2f} step/s" if p["rate_steps_s"] else "")


def cmd_stop(gw: Gateway, args: argparse.Namespace) -> None:
    body = {"force": args.force, **({"grace_s": args.grace} if args.grace is not None else {})}
    done = gw.call("POST", f"{API}/jobs/{args.job}/stop", json=body)
    output(done, args.json, lambda d: print(f"{d['job_id']}  {d['status']}  {d['message']}"))


def cmd_resume(gw: Gateway, args: argparse.Namespace) -> None:
    body = {"checkpoint": args.checkpoint} if args.checkpoint else {}
    done = gw.call("POST", f"{API}/jobs/{args.job}/resume", json=body)
    output(done, args.json, lambda d: print(f"{d['job_id']}  {d['status']}  {d['message']}"))


def cmd_export(gw: Gateway, args: argparse.Namespace) -> None:
    """Start the export and, unless --no-wait, wait for its result: a failed export is an
    error (exit 1) with its reason, not a "running" that the user must poll."""
    body = {"checkpoint": args.checkpoint} if args.checkpoint else {}
    started = gw.call("POST", f"{API}/jobs/{args.job}/export", json=body)
    export = started
    while not args.no_wait and export.get("status") == "running":
        time.sleep(0.5)
        exports = gw.call("GET", f"{API}/jobs/{args.job}")["exports"]
        export = next((e for e in exports if e["export_id"] == started["export_id"]), export)
    output(export, args.json, lambda e: print(
        f"{e['export_id']}  {e['status']}  {e.get('message') or e.get('path') or ''}"))
    if export.get("status") == "failed":
        raise ClientError(f"export {export['export_id']} failed: {export.get('reason') or 'see the job events'}")


def cmd_quota(gw: Gateway, args: argparse.Namespace) -> None:
    if args.action == "set":
        if not (args.kind and args.name):
            raise ClientError("quota set KIND NAME: KIND is user or project, NAME a token name or project")
        body = {"max_gpus": args.max_gpus, "max_running_jobs": args.max_running_jobs}
        made = gw.call("PUT", f"{API}/quotas/{args.kind}/{args.name}", json=body)
        output(made, args.json, lambda q: print_table([q], QUOTA_COLUMNS))
        return
    output(gw.call("GET", f"{API}/quotas"), args.json, lambda qs: print_table(qs, QUOTA_COLUMNS, title="quotas"))


QUOTA_COLUMNS = [("kind", "kind"), ("name", "name"), ("max_gpus", "max GPUs"), ("gpus_in_use", "GPUs in use"),
                 ("max_running_jobs", "max jobs"), ("running_jobs", "running")]


def cmd_queue(gw: Gateway, args: argparse.Namespace) -> None:
    q = gw.call("GET", f"{API}/queue")
    output(q, args.json, lambda q: print_table(q["jobs"], [
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
        print_table(rows, [("host", "host"), ("index", "gpu"), ("name", "name"), ("state", "state"),
                           ("job_id", "job"), ("memory", "memory"), ("util", "util"), ("temp", "temp")],
                    title=f"{g['free']} free / {g['busy']} busy / {g['offline']} offline"
                          + (" (simulated)" if g["simulated"] else ""))

    output(g, args.json, render)


def cmd_hosts(gw: Gateway, args: argparse.Namespace) -> None:
    hosts = gw.call("GET", f"{API}/hosts")
    output(hosts, args.json, lambda h: print_table(h, [
        ("host", "host"), ("status", "status"), ("seconds_since_heartbeat", "last beat s"),
        ("gpus", "gpus"), ("gpus_free", "free"), ("cpu_percent", "cpu %"), ("running_jobs", "jobs"),
        ("note", "note")]))


def cmd_events(gw: Gateway, args: argparse.Namespace) -> None:
    events = gw.call("GET", f"{API}/jobs/{args.job}/events")
    output(events, args.json, lambda e: print_table(e, [
        ("stream_seq", "seq"), ("type", "type"), ("attempt", "attempt"), ("ts_s", "time"),
        ("applied", "applied"), ("note", "note")]))


def cmd_sql(gw: Gateway, args: argparse.Namespace) -> None:
    result = gw.call("POST", "/api/v1/sql", json={"sql": args.query, "limit": args.limit})

    def render(r: dict) -> None:
        print_table([dict(zip(r["columns"], row, strict=False)) for row in r["rows"]], [(c, c) for c in r["columns"]],
                    title=f"{r['row_count']} rows{' (cut at the limit)' if r['truncated'] else ''}")

    output(result, args.json, render)


COMMANDS = {
    "submit": cmd_submit, "list": cmd_list, "show": cmd_show, "logs": cmd_logs,
    "progress": cmd_progress, "stop": cmd_stop, "resume": cmd_resume, "export": cmd_export,
    "queue": cmd_queue, "quota": cmd_quota, "gpus": cmd_gpus, "hosts": cmd_hosts, "events": cmd_events, "sql": cmd_sql,
    "files": cmd_files, "download": cmd_download,
}


def run_client(args: argparse.Namespace) -> int:
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per request is noise here
    url, ca_file = url_and_ca(args)
    args.url = url
    gw = Gateway(url, *token_for(args), ca_file=ca_file)
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

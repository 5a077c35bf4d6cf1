"""The client commands' flags (the commands themselves are in client.py)."""

from __future__ import annotations

import argparse

from trainyard.client import run_client


def add_client_commands(sub: argparse._SubParsersAction) -> None:
    def command(name: str, help_text: str, *, job: bool = False) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.add_argument("--url", default=None,
                       help="the gateway (default: TRAINYARD_URL, else where `trainyard up` in --data-dir "
                            "listens, else http://127.0.0.1:8000)")
        p.add_argument("--token", default=None, help="API token (default: TRAINYARD_TOKEN, else DATA-DIR/api-token)")
        p.add_argument("--data-dir", default="./trainyard-data", help="where `trainyard up` left api-token")
        p.add_argument("--json", action="store_true", help="print the API's JSON")
        if job:
            p.add_argument("job", help="the job's id")
        p.set_defaults(func=run_client, client_command=name)
        return p

    p = command("submit", "submit a job (flags, a TOML/JSON file, or `-- argv...` for a command job)")
    p.add_argument("--file", default=None, help="the job as a .toml or .json file (flags override its keys)")
    p.add_argument("--trainer", default=None, help="command (default with argv), hf, swift or diffusion-pipe")
    p.add_argument("--name", default=None, help="a name to find the job by")
    p.add_argument("--priority", type=int, default=None, help="0-9, higher first (default 5)")
    p.add_argument("--gpus", type=int, default=None, help="how many GPUs (0: none)")
    p.add_argument("--gpu-ids", dest="gpu_ids", default=None, metavar="0,1", help="these GPUs (with --host: on it)")
    p.add_argument("--host", default=None, help="run on this host")
    p.add_argument("--max-retries", dest="max_retries", type=int, default=None,
                   help="start it again this often if it fails (with back-off)")
    p.add_argument("--time-limit", dest="max_runtime_s", type=float, default=None, metavar="SECONDS",
                   help="stop it (it ends failed) once it has run this long, like Slurm's --time")
    p.add_argument("--hold", action="store_true", help="queue it held: it starts once released (`POST .../start`)")
    p.add_argument("--env", action="append", default=[], metavar="KEY=VALUE", help="an environment variable (repeat)")
    p.add_argument("--cwd", default=None,
                   help="where it runs (default: this directory when the gateway is on this machine)")
    p.add_argument("--workdir", default=None, metavar="DIR",
                   help="ship DIR's code with the job (its .gitignore honoured; at most 100 MiB): it runs in a "
                        "copy of DIR on whichever host it is placed")
    p.add_argument("--webhook", dest="webhook_url", default=None, metavar="URL", help="POST its events here")
    p.add_argument("--array", type=int, default=None, metavar="N",
                   help="N copies of the job, each with TRAINYARD_ARRAY_INDEX (like Slurm's --array)")
    p.add_argument("--sweep", action="append", default=[], metavar="NAME=V1,V2",
                   help="one job per combination of the values (repeat for a grid); numbers as numbers")
    p.add_argument("--max-parallel", dest="max_parallel", type=int, default=None, metavar="N",
                   help="of an array or sweep, at most N at once")
    p.add_argument("--project", default=None, help="the project it counts against (quotas, fair share)")
    p.add_argument("--after", action="append", default=[], metavar="JOB",
                   help="start only once this job has succeeded (repeat; like Slurm's --dependency=afterok)")
    p.add_argument("--after-any", action="store_true",
                   help="with --after: once those jobs have ended, whatever their outcome (afterany)")
    p.add_argument("--on-nan", choices=("notify", "stop"), default=None,
                   help="a nan/inf loss: tell (an anomaly event, the webhook) or also stop it, failed")
    p.add_argument("--stall-timeout", dest="stall_timeout_s", type=float, default=None, metavar="SECONDS",
                   help="no new step for so long is a stall (0: not watched; default the gateway's, 1800)")
    p.add_argument("--on-stall", choices=("notify", "stop"), default=None, help="what a stall does")
    p.add_argument("--idle-timeout", dest="idle_timeout_s", type=float, default=None, metavar="SECONDS",
                   help="a GPU of the job idle for so long is an anomaly (0: not watched)")
    p.add_argument("--on-idle", choices=("notify", "stop"), default=None, help="what idle GPUs do")
    p.add_argument("--preemptible", action="store_true", default=None,
                   help="a higher-priority job may stop it gracefully; it resumes later from its checkpoint")
    p.add_argument("--preempt-grace", dest="preempt_grace_s", type=float, default=None, metavar="SECONDS",
                   help="time it gets to save when preempted (default 60)")
    p.add_argument("--min-runtime", dest="min_runtime_s", type=float, default=None, metavar="SECONDS",
                   help="never preempted within this long of its start (default 60)")
    p.add_argument("--max-preemptions", dest="max_preemptions", type=int, default=None, metavar="N",
                   help="preempted at most this often (default 3)")
    p.add_argument("argv", nargs="*", help="the command to run (after --)")
    p = command("list", "list jobs, newest first")
    p.add_argument("--status", default=None, help="only these statuses (comma list)")
    p.add_argument("--trainer", default=None, help="only this trainer")
    p.add_argument("--limit", type=int, default=50, help="at most this many (default 50)")
    p.add_argument("--mine", action="store_true", help="only the jobs this token submitted")
    p.add_argument("--user", default=None, help="only the jobs this token name submitted")
    p.add_argument("--array", default=None, metavar="ID", help="only the jobs of this array or sweep")
    p = command("quota", "show the quotas, or set one: quota set user alice --max-gpus 4 (admin)")
    p.add_argument("action", nargs="?", choices=("list", "set"), default="list",
                   help="list (the default) or set")
    p.add_argument("kind", nargs="?", choices=("user", "project"), help="with set: whose quota")
    p.add_argument("name", nargs="?", help="with set: the token name or project")
    p.add_argument("--max-gpus", dest="max_gpus", type=int, default=None, help="GPUs held at once (omit: no limit)")
    p.add_argument("--max-running-jobs", dest="max_running_jobs", type=int, default=None,
                   help="jobs running at once (omit: no limit)")
    command("show", "a job's detail", job=True)
    p = command("logs", "a job's whole log, streamed (-f follows it until the job ends)", job=True)
    p.add_argument("-f", "--follow", action="store_true", help="print new lines as they come, until the job ends")
    p.add_argument("--tail", type=int, default=None, help="only the last N lines")
    p.add_argument("--type", default=None, help="train, eval, system or all (default all)")
    p.add_argument("--level", default=None, help="this level and graver: DEBUG, INFO, WARNING, ERROR, CRITICAL")
    p.add_argument("--attempt", type=int, default=None, help="only this attempt (default: all of them)")
    command("progress", "a live progress bar until the job ends", job=True)
    p = command("stop", "stop a job", job=True)
    p.add_argument("--force", action="store_true", help="SIGKILL at once")
    p.add_argument("--grace", type=float, default=None, help="seconds between SIGTERM and SIGKILL")
    p = command("resume", "a new attempt from the latest or a named checkpoint", job=True)
    p.add_argument("--checkpoint", default=None, help="a checkpoint's name or path (default: the latest)")
    p = command("export", "the job's export step (swift: merge the LoRA); waits for its result", job=True)
    p.add_argument("--checkpoint", default=None, help="a checkpoint's name or path (default: the latest)")
    p.add_argument("--no-wait", dest="no_wait", action="store_true", help="return once it started")
    command("queue", "the queue, in order, with why each job waits")
    command("gpus", "every GPU of every host")
    command("hosts", "the agents")
    command("events", "a job's whole event history", job=True)
    command("files", "the files a job left in its dir on its host (every attempt's run dir)", job=True)
    p = command("download", "fetch one of a job's files (resumes an interrupted download)", job=True)
    p.add_argument("path", help="as `trainyard files JOB` lists it: ATTEMPT/PATH")
    p.add_argument("-o", "--output", default=None, help="where to write it (default: its name, here)")
    p = command("sql", "read-only SQL over the projection (admin)")
    p.add_argument("query", help="one SELECT / WITH / EXPLAIN")
    p.add_argument("--limit", type=int, default=1000, help="at most this many rows (default 1000)")

"""Configuration: defaults in code -> trainyard.toml -> TRAINYARD_* environment -> flags.

Nothing is read at import time: entry points call `load_settings(...)` and pass the result down.
"""

from __future__ import annotations

import os
import tomllib
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

import msgspec

from shared.watch import WatchPolicy

DEFAULT_NATS_URL = "nats://127.0.0.1:4222"


class GatewaySettings(msgspec.Struct, kw_only=True, forbid_unknown_fields=False):
    data_dir: str = "./trainyard-data"
    bind: str = "127.0.0.1"
    port: int = 8000
    nats_url: str = DEFAULT_NATS_URL
    # A credentials file (natsauth: user and password) when nats-server has per-role users.
    nats_credentials: str = ""
    nats_ca: str = ""  # TLS to nats-server (tls:// URLs): trust only this CA
    # HTTPS: serve the API with this certificate and key (trainyard up --listen makes them).
    tls_cert: str = ""
    tls_key: str = ""
    # nats-server's HTTP monitoring (e.g. http://127.0.0.1:8222): /health then also shows what
    # its /healthz says, such as a stream that a full disk left unwritable. `up` sets it.
    nats_monitor_url: str = ""
    replica: str = "g1"
    insecure: bool = False
    allowed_roots: list[str] = []
    # How long a write waits for the projector to show it before answering anyway.
    read_your_writes_timeout_s: float = 2.0
    log_max_age_s: float = 30 * 86400.0
    log_max_bytes: int = 20 * 1024**3
    projector_batch: int = 2048
    # Threads DuckDB may use for a query (users' SQL, big reads); 0: half the cores, at least
    # one. The rest is left to the event loop, NATS and, on an all-in-one host, the trainers:
    # the projection's many small writes hand each statement to a worker thread, which on two
    # cores cost ~10 % more CPU per log line than one thread doing it (bench.history (c)).
    duckdb_threads: int = 0
    scheduler_interval_s: float = 1.0
    # A host whose last heartbeat is older than this is offline; its jobs are declared lost
    # (or retried) once it has been offline for `host_lost_grace_s` more.
    host_timeout_s: float = 15.0
    host_lost_grace_s: float = 30.0
    # One gateway schedules at a time; another takes over this long after it stops renewing.
    scheduler_lease_ttl_s: float = 6.0
    # Copies JetStream keeps of every stream and bucket: 1 on one nats-server, 3 on a 3-node
    # cluster (any one node may be lost). A change is applied to existing streams at start.
    stream_replicas: int = 1
    # GPU telemetry kept in the projection's `gpu_samples` (a row per GPU per heartbeat: 230 M
    # rows a day at 1,000 hosts); older rows are deleted. 0: kept for ever.
    gpu_samples_keep_s: float = 14 * 86400.0
    # Code archives of `submit --workdir`: the largest accepted, and how long one is kept (a
    # retry or resume after that fails, saying so).
    workdir_max_bytes: int = 100 * 1024**2
    workdir_keep_s: float = 30 * 86400.0
    # Signs webhook bodies; empty: one is generated in <data_dir>/webhook-secret (give every
    # gateway replica the same one).
    webhook_secret: str = ""
    # Hosts and networks (CIDR) webhooks may reach besides public addresses, e.g. an internal
    # chat bridge: ["10.1.2.3/32", "hooks.internal"]. In the environment: comma-separated.
    webhook_allow: list[str] = []
    # Fair share: within a priority, whose job goes next, by recent GPU-hours that halve in
    # weight every this many seconds (Slurm's PriorityDecayHalfLife; 0: submit order only).
    fair_share_half_life_s: float = 7 * 86400.0
    # What the agents' watchdogs look for in a job that does not say (`[gateway.watch]` in the
    # TOML file: nan_metrics, on_nan, stall_timeout_s, on_stall, idle_gpu_util_pct,
    # idle_timeout_s, on_idle; shared/watch.py has the defaults).
    watch: WatchPolicy = msgspec.field(default_factory=WatchPolicy)


class AgentSettings(msgspec.Struct, kw_only=True, forbid_unknown_fields=False):
    host: str = ""
    work_dir: str = "./trainyard-work"
    nats_url: str = DEFAULT_NATS_URL
    nats_credentials: str = ""  # this host's agent credentials (natsauth)
    # TLS to nats-server (tls:// URLs): trust only this CA (a joined host keeps it in its work dir).
    nats_ca: str = ""
    # Joining (`trainyard host add` prints the command): the one-time token, the gateway that
    # takes it, and the SHA-256 of the CA the gateway must show (`--ca-pin sha256:...`).
    join_token: str = ""
    api_url: str = ""
    ca_pin: str = ""
    heartbeat_interval_s: float = 3.0
    simulate_gpus: str = ""
    allowed_roots: list[str] = []
    # Lines longer than this are cut, with a visible marker, so one message stays < max_payload.
    max_line_bytes: int = 4 * 1024 * 1024
    # A published batch of log lines or metric points stays below this.
    batch_max_bytes: int = 1024 * 1024
    stop_trainers_on_exit: bool = False
    # Log text shipped per attempt (0: no cap). Past it: one warning line and an `agent_note`
    # event; the full output stays in the run dir's stdout.log / stderr.log.
    max_log_bytes_per_attempt: int = 4 * 1024**3
    # The interpreter `hf` scripts (and a bare `python` in a command) run with; default: the
    # agent's own. Point it at the venv where transformers is installed.
    python: str = ""
    # Where diffusion-pipe is checked out (with its submodules) on this host: train.py's dir.
    diffusion_pipe_dir: str = ""
    # Prometheus metrics of the agent itself on this port (0: none), on `metrics_bind`.
    metrics_port: int = 0
    metrics_bind: str = "127.0.0.1"
    # Fault injection, for the fault suite only (TRAINYARD_TEST_CRASH_AT): the agent kills itself
    # with SIGKILL on reaching this point of the spawn path (agent/options.py names them).
    test_crash_at: str = ""


T = TypeVar("T", bound=msgspec.Struct)


# List settings given in the environment are split on the path separator, but these (which hold
# IPv6 networks) on commas.
_COMMA_LISTS = frozenset({"webhook_allow"})


def _env_value(name: str, field_type: Any, raw: str) -> Any:
    if typing.get_origin(field_type) is list:
        return [part.strip() for part in raw.split("," if name in _COMMA_LISTS else os.pathsep) if part.strip()]
    if field_type is bool:
        return raw.strip().lower() in ("1", "true", "yes", "on")
    return raw


def load_settings(
    cls: type[T],
    *,
    toml_path: Path | None = None,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
    section: str | None = None,
) -> T:
    """Merge the four layers; a later layer wins field by field. Unknown keys are ignored
    in the shared TOML file (it holds sections for both sides) but types are checked."""
    merged: dict[str, Any] = {}
    if toml_path is not None and toml_path.is_file():
        data = tomllib.loads(toml_path.read_text())
        if section and isinstance(data.get(section), dict):
            data = {**{k: v for k, v in data.items() if not isinstance(v, dict)}, **data[section]}
        merged.update(data)
    env = os.environ if env is None else env
    hints = typing.get_type_hints(cls)
    for name in cls.__struct_fields__:
        raw = env.get(f"TRAINYARD_{name.upper()}")
        if raw is not None:
            merged[name] = _env_value(name, hints[name], raw)
    for key, value in (overrides or {}).items():
        if value is not None:
            merged[key] = value
    known = {k: v for k, v in merged.items() if k in cls.__struct_fields__}
    return msgspec.convert(known, cls, strict=False)

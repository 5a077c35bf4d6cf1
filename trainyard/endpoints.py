"""Where this trainyard is reached (`DATA/endpoints.json`, written by `trainyard up`): the API's
and NATS's URLs as other machines use them, and the CA's pin. `host add` builds its join command
from it; the CLI on this machine finds the gateway and the CA to trust through it."""

from __future__ import annotations

from pathlib import Path

import msgspec

from shared import tls
from shared.paths import write_private

ENDPOINTS_FILE = "endpoints.json"


class Endpoints(msgspec.Struct, kw_only=True):
    api_url: str
    nats_url: str
    ca_pin: str = ""  # empty: loopback only, no TLS


def write_endpoints(data_dir: Path, endpoints: Endpoints) -> None:
    write_private(data_dir / ENDPOINTS_FILE, msgspec.json.encode(endpoints))


def read_endpoints(data_dir: Path) -> Endpoints | None:
    try:
        return msgspec.json.decode((data_dir / ENDPOINTS_FILE).read_bytes(), type=Endpoints)
    except (OSError, msgspec.DecodeError):
        return None


def local_ca(data_dir: Path) -> str:
    """The CA `up --listen` made in `data_dir`, or "" when it made none."""
    path = tls.tls_dir(data_dir) / tls.CA_FILE
    return str(path) if path.exists() else ""

"""How the CLI reaches a gateway: its URL, the API token and the CA to trust (each from a flag,
the environment, or what `trainyard up` left in --data-dir), and the HTTP calls themselves."""

from __future__ import annotations

import argparse
import os
import ssl
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx

from shared import tls
from trainyard.endpoints import local_ca, read_endpoints


class ClientError(Exception):
    """A failed call, already phrased for the user."""

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field  # the request field the gateway named, if any


class Gateway:
    def __init__(self, url: str, token: str | None, token_from: str = "", ca_file: str = "",
                 timeout_s: float = 60.0) -> None:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        verify: ssl.SSLContext | bool = tls.client_context(ca_file) if ca_file else True
        self.http = httpx.Client(base_url=url.rstrip("/"), headers=headers, timeout=timeout_s, verify=verify)
        self.token_from = token_from  # where the token was found, for the hint on a 401

    def failure(self, r: httpx.Response) -> ClientError:
        try:
            body = r.json()
            detail = body.get("detail") or body.get("message") or r.text
            field = body.get("field")
        except ValueError:
            detail, field = r.text, None
        message = f"{r.status_code}: {detail}" + (f" (field {field})" if field and field not in detail else "")
        if r.status_code == 401:
            message += f"; {self.token_from}"
        return ClientError(message, field)

    def call(self, method: str, path: str, **kw: Any) -> Any:
        try:
            r = self.http.request(method, path, **kw)
        except httpx.HTTPError as exc:
            raise ClientError(f"cannot reach the gateway at {self.http.base_url}: {exc}") from None
        if r.status_code >= 400:
            raise self.failure(r)
        return r.json() if r.content else None

    def text(self, path: str, **params: Any) -> Iterator[bytes]:
        """A streamed text body, chunk by chunk (a whole log: constant memory)."""
        try:
            with self.http.stream("GET", path, params=params, timeout=None) as r:
                if r.status_code >= 400:
                    r.read()
                    raise self.failure(r)
                yield from r.iter_bytes()
        except httpx.HTTPError as exc:
            raise ClientError(f"stream broken: {exc}") from None

    def stream(self, path: str, **params: Any):
        """(event, data) of an SSE stream."""
        event, data = "message", list[str]()
        try:
            with self.http.stream("GET", path, params=params, timeout=None) as r:
                if r.status_code >= 400:
                    r.read()
                    raise self.failure(r)
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


def token_for(args: argparse.Namespace) -> tuple[str | None, str]:
    """The token, and where it came from (said on a 401)."""
    if args.token:
        return args.token, "the token given with --token was refused"
    if os.environ.get("TRAINYARD_TOKEN"):
        return os.environ["TRAINYARD_TOKEN"], "the token in TRAINYARD_TOKEN was refused"
    path = Path(args.data_dir) / "api-token"
    if path.is_file():
        return path.read_text().strip(), f"the token in {path.resolve()} was refused"
    return None, (f"no token: none given with --token or TRAINYARD_TOKEN, and no {path.resolve()} "
                  "(give --data-dir where `trainyard up` wrote api-token)")


def is_local(url: str) -> bool:
    """Whether the gateway runs on this machine (then so does `up`'s agent, in its cwd terms)."""
    host = httpx.URL(url).host
    if host in ("127.0.0.1", "localhost", "::1"):
        return True
    names, addresses = tls.local_names()  # `trainyard up --listen` advertises one of these
    return host in names or host in addresses


def url_and_ca(args: argparse.Namespace) -> tuple[str, str]:
    """The gateway's URL (--url, TRAINYARD_URL, else where `trainyard up` in --data-dir said it
    listens) and the CA to trust for https (TRAINYARD_CA, else up's own CA in --data-dir)."""
    data_dir = Path(args.data_dir)
    endpoints = read_endpoints(data_dir)
    url = (args.url or os.environ.get("TRAINYARD_URL", "")
           or (endpoints.api_url if endpoints else "http://127.0.0.1:8000"))
    return url, os.environ.get("TRAINYARD_CA") or local_ca(data_dir)

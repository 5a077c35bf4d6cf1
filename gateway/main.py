"""The gateway process: uvicorn serving the app, with its runtime started first."""

from __future__ import annotations

import asyncio
import faulthandler
import importlib.util
import io
import ipaddress
import logging
import sys
from pathlib import Path
from types import FrameType

import uvicorn

from gateway.api.app import create_app
from gateway.api.auth import TOKENS_FILE, TokenStore
from gateway.runtime import GatewayRuntime
from shared.config import GatewaySettings
from shared.paths import RootNotAllowed, private_dir

log = logging.getLogger("trainyard.gateway")

# How long a shutdown may take before the gateway writes every thread's stack to its log and
# exits anyway: a replica stuck in shutdown would keep its scheduler lease renewed and hold the
# whole queue up. uvicorn's own connection drain is capped at 5 s of this.
SHUTDOWN_LIMIT_S = 15.0


class InsecureRefused(SystemExit):
    pass


def _is_loopback(bind: str) -> bool:
    try:
        return ipaddress.ip_address(bind).is_loopback
    except ValueError:
        return bind == "localhost"


def token_store_for(settings: GatewaySettings) -> TokenStore | None:
    store = TokenStore(Path(settings.data_dir) / TOKENS_FILE)
    if store:
        return store
    if settings.insecure and _is_loopback(settings.bind):
        log.warning("no API tokens and --insecure on loopback: every request is admin")
        return None
    raise InsecureRefused(
        f"no API tokens in {Path(settings.data_dir) / TOKENS_FILE}: create one with "
        "`trainyard token create --role admin`, or run on loopback with --insecure"
    )


def run_gateway(settings: GatewaySettings) -> None:
    private_dir(Path(settings.data_dir))
    tokens = token_store_for(settings)
    try:
        runtime = GatewayRuntime(settings)
    except RootNotAllowed as exc:
        sys.exit(f"trainyard gateway: {exc}")
    app = create_app(runtime, tokens)
    # httptools and uvloop: the C HTTP parser and event loop roughly double the requests one
    # worker serves (DESIGN §9 asks 2,000 req/s of it); plain asyncio and h11 where missing.
    config = uvicorn.Config(app, host=settings.bind, port=settings.port, log_level="warning",
                            access_log=False, lifespan="on", timeout_graceful_shutdown=5,
                            http="httptools" if _have("httptools") else "h11",
                            ssl_certfile=settings.tls_cert or None, ssl_keyfile=settings.tls_key or None)
    server = BoundedShutdownServer(config)
    if _have("uvloop"):
        import uvloop

        uvloop.run(server.serve())
    else:
        asyncio.run(server.serve())


class BoundedShutdownServer(uvicorn.Server):
    """uvicorn's server with a watchdog armed by the first SIGTERM/SIGINT (see SHUTDOWN_LIMIT_S)."""

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if not self.should_exit:
            faulthandler.dump_traceback_later(SHUTDOWN_LIMIT_S, exit=True)
            # faulthandler shows threads, not coroutines: a shutdown stuck on an await shows an
            # idle loop there. The tasks still pending say what it waits for.
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                loop = None
            if loop is not None:
                loop.call_soon_threadsafe(loop.call_later, SHUTDOWN_LIMIT_S - 3, _log_pending_tasks)
        super().handle_exit(sig, frame)


def _log_pending_tasks() -> None:
    out = io.StringIO()
    for task in asyncio.all_tasks():
        task.print_stack(limit=12, file=out)
    log.error("shutdown still running after %.0fs; pending tasks:\n%s", SHUTDOWN_LIMIT_S - 3, out.getvalue())


def _have(module: str) -> bool:
    return importlib.util.find_spec(module) is not None

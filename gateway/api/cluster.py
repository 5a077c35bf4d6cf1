"""Routes for GPUs, hosts, system status and seed 002's seven queue endpoints."""

from __future__ import annotations

import re

import msgspec
from litestar import Request, delete, get, post, put
from litestar.handlers import HTTPRouteHandler
from litestar.types import Guard

from gateway import schemas as views
from gateway.api.auth import caller_name, caller_role
from gateway.errors import InvalidField, decode_body
from gateway.runtime import GatewayRuntime
from gateway.services.quotas import QuotaRequest, QuotaView

QUOTA_NAME = re.compile(r"^[A-Za-z0-9][\w.-]{0,63}$")
_quota_decoder = msgspec.json.Decoder(QuotaRequest)


def cluster_routes(runtime: GatewayRuntime, prefix: str, *, viewer: list[Guard],
                   operator: list[Guard], admin: list[Guard]) -> list[HTTPRouteHandler]:
    def cluster():
        return runtime.cluster

    @get(f"{prefix}/gpus", guards=viewer)
    async def gpus() -> views.GpuList:
        """Every GPU of every host that has reported, with the job using it."""
        return cluster().gpus()

    @get(f"{prefix}/hosts", guards=viewer)
    async def hosts() -> list[views.HostStatus]:
        return cluster().hosts()

    @get(f"{prefix}/system/status", guards=viewer)
    async def system_status() -> views.SystemStatus:
        return cluster().system_status(await runtime.health())

    @get(f"{prefix}/queue", guards=viewer)
    async def queue() -> views.QueueView:
        """Queued jobs in the order they will be considered, why each waits, and an estimated
        wait where the running jobs' ETAs allow one."""
        return await cluster().queue()

    @post(f"{prefix}/queue/process", guards=operator, status_code=200)
    async def queue_process() -> views.ProcessResult:
        """A scheduling pass now (run by whichever gateway holds the scheduler lease)."""
        return await cluster().process_now()

    @delete(f"{prefix}/queue/{{job_id:str}}", guards=operator, status_code=200)
    async def queue_remove(job_id: str, request: Request) -> views.StopResponse:
        """Take a queued (or held) job out of the queue; it ends as `stopped`."""
        runtime.service.check_owner(job_id, caller_role(request), caller_name(request))
        return await cluster().remove_from_queue(job_id, caller_name(request))

    @get(f"{prefix}/queue/{{job_id:str}}/status", guards=viewer)
    async def queue_job_status(job_id: str) -> views.QueueJobStatus:
        return await cluster().queue_job(job_id)

    @post(f"{prefix}/queue/processor/start", guards=admin, status_code=200)
    async def processor_start(request: Request) -> views.ProcessorStatus:
        return await cluster().set_processor(True, caller_name(request))

    @post(f"{prefix}/queue/processor/stop", guards=admin, status_code=200)
    async def processor_stop(request: Request) -> views.ProcessorStatus:
        """Pause placing jobs (an event: it survives restarts). Running jobs are not touched."""
        return await cluster().set_processor(False, caller_name(request))

    @get(f"{prefix}/queue/processor/status", guards=viewer)
    async def processor_status() -> views.ProcessorStatus:
        return cluster().processor_status()

    @put(f"{prefix}/quotas/{{kind:str}}/{{name:str}}", guards=admin, status_code=200)
    async def set_quota(kind: str, name: str, request: Request) -> QuotaView:
        """Limit a user's (a token's name) or a project's GPUs and running jobs; null lifts one.
        A job over its owner's quota waits, saying so."""
        if kind not in ("user", "project"):
            raise InvalidField(f"kind must be user or project, not {kind!r}", field="kind")
        if not QUOTA_NAME.match(name):
            raise InvalidField("a name is 1-64 letters, digits, '.', '_' or '-'", field="name")
        limits = decode_body(_quota_decoder, await request.body(), QuotaRequest())
        return await runtime.quotas.set(kind, name, limits, caller_name(request))  # type: ignore[arg-type]

    @get(f"{prefix}/quotas", guards=viewer)
    async def list_quotas() -> list[QuotaView]:
        """Every quota, with what its user or project holds now."""
        return runtime.quotas.list()

    return [gpus, hosts, system_status, queue, queue_process, queue_remove, queue_job_status,
            processor_start, processor_stop, processor_status, set_quota, list_quotas]

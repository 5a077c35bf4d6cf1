"""Routes for GPUs, hosts, system status and seed 002's seven queue endpoints."""

from __future__ import annotations

from litestar import Request, delete, get, post
from litestar.handlers import HTTPRouteHandler
from litestar.types import Guard

from gateway import schemas as views
from gateway.api.auth import caller_name, caller_role
from gateway.runtime import GatewayRuntime


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

    return [gpus, hosts, system_status, queue, queue_process, queue_remove, queue_job_status,
            processor_start, processor_stop, processor_status]

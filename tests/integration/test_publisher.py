"""The agent's publisher against a real nats-server: a batch the server can never take (over its
max_payload) is sent in smaller pieces instead of being retried forever."""

from __future__ import annotations

import asyncio

from agent.publisher import ColumnBatcher
from shared import events as ev
from shared import subjects
from shared.config import GatewaySettings
from shared.nats import provision
from shared.nats.connect import close_quietly, connect
from tests.conftest import Nats

WIDE_LINE = "字" * 1_500_000  # 1.5 M characters, 4.5 MB in UTF-8: one fits the 8 MB limit, two do not


async def test_a_batch_over_the_servers_limit_is_split_not_retried_forever(nats: Nats) -> None:
    nc = await connect(nats.url, "test-publisher", credentials=str(nats.stack.credentials("gateway")))
    js = nc.jetstream()
    settings = GatewaySettings()  # the streams as a gateway makes them
    await provision.ensure_streams(js, log_max_age_s=settings.log_max_age_s, log_max_bytes=settings.log_max_bytes)
    job_id, host = "job_wide_lines", "wide-host"

    def build(first: int, c: dict[str, list]) -> ev.LogBatch:
        return ev.LogBatch.of_lines(job_id=job_id, attempt=1, ts_s=1.0, first_seq=first, line_ts_s=c["ts"],
                                    stream=c["stream"], level=c["level"], kind=c["kind"], text=c["text"])

    # Sizes are counted in characters, as the reporter does: four lines "fit" a 32 MB batch.
    batcher = ColumnBatcher(js, host, ("ts", "stream", "level", "kind", "text"), build, 32 << 20)
    shipper = asyncio.create_task(batcher.run())
    try:
        batcher.extend([len(WIDE_LINE)] * 4, ([1.0] * 4, ["stdout"] * 4, ["INFO"] * 4, ["train"] * 4,
                                               [WIDE_LINE] * 4))
        async with asyncio.timeout(20):
            await batcher.drained()
        assert batcher.next_seq == 4  # every line shipped
        last = ev.decode_job_event((await js.get_last_msg(subjects.LOG_STREAM, subjects.job_log(job_id, host))).data)
        assert isinstance(last, ev.LogBatch) and last.first_seq == 3 and last.texts() == [WIDE_LINE]
    finally:
        shipper.cancel()
        await close_quietly(nc)

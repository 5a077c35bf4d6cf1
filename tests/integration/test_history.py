"""A whole metric series in one request (issue 17): a lifted cap, a columnar shape, and what a
limit left out."""

from __future__ import annotations

import sys

from gateway.projection.schema import open_db
from gateway.read.queries import LogFilter, Reader
from shared.ids import job_key
from tests.conftest import Cluster

# 2,500 steps of loss and lr; at step 2,000 the loss is nan.
SERIES = """
import json
for s in range(2500):
    loss = float('nan') if s == 2000 else 1 / (s + 1)
    print('@trainyard ' + json.dumps({'step': s, 'metrics': {'loss': loss, 'lr': 0.5}}))
"""


def test_a_whole_series_comes_in_one_request_as_columns_or_points(cluster: Cluster) -> None:
    api = cluster.api
    job = api.submit([sys.executable, "-c", SERIES])
    assert api.wait(job)["status"] == "succeeded"
    r = api.client.get(f"/jobs/{job}/metrics", params={"name": "loss,lr", "limit": 100_000, "format": "columns"})
    assert r.status_code == 200, r.text
    answer = r.json()
    assert answer["format"] == "columns" and answer["left_out"] == {}
    loss = answer["series"]["loss"]
    assert loss["step"] == list(range(2500)) and loss["attempt"] == [1] * 2500
    assert loss["value"][:3] == [1.0, 0.5, 1 / 3] and loss["value"][2000] is None  # nan: null in JSON
    assert len(loss["epoch"]) == len(loss["ts_s"]) == 2500 and loss["ts_s"] == sorted(loss["ts_s"])
    assert answer["series"]["lr"]["value"] == [0.5] * 2500
    points = api.client.get(f"/jobs/{job}/metrics", params={"name": "loss", "limit": 100_000}).json()
    assert [p["step"] for p in points["series"]["loss"]] == loss["step"] and points["left_out"] == {}


def test_a_limit_keeps_the_latest_points_and_says_how_many_it_left_out(cluster: Cluster) -> None:
    api = cluster.api
    job = api.submit([sys.executable, "-c", SERIES])
    api.wait(job)
    cut = api.client.get(f"/jobs/{job}/metrics", params={"name": "loss", "limit": 1000, "format": "columns"}).json()
    assert cut["series"]["loss"]["step"] == list(range(1500, 2500)) and cut["left_out"] == {"loss": 1500}
    points = api.client.get(f"/jobs/{job}/metrics", params={"limit": 1000}).json()
    assert points["left_out"] == {"loss": 1500, "lr": 1500}
    assert [p["step"] for p in points["series"]["lr"]] == list(range(1500, 2500))
    down = api.client.get(f"/jobs/{job}/metrics", params={"name": "lr", "downsample": 10, "format": "columns"}).json()
    assert len(down["series"]["lr"]["value"]) == 10 and down["left_out"] == {}
    too_many = api.client.get(f"/jobs/{job}/metrics", params={"limit": 10_000_001})
    assert too_many.status_code == 422 and "limit" in too_many.text
    odd = api.client.get(f"/jobs/{job}/metrics", params={"format": "csv"})
    assert odd.status_code == 422 and "format" in odd.text


async def test_a_tail_read_from_the_end_of_a_long_log_is_the_tail(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """The windowed tail (Reader._tail_window) answers what the plain query answers, across
    rare levels, a second attempt shorter than the tail, and a window that never fills."""
    con = open_db(str(tmp_path / "p.duckdb"))
    job = "job_20261130_000000_cccccc"
    con.execute(f"""INSERT INTO logs SELECT '{job}', {job_key(job)}, a, i, i, 'stdout',
        CASE WHEN i % 997 = 0 THEN 'ERROR' WHEN i % 50 = 0 THEN 'WARNING' ELSE 'INFO' END, 'train', 'l' || i
        FROM (SELECT 1 AS a, i FROM range(200000) t(i) UNION ALL SELECT 2, i FROM range(30) t(i))""")
    reader = Reader(con)
    try:
        for chosen in (LogFilter(), LogFilter(min_level="WARNING"), LogFilter(min_level="ERROR"),
                       LogFilter(attempt=1, min_level="ERROR"), LogFilter(kind="eval")):
            for tail in (1, 100, 5000):
                plain = await reader.logs(job, chosen, tail=tail, limit=tail)
                latest = 1 if chosen.attempt == 1 else 2
                last = 199_999 if latest == 1 else 29
                windowed = await reader.logs(job, chosen, tail=tail, limit=tail, latest=(latest, last))
                assert windowed == plain, (chosen, tail)
                text = b"".join([b async for b in reader.log_text(job, chosen, tail)])
                text_windowed = b"".join([b async for b in reader.log_text(job, chosen, tail, latest=(latest, last))])
                assert text_windowed == text == "".join(f"{ln.text}\n" for ln in plain).encode(), (chosen, tail)
        quick = await reader.logs(job, LogFilter(attempt=1, min_level="ERROR"), tail=3, limit=3, latest=(1, 199_999))
        assert [ln.seq for ln in quick] == [197_406, 198_403, 199_400]
    finally:
        reader.close()
        con.close()


def test_a_columns_answer_carries_the_fields_asked_for(cluster: Cluster) -> None:
    api = cluster.api
    job = api.submit([sys.executable, "-c", "print('@trainyard {\"step\": 4, \"metrics\": {\"loss\": 0.5}}')"])
    api.wait(job)
    r = api.client.get(f"/jobs/{job}/metrics", params={"format": "columns", "fields": "step,value"})
    assert r.json()["series"]["loss"] == {"step": [4], "value": [0.5]}, r.text
    bad = api.client.get(f"/jobs/{job}/metrics", params={"format": "columns", "fields": "step,loss"})
    assert bad.status_code == 422 and bad.json()["field"] == "fields" and "'loss'" in bad.text

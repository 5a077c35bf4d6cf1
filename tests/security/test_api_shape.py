"""Bad parameters and hostile text (security review L1, L4, L7): a query parameter's bad value is
a 422 naming it, with no Python repr, on every route set; names with control characters are
refused and markup is shown as text by the CLI; the OpenAPI document declares the bearer scheme
and nothing loads from a CDN."""

from __future__ import annotations

import re
import subprocess
import sys

import httpx
import pytest

from tests.conftest import Cluster

BAD_PARAMETERS = [
    ("/jobs", {"limit": "0"}, "limit"), ("/jobs", {"limit": "many"}, "limit"), ("/jobs", {"offset": "-1"}, "offset"),
    ("/jobs", {"gpu_id": "5000"}, "gpu_id"), ("/jobs", {"priority": "11"}, "priority"),
    ("/jobs", {"cursor": "nonsense"}, "cursor"), ("/jobs/{job}/logs", {"after_seq": "1e30"}, "after_seq"),
    ("/jobs/{job}/logs", {"after_seq": str(2**63)}, "after_seq"),
    ("/jobs/{job}/logs", {"attempt": str(10**30)}, "attempt"),
    ("/jobs/{job}/logs", {"since": "nan"}, "since"), ("/jobs/{job}/logs", {"since": "inf"}, "since"),
    ("/jobs/{job}/logs", {"since": "1e400"}, "since"), ("/jobs/{job}/logs", {"tail": "0"}, "tail"),
    ("/jobs/{job}/metrics", {"step_min": str(10**30)}, "step_min"),
    ("/jobs/{job}/metrics", {"downsample": "0"}, "downsample"),
    ("/jobs/{job}/events", {"after_seq": "-5"}, "after_seq"),
]


@pytest.fixture(scope="module")
def job(cluster: Cluster) -> str:
    made = cluster.api.submit([sys.executable, "-c", "print('x')"], name="[bold red]RICH[/bold red] [link=http://e]x[/link]")
    cluster.api.wait(made)
    return made


@pytest.mark.parametrize(("route", "params", "field"), BAD_PARAMETERS)
def test_a_bad_parameter_is_a_422_naming_it(cluster: Cluster, job: str, route: str, params: dict, field: str) -> None:
    r = cluster.api.client.get(route.format(job=job), params=params)
    assert r.status_code == 422 and r.json()["field"] == field, r.text
    assert "ParamType" not in r.text and "{'" not in r.json()["detail"]  # no Python repr


def test_seed_routes_answer_400_naming_the_parameter(cluster: Cluster, job: str) -> None:
    r = cluster.api.client.get(f"{cluster.url}/api/v1/training/list", params={"limit": "0"})
    assert r.status_code == 400 and "limit" in r.json()["message"] and "ParamType" not in r.text


@pytest.mark.parametrize(("field", "text"), [("name", "a\x1b[31mred"), ("name", "a\x00b"), ("name", "two\nlines"),
                                             ("description", "x\x1b]0;TITLE\x07"), ("description", "\x9bcsi")])
def test_control_characters_in_shown_text_are_refused(cluster: Cluster, field: str, text: str) -> None:
    r = cluster.api.client.post("/jobs", json={"trainer": "command", "command": ["true"], "gpus": 0, field: text})
    assert r.status_code == 422 and r.json()["field"] == field, r.text


def test_the_cli_shows_markup_as_text(cluster: Cluster, job: str) -> None:
    table = subprocess.run([sys.executable, "-m", "trainyard", "list", "--limit", "50", "--url", cluster.url,
                            "--token", cluster.token], capture_output=True, text=True, timeout=60,
                           env={"COLUMNS": "250", "PATH": "/usr/bin:/bin"})
    assert table.returncode == 0, table.stderr
    assert "[bold red]RICH[/bold red]" in table.stdout and "\x1b]8;" not in table.stdout


def test_the_openapi_document_declares_the_bearer_scheme_and_loads_nothing_remote(cluster: Cluster) -> None:
    doc = httpx.get(f"{cluster.url}/docs/openapi.json").json()
    assert doc["components"]["securitySchemes"]["BearerToken"] == {
        "type": "http", "scheme": "bearer", "description": "an API token: trainyard token create"}
    assert {"BearerToken": []} in doc["security"]
    for page in ("/docs", "/docs/swagger", "/docs/redoc", "/docs/elements", "/docs/rapidoc", "/ui/"):
        r = httpx.get(f"{cluster.url}{page}")
        text = r.text.lower()
        # Only the gateway's own scripts and styles (gateway/web/static), nothing from elsewhere.
        assert "cdn" not in text and "//" not in text.replace("<!doctype html>", ""), page
        assert re.findall(r'<script[^>]*>', text) in ([], ['<script src="/ui/assets/docs.js">'],
                                                       ['<script src="/ui/assets/app.js">']), page

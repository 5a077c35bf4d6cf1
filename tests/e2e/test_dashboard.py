"""The dashboard in a real headless browser (issue 18): Debian's chromium driven by Playwright
against a real stack (nats-server, gateway, one agent with two simulated GPUs). Skipped, with the
reason, where Playwright or a chromium binary is missing.

Nothing outside the gateway's own origin may be requested: every test's page fails any other
request and the test checks that none was tried (the clusters this runs on are often offline)."""

from __future__ import annotations

import os
import re
import shutil
import sys
from collections.abc import Iterator
from urllib.parse import urlparse

import pytest

from gateway.api.auth import TOKENS_FILE, TokenStore
from tests.harness import Rig, started_rig

sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install playwright)")
CHROMIUM = os.environ.get("TRAINYARD_TEST_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
if CHROMIUM is None:
    pytest.skip("no chromium binary (apt-get install chromium, or set TRAINYARD_TEST_CHROMIUM)",
                allow_module_level=True)

TIMEOUT_MS = 20_000
# Prints a step, a loss and a log line every 0.15 s for a minute: a curve that grows.
TRAINING = ("import json, time\n"
            "for step in range(1, 400):\n"
            "    report = {'step': step, 'total_steps': 400, 'metrics': {'loss': 2.0 / step}}\n"
            "    print('@trainyard ' + json.dumps(report), flush=True)\n"
            "    print(f'training line {step}', flush=True)\n"
            "    time.sleep(0.15)\n")


@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rig]:
    with started_rig(tmp_path_factory.mktemp("dashboard"), {"d": "2x80GB"}) as rig:
        yield rig


@pytest.fixture(scope="module")
def browser(rig: Rig) -> Iterator[sync_api.Browser]:
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
        yield browser
        browser.close()


class Page:
    """A fresh browser context on the rig's gateway that refuses (and records) any request to
    another origin."""

    def __init__(self, browser: sync_api.Browser, rig: Rig) -> None:
        self.base = rig.api.base
        self.context = browser.new_context(viewport={"width": 1300, "height": 900})
        self.context.set_default_timeout(TIMEOUT_MS)
        self.elsewhere: list[str] = []
        self.context.route("**/*", self._only_ours)
        self.page = self.context.new_page()
        self.errors: list[str] = []
        self.page.on("pageerror", lambda e: self.errors.append(str(e)))

    def _only_ours(self, route: sync_api.Route) -> None:
        url = urlparse(route.request.url)
        if f"{url.scheme}://{url.netloc}" == self.base:
            route.continue_()
        else:
            self.elsewhere.append(route.request.url)
            route.abort()

    def close(self) -> None:
        self.context.close()
        assert self.elsewhere == [], f"requests beyond the gateway: {self.elsewhere}"
        assert self.errors == [], f"script errors: {self.errors}"


@pytest.fixture
def page(browser: sync_api.Browser, rig: Rig) -> Iterator[Page]:
    opened = Page(browser, rig)
    yield opened
    opened.close()


def test_sign_in_watch_a_job_grow_follow_its_log_and_stop_it(rig: Rig, page: Page) -> None:
    p = page.page
    p.goto(f"{page.base}/ui/")
    p.fill("#token", rig.token)
    p.click("button[type=submit]")
    sync_api.expect(p.locator("#who")).to_have_text(re.compile(r"^admin\S* \(admin\)$"))
    sync_api.expect(p.locator("#jobs")).to_be_visible()

    job = rig.api.submit([sys.executable, "-c", TRAINING], name="dash-train")
    row = p.locator(f'tr[data-job="{job}"]')  # appears without a reload: the page follows the changes stream
    sync_api.expect(row.locator("[data-status]")).to_have_text("running")
    sync_api.expect(row.locator(".bar")).to_be_visible()

    row.locator("a").first.click()
    sync_api.expect(p.locator("#job-status [data-status]")).to_have_text("running")
    sync_api.expect(p.locator("#metric")).to_have_value("loss")
    chart = p.locator("#chart")
    p.wait_for_function("() => Number(document.querySelector('#chart')?.dataset.points) >= 3", timeout=TIMEOUT_MS)
    first = int(chart.get_attribute("data-points") or 0)
    p.wait_for_function(f"() => Number(document.querySelector('#chart')?.dataset.points) > {first + 5}",
                        timeout=TIMEOUT_MS)  # the curve grows as the trainer prints
    sync_api.expect(p.locator("#logs")).to_contain_text("training line 3")
    p.fill("#log-search", "line 7")
    sync_api.expect(p.locator("#logs")).to_contain_text("training line 7")
    sync_api.expect(p.locator("#logs")).not_to_contain_text("training line 3\n")
    sync_api.expect(p.locator("#progress-text")).to_contain_text("/ 400")

    p.click("#act-stop")
    sync_api.expect(p.locator("#job-status [data-status]")).to_have_text("stopped", timeout=TIMEOUT_MS)
    assert rig.api.status(job)["status"] == "stopped"


def test_the_queue_says_why_a_job_waits_and_an_admin_can_pause_it(rig: Rig, page: Page) -> None:
    waiting = rig.api.submit([sys.executable, "-c", "print(1)"], gpus=3, name="too-big")
    try:
        p = page.page
        p.goto(f"{page.base}/ui/#token={rig.token}&/queue")
        assert "token" not in p.url  # taken from the fragment, then removed from the address
        row = p.locator(f'#queue tr[data-job="{waiting}"]')
        sync_api.expect(row.locator(".reason")).to_have_text("needs 3 GPUs; no online host has that many GPUs")
        p.click("#pause")
        sync_api.expect(p.locator("#processor")).to_have_text("The queue processor is stopped.")
        assert rig.api.client.get("/queue/processor/status").json()["status"] == "stopped"
        p.click("#unpause")
        sync_api.expect(p.locator("#processor")).to_have_text("The queue processor is running.")
    finally:
        rig.api.client.delete(f"/queue/{waiting}")


def test_a_viewer_sees_jobs_but_no_buttons(rig: Rig, page: Page) -> None:
    viewer = TokenStore(rig.data_dir / TOKENS_FILE).create("viewer", "dash-viewer")
    job = rig.api.submit([sys.executable, "-c", "import time; time.sleep(30)"], name="viewer-sees")
    try:
        rig.api.wait(job, statuses={"running"})
        p = page.page
        p.goto(f"{page.base}/ui/#token={viewer}&/job/{job}")
        sync_api.expect(p.locator("#who")).to_have_text("dash-viewer (viewer)")
        sync_api.expect(p.locator("#job-status [data-status]")).to_have_text("running")
        assert p.locator("#act-stop").count() == 0 and p.locator("#actions button").count() == 0
        p.goto(f"{page.base}/ui/#/queue")
        sync_api.expect(p.locator("#processor")).to_be_visible()
        assert p.locator("#pause").count() == 0
    finally:
        rig.api.client.post(f"/jobs/{job}/stop")


def test_gpus_and_hosts_page_and_compare(rig: Rig, page: Page) -> None:
    # Its reports set its simulated GPU's utilisation (70 %), which the heartbeats carry.
    busy = TRAINING.replace("400", "20").replace("'metrics'", "'gpu_util': 70, 'metrics'")
    job = rig.api.submit([sys.executable, "-c", busy], gpus=1, name="on-a-gpu")
    rig.api.wait(job, timeout_s=30)
    p = page.page
    p.goto(f"{page.base}/ui/#token={rig.token}&/gpus")
    sync_api.expect(p.locator("#hosts")).to_contain_text("d")
    sync_api.expect(p.locator("#gpus tr")).to_have_count(3)  # a header and two GPUs
    p.wait_for_function("() => Number(document.querySelector('#gpu-util')?.dataset.points) > 0")
    history = rig.api.client.get("/gpus/history").json()["gpus"]
    assert any(u and u > 0 for g in history for u in g["utilization_pct"]), history
    p.goto(f"{page.base}/ui/#/compare/{job}")
    p.wait_for_function("() => Number(document.querySelector('#compare-chart')?.dataset.points) >= 19")


def test_docs_render_their_operations_offline(rig: Rig, page: Page) -> None:
    p = page.page
    p.goto(f"{page.base}/docs")
    sync_api.expect(p.locator("section.operation").first).to_be_visible()
    assert p.locator("section.operation").count() > 30
    sync_api.expect(p.locator("#docs")).to_contain_text("POST /api/v1/training/jobs")

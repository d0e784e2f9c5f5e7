"""The live dashboard in real Chromium: sign in, open it, send inference, see the chart move."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.e2e.conftest import ADMIN_PASSWORD, Platform, boot_platform

pytestmark = [pytest.mark.browser, pytest.mark.timeout(300)]

MODEL = "demo-mlp"
ONE_ROW = {"inputs": [{"name": "input", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}]}


@pytest.fixture(scope="module")
def platform(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Platform]:
    with boot_platform(tmp_path_factory.mktemp("browser"), BERTH_SEED_DEMO_DEPLOY="1") as running:
        running.wait_healthy()
        yield running


def _key(platform: Platform) -> str:
    match = re.search(r"API key (brt_\S+)", platform.log())
    assert match
    return match[1]


def _sign_in(page, platform: Platform, username: str) -> None:
    page.goto(f"{platform.base_url}/login/")
    page.fill("#id_username", username)
    page.fill("#id_password", ADMIN_PASSWORD)
    page.click("button[type=submit]")
    page.wait_for_url(f"{platform.base_url}/")


def test_the_dashboard_shows_an_inference_within_seconds(platform: Platform, chromium, screenshots: Path):
    key = _key(platform)
    headers = {"Authorization": f"Bearer {key}"}
    deadline = time.monotonic() + 90
    while httpx.get(f"{platform.base_url}/v2/models/{MODEL}/ready", headers=headers).status_code != 200:
        assert time.monotonic() < deadline, platform.log()[-3000:]
        time.sleep(0.3)
    context = chromium.new_context(viewport={"width": 1280, "height": 800})
    page = context.new_page()
    _sign_in(page, platform, "demo-owner")
    page.screenshot(path=str(screenshots / "overview.png"), full_page=True)
    page.click("a[href='/t/demo/dashboard/']")
    page.wait_for_function("window.berthDashboard && window.berthDashboard.ready")
    page.wait_for_function("document.getElementById('live-status').textContent === 'live'")
    before = page.evaluate("window.berthDashboard.updates")
    latest_point = (
        "(() => { const d = document.getElementById('chart-throughput').data;"
        " return d.length && d[0].x.length ? [d[0].x[d[0].x.length - 1], d[0].y[d[0].y.length - 1]] : null; })()"
    )
    point_before = page.evaluate(latest_point)
    for _ in range(5):
        assert (
            httpx.post(f"{platform.base_url}/v2/models/{MODEL}/infer", json=ONE_ROW, headers=headers).status_code == 200
        )
    page.wait_for_function(
        f"window.berthDashboard.updates > {before} && window.berthDashboard.lastRequests > 0", timeout=10_000
    )
    # The throughput chart's latest point changed: a new second with requests in it.
    point_after = page.evaluate(latest_point)
    assert point_after is not None and point_after != point_before and point_after[1] > 0, (point_before, point_after)
    # The workers' side (batch sizes, queue vs compute) arrives with their heartbeats.
    deadline = time.monotonic() + 15
    batches = 0
    while batches == 0:
        assert time.monotonic() < deadline, "no batch-size bars"
        page.click("button.range[data-range='15m']")
        page.wait_for_timeout(700)
        batches = page.evaluate(
            "(() => document.getElementById('chart-batches').data.reduce("
            "(n, t) => n + t.y.reduce((a, b) => a + b, 0), 0))()"
        )
    page.screenshot(path=str(screenshots / "dashboard.png"), full_page=True)
    # A narrow window still works.
    page.set_viewport_size({"width": 420, "height": 900})
    page.screenshot(path=str(screenshots / "dashboard-narrow.png"), full_page=True)
    context.close()


def test_another_tenants_dashboard_is_404_and_staff_see_the_fleet(platform: Platform, chromium, screenshots: Path):
    context = chromium.new_context(viewport={"width": 1280, "height": 800})
    page = context.new_page()
    _sign_in(page, platform, "demo-owner")
    assert page.goto(f"{platform.base_url}/t/other-tenant/dashboard/").status == 404
    assert page.goto(f"{platform.base_url}/fleet/").status == 404
    context.close()
    staff = chromium.new_context(viewport={"width": 1280, "height": 800})
    page = staff.new_page()
    _sign_in(page, platform, "admin")
    page.click("a[href='/fleet/']")
    page.wait_for_function("window.berthFleet && window.berthFleet.updates > 0")
    assert platform.worker_id in page.inner_text("#fleet-table")
    # The stored per-device series: the worker's measured memory over the last hour.
    page.wait_for_function(
        "window.berthFleet.seriesLoaded > 0 && document.getElementById('chart-device-memory').data.length > 0"
    )
    assert page.evaluate("document.getElementById('chart-device-memory').data[0].y.some((v) => v > 0)")
    page.screenshot(path=str(screenshots / "fleet.png"), full_page=True)
    staff.close()


def test_the_dashboard_shows_cost_per_prediction_and_accuracy_from_feedback(
    platform: Platform, chromium, screenshots: Path
):
    key = _key(platform)
    headers = {"Authorization": f"Bearer {key}"}
    base = f"/api/v1/tenants/demo/models/{MODEL}"
    with platform.admin() as admin:
        config = {"prediction_log": {"sample_rate": 1.0, "task": "classification"}}
        assert admin.patch(f"{base}/deployment/", json=config).status_code == 200
        time.sleep(1.5)  # the gateway re-reads its routing table
        truth = []
        for n in range(4):
            answer = httpx.post(
                f"{platform.base_url}/v2/models/{MODEL}/infer",
                json=ONE_ROW,
                headers={**headers, "X-Request-ID": f"browser-{n}"},
            )
            assert answer.status_code == 200
            scores = answer.json()["outputs"][0]["data"]
            top = max(range(len(scores)), key=lambda i: scores[i])
            truth.append({"request_id": f"browser-{n}", "ground_truth": top if n else (top + 1) % 3})
        deadline = time.monotonic() + 15
        while len(admin.get(f"{base}/predictions/").json()) < 4:
            assert time.monotonic() < deadline
            time.sleep(0.3)
        scored = httpx.post(f"{platform.base_url}{base}/feedback/", json={"feedback": truth}, headers=headers)
        assert scored.json()["scored"] == 4, scored.text
        while not admin.get("/api/v1/tenants/demo/usage/").json()["total"]["predictions"]:
            assert time.monotonic() < deadline, "no usage charged from the worker's heartbeats"
            time.sleep(0.5)
    context = chromium.new_context(viewport={"width": 1280, "height": 800})
    page = context.new_page()
    _sign_in(page, platform, "demo-owner")
    page.goto(f"{platform.base_url}/t/demo/dashboard/?model={MODEL}")
    page.wait_for_function("window.berthQuality && berthQuality.usageLoaded && berthQuality.accuracyLoaded")
    assert "75.0% over 4 rows" in page.inner_text("#accuracy-summary")
    row = page.inner_text("#cost-rows tr")
    assert MODEL in row and "USD" in row
    assert page.evaluate("document.getElementById('chart-accuracy').data[0].y.slice(-1)[0]") == 0.75
    page.locator("#cost").scroll_into_view_if_needed()
    page.screenshot(path=str(screenshots / "dashboard-quality.png"), full_page=True)
    context.close()

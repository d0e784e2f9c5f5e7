"""The admin console end to end in real Chromium: every control-plane task done in the browser.

Staff create a tenant and its quota; its owner creates a key (shown once), uploads an ONNX
model and watches it turn ready, deploys it, sends inference through the gateway with that
key and sees the dashboard move, shifts 10 % to a second version and sees both versions'
series, revokes the key and inference with it fails; a viewer cannot change anything, and a
member of another tenant gets 404. A screenshot of each page is kept.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from tests.e2e.conftest import ADMIN_PASSWORD, Platform, boot_platform

pytestmark = [pytest.mark.browser, pytest.mark.timeout(420)]

ONE_ROW = {"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}]}


def _onnx(seed: int) -> bytes:
    """A small classifier made here: FP32 [batch, 4] → 3 scores."""
    rng = np.random.default_rng(seed)
    weights = numpy_helper.from_array(rng.standard_normal((4, 3)).astype(np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["scores"])],
        "clf",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["batch", 3])],
        initializer=[weights],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8).SerializeToString()


@pytest.fixture(scope="module")
def platform(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Platform]:
    with boot_platform(tmp_path_factory.mktemp("console"), BERTH_SEED_DEMO_DEPLOY="0") as running:
        running.wait_healthy()
        yield running


class Pages:
    """One signed-in browser context, saving a screenshot per step."""

    def __init__(self, chromium, platform: Platform, screenshots: Path, username: str, password: str = ADMIN_PASSWORD):
        self.platform = platform
        self.screenshots = screenshots
        self.context = chromium.new_context(viewport={"width": 1280, "height": 800})
        self.page = self.context.new_page()
        self.page.on("dialog", lambda dialog: dialog.accept())  # destructive actions ask first
        self.page.goto(f"{platform.base_url}/login/")
        self.page.screenshot(path=str(screenshots / "console-sign-in.png"))
        self.page.fill("#id_username", username)
        self.page.fill("#id_password", password)
        self.page.click("button[type=submit]")
        self.page.wait_for_url(f"{platform.base_url}/")

    def go(self, path: str) -> int:
        return self.page.goto(self.platform.base_url + path).status

    def shot(self, name: str) -> None:
        self.page.screenshot(path=str(self.screenshots / f"console-{name}.png"), full_page=True)

    def close(self) -> None:
        self.context.close()


def _infer(platform: Platform, key: str, model: str = "clf") -> httpx.Response:
    return httpx.post(
        f"{platform.base_url}/v2/models/{model}/infer", json=ONE_ROW, headers={"Authorization": f"Bearer {key}"}
    )


def _wait(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.4)


def test_a_tenant_is_run_entirely_from_the_console(platform: Platform, chromium, screenshots: Path, tmp_path: Path):
    # Staff: a user for later, then a tenant with its owner and quota (a bad slug first).
    staff = Pages(chromium, platform, screenshots, "admin")
    staff.go("/admin/auth/user/add/")
    staff.page.fill("#id_username", "acme-viewer")
    staff.page.fill("#id_password1", "pw-viewer-77-Xq")
    staff.page.fill("#id_password2", "pw-viewer-77-Xq")
    staff.page.click("input[name=_save]")
    staff.page.wait_for_url(re.compile(r".*/admin/auth/user/\d+/change/"))
    assert staff.go("/staff/tenants/") == 200
    staff.shot("staff-tenants")
    staff.page.fill("#id_slug", "Not A Slug")
    staff.page.fill("#id_name", "Acme")
    staff.page.fill("#id_owner_username", "demo-owner")
    staff.page.click("#tenant-create button[type=submit]")
    assert staff.page.locator("#error-slug").is_visible()  # next to the field; nothing created
    staff.shot("staff-tenant-error")
    staff.page.fill("#id_slug", "acme")
    staff.page.click("#tenant-create button[type=submit]")
    staff.page.wait_for_url(f"{platform.base_url}/staff/tenants/acme/")
    staff.page.fill("#id_requests_per_second", "400")
    staff.page.fill("#id_max_concurrent_requests", "64")
    staff.page.click("#quota-form button[type=submit]")
    assert "Quota saved" in staff.page.inner_text("main")
    assert staff.page.input_value("#id_requests_per_second") == "400"
    staff.shot("staff-tenant")

    # The owner: a key, shown once.
    owner = Pages(chromium, platform, screenshots, "demo-owner")
    owner.page.select_option("#tenant-switcher", "acme")
    owner.page.wait_for_url(f"{platform.base_url}/t/acme/models/")
    owner.go("/t/acme/keys/")
    owner.page.fill("#id_name", "ci")
    owner.page.check("input[name=scopes][value=infer]")
    owner.page.check("input[name=scopes][value=read]")
    owner.page.click("#key-create button[type=submit]")
    key = owner.page.inner_text("#key-value").strip()
    assert key.startswith("brt_")
    owner.shot("key-shown-once")
    owner.go("/t/acme/keys/")
    assert key not in owner.page.content()

    # A model, its first version uploaded with a progress bar, watched until ready.
    owner.go("/t/acme/models/")
    owner.page.fill("#id_name", "clf")
    owner.page.click("#model-create button[type=submit]")
    owner.page.wait_for_url(f"{platform.base_url}/t/acme/models/clf/")
    first = tmp_path / "clf-v1.onnx"
    first.write_bytes(_onnx(1))
    owner.page.set_input_files("#upload-file", str(first))
    owner.page.click("#upload button[type=submit]")
    owner.page.wait_for_selector("#version-1 .state-ready", timeout=90_000)
    assert "x: FP32" in owner.page.inner_text("#version-1")
    owner.shot("model-ready")

    # Deploy it, then send inference through the gateway with the new key.
    owner.go("/t/acme/models/clf/deployment/")
    owner.page.click("#deployment-form button[value=save]")
    assert "Deployment saved" in owner.page.inner_text("main")
    _wait(lambda: _infer(platform, key).status_code == 200, 90, "the deployment never served")
    owner.go("/t/acme/models/clf/deployment/")
    owner.page.wait_for_selector("#replicas .state-ready")
    owner.shot("deployment")
    owner.go("/t/acme/dashboard/?model=clf")
    owner.page.wait_for_function("window.berthDashboard && window.berthDashboard.ready")
    owner.page.wait_for_function("document.getElementById('live-status').textContent === 'live'")
    before = owner.page.evaluate("window.berthDashboard.updates")
    for _ in range(5):
        assert _infer(platform, key).status_code == 200
    owner.page.wait_for_function(f"window.berthDashboard.updates > {before}", timeout=15_000)
    owner.shot("dashboard-one-version")

    # A second version, 10 % of the traffic: both versions' series show.
    owner.go("/t/acme/models/clf/")
    second = tmp_path / "clf-v2.onnx"
    second.write_bytes(_onnx(2))
    owner.page.set_input_files("#upload-file", str(second))
    owner.page.click("#upload button[type=submit]")
    owner.page.wait_for_selector("#version-2 .state-ready", timeout=90_000)
    owner.go("/t/acme/models/clf/deployment/")
    owner.page.select_option("#canary #id_version", "2")
    owner.page.fill("#canary #id_percent", "10")
    owner.page.click("#canary button[value=canary]")
    assert "v1 90 %, v2 10 %" in owner.page.inner_text("main")
    owner.shot("canary")
    owner.go("/t/acme/dashboard/?model=clf")
    owner.page.wait_for_function("window.berthDashboard && window.berthDashboard.ready")
    names: set[str] = set()
    deadline = time.monotonic() + 60
    while names != {"v1", "v2"}:
        assert time.monotonic() < deadline, names
        for _ in range(40):
            _infer(platform, key)
        owner.page.wait_for_timeout(1500)
        names = set(owner.page.evaluate("document.getElementById('chart-throughput').data.map((t) => t.name)"))
    owner.shot("dashboard-canary")

    owner.go("/t/acme/models/")
    assert "clf" in owner.page.inner_text("#models")
    owner.shot("models")

    # Members: the viewer joins; usage, quota and audit pages render.
    owner.go("/t/acme/members/")
    owner.page.fill("#id_username", "acme-viewer")
    owner.page.select_option("#id_role", "viewer")
    owner.page.click("#member-add button[type=submit]")
    assert "acme-viewer added as viewer" in owner.page.inner_text("main")
    owner.shot("members")
    for page in ("usage", "quota", "audit"):
        assert owner.go(f"/t/acme/{page}/") == 200
        owner.shot(page)
    assert "model_version.upload" in owner.page.inner_text("#audit")

    # Revoke the key: inference with it fails.
    owner.go("/t/acme/keys/")
    owner.page.click(f"#key-{key.split('_')[1]} button.danger")
    assert "revoked" in owner.page.inner_text("main")
    _wait(lambda: _infer(platform, key).status_code == 401, 5, "the revoked key still worked")
    owner.shot("keys-revoked")
    owner.close()

    # The viewer: read-only pages, no way to change anything; another tenant's pages are 404.
    viewer = Pages(chromium, platform, screenshots, "acme-viewer", "pw-viewer-77-Xq")
    assert viewer.go("/t/acme/models/") == 200
    assert viewer.page.locator("#model-create").count() == 0
    assert viewer.go("/t/acme/models/clf/") == 200 and viewer.page.locator("#upload").count() == 0
    assert viewer.go("/t/acme/models/clf/deployment/") == 200
    assert viewer.page.locator("#deployment-form, #canary").count() == 0
    viewer.shot("viewer-deployment")
    viewer.page.set_viewport_size({"width": 420, "height": 900})  # a narrow window still works
    viewer.go("/t/acme/models/clf/")
    viewer.shot("viewer-model-narrow")
    assert viewer.go("/t/acme/keys/") == 403
    assert viewer.go("/t/demo/models/") == 404 and viewer.go("/t/demo/dashboard/") == 404
    assert viewer.go("/staff/tenants/") == 404
    viewer.close()
    staff.close()

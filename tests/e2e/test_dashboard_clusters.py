"""Guest clusters in a real browser (Debian's Chromium, driven by Playwright) against a
real host service whose controllers run: a developer creates a TanzuKubernetesCluster
from the form, sees it on the namespace page, watches its page follow the status the
controllers write without reloading, scales its node pool and deletes it. A viewer sees
the cluster but none of its credentials.

The lab's network is off (``LAB_NETWORK_ENABLED=false``), so the cluster never gets a
control-plane endpoint: it stays in phase "creating" with conditions saying what it waits
for, which is what the page must show. Its release is a blank 64 MiB node image published
with ``lab tkr import``, so no VM boots anything.

A screenshot of every page is kept in test-artifacts/dashboard/ (clusters-*.png).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Browser, BrowserContext, Page, expect, sync_playwright

from tests.support.server import LabServer
from tests.support.wait import wait_for

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "test-artifacts" / "dashboard"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
KUBECTL = "/usr/bin/kubectl"
NS = "tkc-e2e"
DEV, DEV_PASSWORD = "tkc-dev", "tkc-dev-password"
VIEWER, VIEWER_PASSWORD = "tkc-viewer", "tkc-viewer-password"
RELEASE = "v1.31.4---pacific.1"
CLUSTER = "tkc-1"


@pytest.fixture(scope="module")
def lab() -> Iterator[LabServer]:
    """A host service with the network off, a blank node image published as release
    v1.31.4, and namespace tkc-e2e with best-effort-xsmall, an editor and a viewer."""
    # QEMU runs as libvirt-qemu: the directories above any disk must be traversable.
    base = Path(tempfile.mkdtemp(prefix="pacific-e2e-tkc-", dir="/var/tmp"))
    base.chmod(0o711)
    server = LabServer(base / "state", extra_env={"LAB_NETWORK_ENABLED": "false"})
    server.start()
    try:
        blank = base / "blank.qcow2"
        subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(blank), "64M"],
                       check=True, capture_output=True, timeout=60)
        server.lab("image", "import", str(blank), "--name", "blank")
        server.lab("tkr", "import", "v1.31.4", "--image", "blank")
        kubectl(server, "create", "namespace", NS)
        server.lab("class", "assign", "best-effort-xsmall", NS)
        server.add_user(DEV, DEV_PASSWORD)
        server.add_user(VIEWER, VIEWER_PASSWORD)
        server.lab("grant", NS, DEV, "edit")
        server.lab("grant", NS, VIEWER, "view")
        yield server
    finally:
        server.stop()
        print(server.log_tail(60))
        left = server.remove_leftovers()
        shutil.rmtree(base, ignore_errors=True)
        if left:
            print(f"removed domains left behind: {left}")


def kubectl(server: LabServer, *args: str, input: str | None = None) -> str:
    proc = subprocess.run([KUBECTL, "--kubeconfig", str(server.admin_kubeconfig), *args],
                          input=input, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, f"kubectl {' '.join(args)}: {proc.stderr}"
    return proc.stdout


def tkc(server: LabServer) -> dict[str, Any] | None:
    proc = subprocess.run([KUBECTL, "--kubeconfig", str(server.admin_kubeconfig), "get",
                           "tanzukubernetescluster", CLUSTER, "-n", NS, "-o", "json"],
                          capture_output=True, text=True, timeout=60)
    if proc.returncode != 0:
        assert "NotFound" in proc.stderr, proc.stderr
        return None
    return dict(json.loads(proc.stdout))


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if not Path(CHROMIUM).exists():
        raise AssertionError(f"{CHROMIUM} is missing: playbooks/test-deps.yml installs it")
    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            chromium.close()


class Shots:
    def __init__(self) -> None:
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        self.n = 0

    def __call__(self, page: Page, name: str) -> None:
        self.n += 1
        page.screenshot(path=str(ARTIFACTS / f"clusters-{self.n:02d}-{name}.png"),
                        full_page=True)


def _context(browser: Browser) -> BrowserContext:
    # The dashboard's certificate is signed by the lab's own CA.
    return browser.new_context(ignore_https_errors=True, viewport={"width": 1360, "height": 900})


def _login(page: Page, server: LabServer, user: str, password: str) -> None:
    page.goto(server.dashboard_url + "/login")
    page.get_by_label("User name").fill(user)
    page.get_by_label("Password").fill(password)
    page.get_by_role("button", name="Log in").click()
    page.wait_for_url(re.compile(r".*/$"))


CONDITION_MESSAGES = ("() => Array.from(document.querySelectorAll('#cluster-conditions td.msg'))"
                      ".map(td => td.textContent.trim()).filter(t => t && t !== '–')")


def test_guest_cluster_in_the_dashboard(lab: LabServer, browser: Browser) -> None:
    shot = Shots()
    ctx = _context(browser)
    dev = ctx.new_page()
    dev.set_default_timeout(30_000)

    # 1. The developer opens the namespace: no clusters yet.
    _login(dev, lab, DEV, DEV_PASSWORD)
    dev.get_by_role("link", name=NS).click()
    expect(dev.get_by_text("No Kubernetes clusters yet.")).to_be_visible()
    shot(dev, "namespace-empty")

    # 2. The form: a bad name is refused next to the field, with nothing stored.
    dev.get_by_role("link", name="New cluster").click()
    expect(dev.get_by_label("Kubernetes release")).to_have_value(RELEASE)
    expect(dev.locator("#tkr option", has_text=f"{RELEASE} (Ready)")).to_have_count(1)
    dev.get_by_label(re.compile(r"^Name")).fill("TKC_1")
    dev.get_by_label("VM class of the control plane").select_option("best-effort-xsmall")
    dev.get_by_label("VM class of the workers").select_option("best-effort-xsmall")
    dev.get_by_label("Worker nodes").fill("1")
    shot(dev, "new-cluster")
    dev.get_by_role("button", name="Create cluster").click()
    expect(dev.locator("#name-error")).to_contain_text("Use only lower-case letters")
    assert tkc(lab) is None
    shot(dev, "new-cluster-refused")

    # ... then created: the dry run passes and the cluster's page opens.
    dev.get_by_label(re.compile(r"^Name")).fill(CLUSTER)
    dev.get_by_role("button", name="Create cluster").click()
    expect(dev).to_have_url(re.compile(rf"/ns/{NS}/clusters/{CLUSTER}$"))
    expect(dev.get_by_role("status").first).to_contain_text(f"Cluster {CLUSTER} created")
    shot(dev, "cluster-created")
    created = tkc(lab)
    assert created is not None
    assert created["spec"]["topology"]["nodePools"][0]["replicas"] == 1
    assert created["spec"]["topology"]["controlPlane"]["tkr"]["reference"]["name"] == RELEASE

    # 3. The controllers' status arrives while the page stays loaded: the phase, and a
    # condition message that was not on the page when it loaded.
    dev.evaluate("window.__notReloaded = true")
    at_load = set(dev.evaluate(CONDITION_MESSAGES))
    dev.wait_for_function(
        "(known) => { const p = document.querySelector('#cluster-phase');"
        f" const msgs = ({CONDITION_MESSAGES})();"
        " return p && p.textContent.includes('Creating') &&"
        " msgs.some(m => !known.includes(m)); }", arg=sorted(at_load), timeout=90_000,
        polling=500)
    assert dev.evaluate("window.__notReloaded === true"), "the page was reloaded"
    arrived = [m for m in dev.evaluate(CONDITION_MESSAGES) if m not in at_load]
    assert arrived, "no condition message arrived after the page loaded"
    ready = (tkc(lab) or {}).get("status", {}).get("conditions", [])
    assert any(c.get("message") in arrived for c in ready), (arrived, ready)
    # The network is off, so no endpoint: the page says what the cluster waits for.
    expect(dev.locator("#cluster-endpoint")).to_have_text("not yet")
    expect(dev.locator("#node-table tbody tr").first).to_be_visible(timeout=60_000)
    expect(dev.locator("#ssh-line")).to_have_text(f"lab ssh cluster {NS}/{CLUSTER}")
    expect(dev.locator("#kubeconfig-line")).to_contain_text(f"lab kubeconfig {NS}/{CLUSTER}")
    expect(dev.get_by_role("button", name="Download kubeconfig")).to_be_visible()
    shot(dev, "cluster-creating")

    # 4. On the namespace page, in the clusters table.
    dev.goto(f"{lab.dashboard_url}/ns/{NS}")
    row = dev.locator(f'#cluster-table tr[data-name="{CLUSTER}"]')
    expect(row).to_contain_text("Creating")
    expect(row).to_contain_text("0/1")
    shot(dev, "namespace-with-cluster")

    # 5. A viewer sees it, but not its credentials nor any control.
    viewer_ctx = _context(browser)
    viewer = viewer_ctx.new_page()
    viewer.set_default_timeout(30_000)
    _login(viewer, lab, VIEWER, VIEWER_PASSWORD)
    viewer.goto(f"{lab.dashboard_url}/ns/{NS}/clusters/{CLUSTER}")
    expect(viewer.locator("#cluster-phase")).to_contain_text("Creating")
    for name in ("Download kubeconfig", "Delete"):
        expect(viewer.get_by_role("button", name=name)).to_have_count(0)
        expect(viewer.get_by_role("link", name=name)).to_have_count(0)
    expect(viewer.locator(".scale-form")).to_have_count(0)
    expect(viewer.get_by_text("viewers cannot read")).to_be_visible()
    shot(viewer, "cluster-viewer")
    viewer_ctx.close()

    # 6. Scale the node pool: the TKC's spec changes.
    row.get_by_role("link", name=CLUSTER).click()
    dev.get_by_label("Nodes in pool workers").fill("2")
    dev.get_by_role("button", name="Scale node pool workers").click()
    expect(dev.get_by_role("status").first).to_contain_text(
        f"Node pool workers of {CLUSTER} will have 2 nodes")
    expect(dev.locator("#pool-workers-replicas")).to_have_text("2")
    scaled = tkc(lab)
    assert scaled is not None and scaled["spec"]["topology"]["nodePools"][0]["replicas"] == 2
    expect(dev.locator("#cluster-workers")).to_contain_text("of 2 ready", timeout=30_000)
    shot(dev, "cluster-scaled")

    # 7. Delete it: the namespace's table follows it until it is gone.
    dev.get_by_role("link", name="Delete").click()
    expect(dev.get_by_role("heading", name=f"Delete cluster {CLUSTER}?")).to_be_visible()
    shot(dev, "cluster-delete-confirm")
    dev.get_by_role("button", name=f"Delete {CLUSTER}").click()
    expect(dev).to_have_url(re.compile(rf"/ns/{NS}$"))
    expect(dev.get_by_role("status").first).to_contain_text(f"Cluster {CLUSTER} is being deleted")
    dev.evaluate("window.__notReloaded = true")
    expect(dev.locator(f'#cluster-table tr[data-name="{CLUSTER}"]')).to_have_count(
        0, timeout=120_000)
    assert dev.evaluate("window.__notReloaded === true")
    expect(dev.get_by_text("No Kubernetes clusters yet.")).to_be_visible()
    wait_for("the TanzuKubernetesCluster to go", lambda: tkc(lab) is None, timeout=30)
    shot(dev, "cluster-deleted")
    ctx.close()

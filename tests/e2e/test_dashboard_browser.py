"""The dashboard in a real browser (Debian's Chromium, driven by Playwright) against a
real host service with real VMs: the administrator carves a namespace, a developer
creates a VM from the form and watches it become Ready without reloading, reads its
console, runs into the namespace's CPU limit, and deletes the VM.

A screenshot of every page is kept in test-artifacts/dashboard/.
"""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, BrowserContext, Page, expect, sync_playwright
from playwright.sync_api import TimeoutError as PlaywrightTimeout

from hypervisor.ssh import generate_keypair, run_command
from tests.support.hostnet import host_addresses_steady
from tests.support.server import LabServer

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "test-artifacts" / "dashboard"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
BOOT_TIMEOUT_MS = 600_000  # a full Debian boot to SSH is 100-120 s under TCG
NS = "dash-e2e"
DEV, DEV_PASSWORD = "dev-e2e", "dev-e2e-password"


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
        page.screenshot(path=str(ARTIFACTS / f"{self.n:02d}-{name}.png"), full_page=True)


def _context(browser: Browser) -> BrowserContext:
    # The dashboard's certificate is signed by the lab's own CA.
    return browser.new_context(ignore_https_errors=True, viewport={"width": 1360, "height": 900})


def _login(page: Page, lab: LabServer, user: str, password: str) -> None:
    page.goto(lab.dashboard_url + "/login")
    page.get_by_label("User name").fill(user)
    page.get_by_label("Password").fill(password)
    page.get_by_role("button", name="Log in").click()
    page.wait_for_url(re.compile(r".*/$"))


def _why_not_ready(lab: LabServer, page: Page, name: str) -> str:
    """What the page, the API and the VM's console say, for a VM that never turned Ready."""
    shown = page.locator("#vm-state").all_inner_texts()
    got = subprocess.run(["/usr/bin/kubectl", "--kubeconfig", str(lab.admin_kubeconfig), "get",
                          "virtualmachine", name, "-n", NS, "-o", "json"],
                         capture_output=True, text=True, timeout=60)
    try:
        status = json.dumps(json.loads(got.stdout).get("status"), indent=1)
    except ValueError:
        status = got.stderr
    console = sorted((lab.state_dir / "consoles").glob(f"*{name}*.log"))
    tail = console[0].read_text(errors="replace")[-3000:] if console else "(no console log)"
    return (f"VM {name} did not turn Ready with an IP in {BOOT_TIMEOUT_MS // 1000}s.\n"
            f"page shows: {shown}\nstatus: {status}\nconsole tail:\n{tail}\n"
            f"service log:\n{lab.log_tail(60)}")


@pytest.fixture
def steady_addresses() -> Iterator[None]:
    """No test beside this one adds or removes a host address meanwhile (a browser aborts
    a page load when one does): ``tests.support.hostnet``."""
    with host_addresses_steady():
        yield


def test_dashboard_in_a_browser(vmlab: LabServer, browser: Browser, tmp_path: Path,
                                steady_addresses: None) -> None:
    shot = Shots()
    vmlab.add_user(DEV, DEV_PASSWORD)
    admin_user, admin_password = vmlab.admin_credentials

    # 1. The administrator logs in.
    admin_ctx = _context(browser)
    page = admin_ctx.new_page()
    page.set_default_timeout(30_000)
    page.goto(vmlab.dashboard_url + "/")
    expect(page).to_have_url(re.compile(r"/login"))
    shot(page, "login")
    _login(page, vmlab, admin_user, admin_password)
    expect(page.get_by_role("heading", name="Namespaces")).to_be_visible()
    shot(page, "namespaces-admin")

    # 2. ... creates a namespace with limits: room for exactly one xsmall VM's CPUs.
    page.get_by_role("link", name="New namespace").click()
    page.get_by_label("Name").fill(NS)
    page.get_by_label("CPU").fill("2")
    page.get_by_label("Memory").fill("8")
    page.get_by_label("Storage").fill("60")
    page.get_by_label("Virtual machines").fill("3")
    shot(page, "new-namespace")
    page.get_by_role("button", name="Create namespace").click()
    expect(page).to_have_url(re.compile(rf"/ns/{NS}/settings"))
    expect(page.get_by_role("status").first).to_contain_text(f"Namespace {NS} created")

    # ... assigns a VM class and an image, and grants edit to the developer.
    page.get_by_role("button", name=f"Assign class best-effort-xsmall to {NS}").click()
    expect(page.get_by_role("status").first).to_contain_text("best-effort-xsmall assigned")
    page.get_by_role("button", name=f"Assign image debian-12 to {NS}").click()
    expect(page.get_by_role("status").first).to_contain_text("debian-12 assigned")
    page.get_by_label("User", exact=True).fill(DEV)
    page.get_by_label("Edit").check()
    page.get_by_role("button", name="Grant", exact=True).click()
    expect(page.get_by_role("status").first).to_contain_text(f"{DEV} can now edit in {NS}")
    expect(page.locator("#permissions")).to_contain_text(DEV)
    shot(page, "namespace-settings")

    # 3. The developer logs in and sees only that namespace.
    dev_ctx = _context(browser)
    dev = dev_ctx.new_page()
    dev.set_default_timeout(30_000)
    _login(dev, vmlab, DEV, DEV_PASSWORD)
    expect(dev.get_by_role("link", name=NS)).to_be_visible()
    expect(dev.get_by_role("link", name="Hosts")).to_have_count(0)
    shot(dev, "namespaces-developer")
    dev.get_by_role("link", name=NS).click()
    expect(dev.locator("#login-line")).to_contain_text("lab login --server https://")
    shot(dev, "namespace-overview")

    # 4. ... and creates a VM from the form, with an SSH key and a cloud-config.
    private, public = generate_keypair("dev-e2e@browser")
    dev.get_by_role("link", name="New VM").click()
    dev.get_by_label("Name").fill("web-1")
    dev.get_by_label("VM class").select_option("best-effort-xsmall")
    dev.get_by_label("Image").select_option("debian-12")
    dev.get_by_label("User to create in the VM").fill("dev")
    dev.get_by_label("SSH public key").fill(public)
    dev.get_by_label("cloud-config").fill(
        "#cloud-config\nwrite_files:\n  - path: /srv/hello.txt\n"
        "    content: hello from the dashboard\n")
    shot(dev, "new-vm")
    dev.get_by_role("button", name="Create VM").click()
    expect(dev).to_have_url(re.compile(rf"/ns/{NS}/vms/web-1$"))
    shot(dev, "vm-created")

    # 5. It turns Ready with an IP while the page stays loaded (the live part refreshes).
    dev.evaluate("window.__notReloaded = true")
    try:
        dev.wait_for_function(
            "() => { const s = document.querySelector('#vm-state');"
            " const ip = document.querySelector('#vm-ip');"
            " return s && s.textContent.includes('Ready') && ip && /\\d+\\.\\d+\\.\\d+\\.\\d+/"
            ".test(ip.textContent); }", timeout=BOOT_TIMEOUT_MS, polling=1000)
    except PlaywrightTimeout:
        shot(dev, "vm-not-ready")
        raise AssertionError(_why_not_ready(vmlab, dev, "web-1")) from None
    assert dev.evaluate("window.__notReloaded === true"), "the page was reloaded"
    ip = dev.locator("#vm-ip").inner_text().strip()
    expect(dev.locator("#vm-power")).to_contain_text("PoweredOn")
    shot(dev, "vm-ready")
    rc, out, err = run_command(ip, "dev", private, "cat /srv/hello.txt", 120,
                               known_hosts=tmp_path / "known_hosts")
    assert rc == 0 and out.strip() == "hello from the dashboard", err

    # 6. Its console log.
    dev.get_by_role("link", name="Console log").click()
    expect(dev.locator("pre.console")).to_contain_text("web-1", timeout=60_000)
    shot(dev, "console")

    # 7. A second VM does not fit the namespace's CPU limit: the message says so.
    dev.goto(f"{vmlab.dashboard_url}/ns/{NS}/vms/new")
    dev.get_by_label("Name").fill("web-2")
    dev.get_by_label("VM class").select_option("best-effort-xsmall")
    dev.get_by_label("Image").select_option("debian-12")
    dev.get_by_label("SSH public key").fill(public)
    dev.get_by_role("button", name="Create VM").click()
    alert = dev.get_by_role("alert")
    expect(alert).to_contain_text("Over the namespace's limits")
    expect(alert).to_contain_text("CPU: this needs 2 vCPUs, and 2 of the limit of 2 vCPUs are "
                                  "in use already.")
    expect(alert).to_contain_text("exceeded quota: pacific-limits, requested: requests.cpu=2, "
                                  "used: requests.cpu=2, limited: requests.cpu=2")
    shot(dev, "quota-error")
    dev.goto(f"{vmlab.dashboard_url}/ns/{NS}")
    expect(dev.locator("#vm-table tbody tr")).to_have_count(1)  # nothing half-made

    # 8. Delete the VM; the table follows it until it is gone.
    dev.goto(f"{vmlab.dashboard_url}/ns/{NS}/vms/web-1")
    dev.get_by_role("link", name="Delete").click()
    shot(dev, "vm-delete-confirm")
    dev.get_by_role("button", name="Delete web-1").click()
    expect(dev).to_have_url(re.compile(rf"/ns/{NS}$"))
    dev.evaluate("window.__notReloaded = true")
    expect(dev.locator("#vm-table")).to_have_count(0, timeout=180_000)
    assert dev.evaluate("window.__notReloaded === true")
    expect(dev.get_by_text("No virtual machines yet.")).to_be_visible()
    shot(dev, "vm-deleted")

    # The administrator's view of the hosts, then the namespace goes.
    page.goto(vmlab.dashboard_url + "/hosts")
    expect(page.locator(".host").first).to_contain_text("vCPUs")
    shot(page, "hosts")
    page.goto(f"{vmlab.dashboard_url}/ns/{NS}/delete")
    page.get_by_label("Type the namespace name to confirm").fill(NS)
    page.get_by_role("button", name=f"Delete {NS}").click()
    expect(page.get_by_role("status").first).to_contain_text(f"Namespace {NS} is being deleted")
    shot(page, "namespace-deleted")
    dev_ctx.close()
    admin_ctx.close()

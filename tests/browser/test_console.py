"""The web console in a real browser against a real manager: sign-in, every page, RBAC,
API tokens, live notifications. Screenshots: .artifacts/screenshots/."""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from tests.browser.conftest import VIEWER, Watched
from tests.support.server import ROOT, LiveServer

AXE = ROOT / "ui" / "node_modules" / "axe-core" / "axe.min.js"  # a devDependency of the UI
# WCAG 2.0/2.1 A and AA; a violation of impact serious or critical fails the crawl
AXE_TAGS = ["wcag2a", "wcag2aa", "wcag21a", "wcag21aa"]
AXE_FAILS = {"serious", "critical"}

# Every page of the console's navigation (ui/src/App.tsx NAV), by link text.
PAGES = [
    "Dashboard",
    "VMs",
    "Containers",
    "Functions",
    "Images",
    "Container images",
    "Templates",
    "Snapshots",
    "Networks",
    "Volumes",
    "Hosts",
    "Schedules",
    "Groups",
    "Webhooks",
    "Users",
    "My quota",
    "API tokens",
    "Audit log",
    "Operations",
    "Events",
    "Notifications",
]


def _settle(w: Watched) -> None:
    # (never "networkidle": the event stream stays open) a heading, then no spinner
    w.page.locator("main h2").first.wait_for()
    w.page.wait_for_function("() => !document.querySelector('.mantine-Loader-root')")
    w.page.wait_for_timeout(300)


def _axe(w: Watched, where: str) -> list[str]:
    """axe-core's serious and critical violations on the page, one line each."""
    if not w.page.evaluate("() => typeof window.axe !== 'undefined'"):
        # (evaluated by the browser's devtools protocol, so the manager's CSP, which forbids
        # inline scripts and eval, does not apply)
        w.page.evaluate(AXE.read_text() + "\n;undefined")
    found = w.page.evaluate(
        """async (tags) => {
            const r = await axe.run(document, {runOnly: {type: 'tag', values: tags}});
            return r.violations.map(v => ({id: v.id, impact: v.impact, help: v.help,
                targets: v.nodes.slice(0, 3).map(n => n.target.join(' ')),
                first: (v.nodes[0].html || '').slice(0, 160) + ' -- ' +
                    (v.nodes[0].failureSummary || '').replace(/\\s+/g, ' ').slice(0, 200),
                count: v.nodes.length}));
        }""",
        AXE_TAGS,
    )
    return [
        f"{where}: {v['id']} ({v['impact']}, {v['count']}x) {v['help']}: {v['targets']}"
        f"\n    first: {v['first']}"
        for v in found
        if v["impact"] in AXE_FAILS
    ]


def _overflow(w: Watched, where: str) -> list[str]:
    """What is wider than the window, or sticks out of the page's main area unclipped."""
    found = w.page.evaluate(
        """() => {
            const out = [];
            const doc = document.documentElement;
            if (doc.scrollWidth > window.innerWidth)
                out.push(`document ${doc.scrollWidth}px > window ${window.innerWidth}px`);
            const main = document.querySelector('main');
            if (!main) return out;
            const edge = main.getBoundingClientRect().right + 1;
            const clips = (el) => {
                for (let a = el.parentElement; a && a !== main; a = a.parentElement)
                    if (getComputedStyle(a).overflowX !== 'visible') return true;
                return false;
            };
            for (const el of main.querySelectorAll('*')) {
                const r = el.getBoundingClientRect();
                if (r.width && r.right > edge && !clips(el)) {
                    const name = el.tagName.toLowerCase() + (el.className && typeof el.className
                        === 'string' ? '.' + el.className.trim().split(/\\s+/)[0] : '');
                    out.push(`${name} ends at ${Math.round(r.right)}px, main at ${edge}px`);
                    if (out.length > 3) break;
                }
            }
            return out;
        }"""
    )
    return [f"{where}: {f}" for f in found]


def test_static_serving(manager: LiveServer) -> None:
    r = httpx.get(f"{manager.url}/vms/vm_does_not_matter", headers={"Accept": "text/html"})
    assert r.status_code == 200 and "text/html" in r.headers["content-type"]
    assert r.headers["cache-control"] == "no-cache"
    asset = re.search(r'src="(/assets/[^"]+\.js)"', r.text)
    assert asset, r.text
    a = httpx.get(manager.url + asset.group(1))
    assert a.status_code == 200
    assert a.headers["cache-control"] == "public, max-age=31536000, immutable"
    assert "content-security-policy" in a.headers
    api404 = httpx.get(f"{manager.url}/v1/nope")
    assert api404.status_code == 404
    assert api404.headers["content-type"].startswith("application/problem+json")


def test_login_wrong_password_then_right(page: Watched) -> None:
    page.expected_status.add(401)
    page.goto("/")
    page.page.wait_for_url(re.compile(r"/login$"))
    page.page.get_by_role("textbox", name="Username").fill("admin")
    page.page.get_by_role("textbox", name="Password").fill("not-the-password")
    page.page.get_by_role("button", name="Sign in").click()
    err = page.page.get_by_test_id("login-error")
    err.wait_for()
    found = _axe(page, "sign in (with an error)") + _overflow(page, "sign in")
    assert found == [], "\n".join(found)
    text = err.inner_text()
    assert "invalid username or password" in text.lower() or "password" in text.lower(), text
    assert "request" in text  # the request id is quoted
    page.shot("login-error")
    page.login()
    assert page.page.get_by_test_id("whoami").inner_text().startswith("admin")
    # a console error from the refused login (the browser logs every 401) is expected
    page.errors[:] = [e for e in page.errors if "401" not in e]
    assert page.problems() == []


@pytest.fixture(scope="module")
def seeded(manager: LiveServer, admin_headers: dict[str, str]) -> None:
    """A few resources that need no host, so the crawler also opens detail pages and tabs."""
    for path, body in [
        ("/v1/templates", {"name": "tiny", "spec": {"image": "default", "memory_mib": 128}}),
        ("/v1/networks", {"name": "backend", "cidr": "10.77.0.0/24"}),
        ("/v1/webhooks", {"name": "hook", "url": "http://127.0.0.1:9/hook", "events": ["vm.*"]}),
        # (its build fails without a host: the row and its pages are there all the same)
        (
            "/v1/functions?wait=false",
            {"name": "hello", "code": {"source": "def handler(e, c):\n  return e\n"}},
        ),
    ]:
        r = httpx.post(f"{manager.url}{path}", headers=admin_headers, json=body)
        assert r.status_code in (200, 201, 202), r.text


def test_crawl_every_page(page: Watched, seeded: None) -> None:
    """Every page (and the detail pages and tabs of the seeded resources): no console error,
    no failed request, no "not implemented", no serious or critical accessibility violation
    (axe-core, WCAG 2.x A and AA; light and dark theme), nothing wider than the 1280 px window."""
    page.login()
    main_nav = page.page.get_by_role("navigation", name="Main")
    found: list[str] = []
    for name in PAGES:
        main_nav.get_by_role("link", name=name, exact=True).click()
        _settle(page)
        body = page.page.inner_text("body")
        assert "not implemented" not in body.lower(), name
        assert "Page not found" not in body, name
        slug = name.lower().replace(" ", "-")
        page.shot(f"page-{slug}")
        found += _axe(page, name) + _overflow(page, name)
        first = page.page.locator("main table tbody tr td a").first
        if first.count():  # a detail page: open it and every tab
            first.click()
            _settle(page)
            for tab in page.page.get_by_role("tab").all():
                tab.click()
                page.page.wait_for_timeout(300)
                _settle(page)
                assert "not implemented" not in page.page.inner_text("body").lower(), name
                where = f"{name} detail, tab {tab.inner_text()}"
                found += _axe(page, where) + _overflow(page, where)
            page.shot(f"detail-{slug}")
    # dark theme: every page again for contrast
    page.page.get_by_role("button", name="Switch to dark theme").click()
    for name in PAGES:
        main_nav.get_by_role("link", name=name, exact=True).click()
        _settle(page)
        found += _axe(page, f"{name} (dark)")
    main_nav.get_by_role("link", name="Dashboard", exact=True).click()
    _settle(page)
    page.shot("dashboard-dark")
    page.page.get_by_role("button", name="Switch to light theme").click()
    page.goto("/no/such/page")
    page.page.get_by_text("Page not found").wait_for()
    found += _axe(page, "not found") + _overflow(page, "not found")
    assert found == [], "\n".join(found)
    assert page.problems() == []


def test_create_from_the_schema_form_and_an_error_toast(page: Watched) -> None:
    page.expected_status.add(422)
    page.login()
    page.goto("/networks")
    page.page.get_by_role("button", name="Create Network").click()
    dialog = page.page.get_by_role("dialog")
    dialog.get_by_role("textbox", name="Name").fill("frontend")
    dialog.get_by_role("button", name="More options").click()
    dialog.get_by_role("textbox", name="CIDR").fill("not-a-cidr")
    dialog.get_by_role("button", name="Create", exact=True).click()
    # the server's detail and the request id, in a toast
    toast = page.page.get_by_role("alert").filter(has_text="request")
    toast.first.wait_for()
    assert "cidr" in toast.first.inner_text().lower()
    page.shot("error-toast")
    dialog.get_by_role("textbox", name="CIDR").fill("10.78.0.0/24")
    dialog.get_by_role("button", name="Create", exact=True).click()
    page.page.get_by_role("link", name="frontend").wait_for()
    page.errors[:] = [e for e in page.errors if "422" not in e]
    assert page.problems() == []


def test_viewer_sees_create_disabled(page: Watched) -> None:
    page.login(*VIEWER)
    page.goto("/vms")
    btn = page.page.get_by_role("button", name="Create VM")
    btn.wait_for()
    assert btn.get_attribute("aria-disabled") == "true"
    btn.hover()
    page.page.get_by_text("Viewers have read-only access").first.wait_for()
    page.shot("viewer-vms")
    page.goto("/users")
    page.page.get_by_text("Only an admin can do this").wait_for()
    assert page.problems() == []


def test_api_token_created_once_and_revoked(page: Watched, manager: LiveServer) -> None:
    page.login()
    page.goto("/tokens")
    page.page.get_by_role("button", name="Create token").click()
    page.page.get_by_label("Name").fill("browser-ci")
    page.page.get_by_role("button", name="Create", exact=True).click()
    secret = page.page.get_by_test_id("token-secret")
    secret.wait_for()
    token = secret.inner_text().strip()
    assert token.startswith("nxs_")
    page.shot("token-created")
    assert httpx.get(f"{manager.url}/v1/auth/me", headers=_bearer(token)).status_code == 200
    page.page.get_by_role("button", name="Done").click()
    assert token not in page.page.inner_text("body")  # shown once
    row = page.page.get_by_role("row").filter(has_text="browser-ci")
    row.get_by_role("button", name="Revoke").click()
    page.page.get_by_role("dialog").get_by_role("button", name="Revoke").click()
    row.get_by_text("revoked").wait_for()
    assert httpx.get(f"{manager.url}/v1/auth/me", headers=_bearer(token)).status_code == 401
    assert page.problems() == []


def test_notification_arrives_live(
    page: Watched, manager: LiveServer, admin_headers: dict[str, str]
) -> None:
    page.login()
    page.page.get_by_role("button", name=re.compile(r"Notifications \(\d+ unread\)")).wait_for()
    before = _unread(page)
    # let the stream connect (the bell's badge says "live" once it has)
    page.page.wait_for_timeout(1000)
    alert = {
        "alerts": [
            {"labels": {"alertname": "BrowserTestAlert"}, "annotations": {"summary": "disk full"}}
        ]
    }
    r = httpx.post(
        f"{manager.url}/v1/notifications/alerts", headers=admin_headers, json=alert, timeout=10
    )
    r.raise_for_status()
    page.page.get_by_text("BrowserTestAlert").first.wait_for(timeout=15_000)  # the toast
    page.page.wait_for_function(
        f"() => /Notifications \\((\\d+) unread\\)/.exec(document.querySelector("
        f"'[data-testid=bell]').getAttribute('aria-label'))[1] > {before}",
        timeout=15_000,
    )
    page.page.get_by_test_id("bell").click()
    page.page.get_by_test_id("notification").filter(has_text="BrowserTestAlert").first.wait_for()
    page.shot("notification-centre")
    found = _axe(page, "notification centre")
    assert found == [], "\n".join(found)
    page.page.get_by_role("button", name="Mark all read").click()
    page.page.wait_for_function(
        "() => document.querySelector('[data-testid=bell]').getAttribute('aria-label')"
        " === 'Notifications (0 unread)'",
        timeout=10_000,
    )
    assert page.problems() == []


def _unread(page: Watched) -> int:
    label = page.page.get_by_test_id("bell").get_attribute("aria-label") or ""
    m = re.search(r"\((\d+) unread\)", label)
    return int(m.group(1)) if m else 0


def _bearer(token: str) -> dict[str, Any]:
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture(scope="session", autouse=True)
def _fresh_screenshots() -> None:
    from tests.browser.conftest import clean_screenshots

    clean_screenshots()


def test_edit_form_and_a_secret_shown_once(page: Watched, seeded: None) -> None:
    page.login()
    page.goto("/networks")
    page.page.get_by_role("link", name="backend").click()
    page.page.get_by_role("button", name="Edit").click()
    dialog = page.page.get_by_role("dialog")
    dialog.get_by_role("textbox", name="Description").fill("the database tier")
    dialog.get_by_role("button", name="Edit").click()
    page.page.get_by_role("cell", name="the database tier").wait_for()
    page.goto("/webhooks")
    page.page.get_by_role("button", name="Create Webhook").click()
    dialog = page.page.get_by_role("dialog")
    dialog.get_by_role("textbox", name="Name").fill("ui-hook")
    dialog.get_by_role("textbox", name="URL").fill("http://127.0.0.1:9/ui")
    dialog.get_by_role("button", name="More options").click()
    events = dialog.get_by_label("Events")
    events.fill("vm.*")
    events.press("Enter")
    dialog.get_by_role("button", name="Create", exact=True).click()
    secret = page.page.get_by_test_id("secret-once")
    secret.wait_for()
    assert len(secret.inner_text().strip()) >= 16
    page.shot("webhook-secret")
    page.page.get_by_role("button", name="Done").click()
    page.page.get_by_role("link", name="ui-hook").wait_for()
    assert page.problems() == []


def test_image_upload_with_progress(page: Watched) -> None:
    from nexus.images.build import build_image
    from tests.vm.conftest import CACHE_DIR

    built = build_image("test", CACHE_DIR)  # cached: seconds the first time
    files = built.manifest["files"]
    assert isinstance(files, dict)
    page.login()
    page.goto("/images")
    page.page.get_by_role("button", name="Upload image").click()
    dialog = page.page.get_by_role("dialog")
    dialog.get_by_role("textbox", name="Name").fill("uploaded")
    inputs = dialog.locator("input[type=file]")
    inputs.nth(0).set_input_files(str(built.dir / files["kernel"]))
    inputs.nth(1).set_input_files(str(built.dir / files["rootfs"]))
    inputs.nth(2).set_input_files(str(built.dir / files["initrd"]))
    dialog.get_by_role("button", name="Upload", exact=True).click()
    dialog.wait_for(state="hidden", timeout=120_000)
    page.page.get_by_role("link", name="uploaded").wait_for()
    page.shot("image-uploaded")
    assert page.problems() == []


def _focused(w: Watched) -> dict[str, Any]:
    return w.page.evaluate(
        """() => { const a = document.activeElement;
            return {tag: a.tagName.toLowerCase(), text: (a.innerText || '').trim(),
                    label: a.getAttribute('aria-label') || '', id: a.id,
                    inDialog: !!a.closest('[role=dialog]'),
                    visible: a.getBoundingClientRect().top >= 0 && a.offsetWidth > 0}; }"""
    )


def test_keyboard_skip_link_navigation_and_a_modal(page: Watched) -> None:
    """Keyboard only: "Skip to content" is the first Tab stop (shown when focused) and moves
    the focus to main; Tab reaches the navigation links in order; a dialog keeps the focus
    inside, Escape closes it and the focus returns to the button that opened it."""
    page.login()
    page.goto("/networks")
    _settle(page)
    page.page.keyboard.press("Tab")
    first = _focused(page)
    assert first["text"] == "Skip to content" and first["visible"], first
    page.page.keyboard.press("Enter")
    assert page.page.evaluate("() => document.activeElement.tagName") == "MAIN"
    # from the top again: the navigation's links in the order of PAGES
    page.page.evaluate("() => document.activeElement.blur()")
    page.goto("/networks")
    _settle(page)
    seen: list[str] = []
    for _ in range(60):
        page.page.keyboard.press("Tab")
        f = _focused(page)
        in_nav = page.page.evaluate("() => !!document.activeElement.closest('nav')")
        if in_nav:
            seen.append(f["text"])
        elif seen:
            break
    assert seen == PAGES, seen
    # a dialog traps the focus; Escape closes it; the focus goes back to its button
    create = page.page.get_by_role("button", name="Create Network")
    create.focus()
    page.page.keyboard.press("Enter")
    dialog = page.page.get_by_role("dialog")
    dialog.wait_for()
    page.page.wait_for_timeout(300)
    found = _axe(page, "create dialog")
    assert found == [], "\n".join(found)
    for _ in range(25):
        page.page.keyboard.press("Tab")
        assert _focused(page)["inDialog"], _focused(page)
    page.page.keyboard.press("Shift+Tab")
    assert _focused(page)["inDialog"]
    page.page.keyboard.press("Escape")
    dialog.wait_for(state="hidden")
    page.page.wait_for_timeout(300)
    back = _focused(page)
    assert back["text"] == "Create Network", back
    assert page.problems() == []


def test_vm_search_and_my_resources_ask_the_server(
    page: Watched, manager: LiveServer, admin_headers: dict[str, str]
) -> None:
    """The VM list's search box sends ``q`` (once, debounced, not per keystroke) and "My
    resources" sends ``owner=<my user id>``; a search without hits says so."""
    me = httpx.get(f"{manager.url}/v1/auth/me", headers=admin_headers).json()["user"]["id"]
    page.login()
    page.goto("/vms")
    _settle(page)
    asked: list[dict[str, list[str]]] = []

    def _listed(r: Any) -> None:
        u = urlsplit(r.url)
        if r.method == "GET" and u.path == "/v1/vms":
            asked.append(parse_qs(u.query))

    page.page.on("request", _listed)
    box = page.page.get_by_role("textbox", name="Search vms")
    with page.page.expect_request(lambda r: "/v1/vms?" in r.url and "q=" in r.url) as req:
        box.press_sequentially("No-Such_VM", delay=40)
    sent = parse_qs(urlsplit(req.value.url).query)
    assert sent["q"] == ["No-Such_VM"], sent
    assert "cursor" not in sent or sent["cursor"] == [""], sent
    empty = page.page.get_by_test_id("empty")
    empty.wait_for()
    assert "No VMs match “No-Such_VM”" in empty.inner_text(), empty.inner_text()
    page.shot("vms-search-empty")
    assert [a["q"] for a in asked if "q" in a] == [["No-Such_VM"]], asked  # debounced
    with page.page.expect_request(lambda r: "/v1/vms?" in r.url and "owner=" in r.url) as req:
        page.page.get_by_role("switch", name="My resources").check()
    sent = parse_qs(urlsplit(req.value.url).query)
    assert sent["owner"] == [me] and sent["q"] == ["No-Such_VM"], sent
    empty.wait_for()
    assert "with these filters" in empty.inner_text()
    # clearing the search asks for the whole (own) list again, without q
    with page.page.expect_request(lambda r: "/v1/vms?" in r.url and "owner=" in r.url) as req:
        box.fill("")
    sent = parse_qs(urlsplit(req.value.url).query)
    assert "q" not in sent and sent["owner"] == [me], sent
    page.page.get_by_text("Nothing matches these filters.").wait_for()
    assert page.problems() == []

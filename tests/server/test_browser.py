"""The entity browser in headless Chromium (Debian's `chromium`, driven by playwright):
sign in with a token, see an entity's tables as the role sees them, run SQL, download
CSV and Parquet; the session cookie is HttpOnly and SameSite=Strict; bad tokens are
refused and audited. Set MICRODB_BROWSER_SCREENSHOT=docs/browser.png to keep the screenshot."""

from __future__ import annotations

import os
import shutil
import struct
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from conftest import add_logins

import microdb
from microdb.server.http import HttpThread, create_app

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: install it with `apt-get install -y chromium` (make install does as root)",
                    pytrace=False)
    from microdb.init import init_workspace

    path = tmp_path_factory.mktemp("browser")
    init_workspace(path, demo=True, customers=80, seed=4)
    tokens = add_logins(path)
    ws = microdb.open(path)
    ws.sync("customer")
    web = HttpThread(create_app(ws), "127.0.0.1", 0)
    yield ws, f"http://127.0.0.1:{web.port}", tokens
    web.stop()
    ws.close()


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield b
        b.close()


def png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    return struct.unpack(">II", data[16:24])


def test_sign_in_browse_query_and_download(site, browser, tmp_path):
    ws, base, tokens = site
    raw = ws.entity("customer/42", role="admin").tables()["customers"].to_pylist()[0]
    ctx = browser.new_context(viewport={"width": 1200, "height": 900}, accept_downloads=True)
    page = ctx.new_page()
    page.set_default_timeout(15_000)
    try:
        page.goto(base + "/")
        assert page.locator("input#token").count() == 1  # not signed in: the sign-in form
        page.fill("input#token", tokens["analyst"])
        page.click("button[type=submit]")
        page.wait_for_url(base + "/")
        assert "signed in as" in page.inner_text("header") and "analyst" in page.inner_text("header")
        cookie = next(c for c in ctx.cookies() if c["name"] == "microdb_token")
        assert cookie["httpOnly"] and cookie["sameSite"] == "Strict"
        assert page.evaluate("document.cookie") == ""  # scripts cannot read the token

        assert page.locator("a[href='/ui/entity?address=customer/1']").count() >= 1  # synced keys are listed
        page.fill("input#address", "customer/42")
        page.click("form[action='/ui/entity'] button")
        page.wait_for_selector("table[data-table=customers]")
        dom = page.content()
        assert "***" in dom  # national_id redacted for analysts
        for secret in (raw["national_id"], raw["email"], raw["phone"]):
            assert str(secret) not in dom
        for t in ws.entity_type("customer").tables:
            assert page.locator(f"table[data-table={t.name}]").count() == 1

        shot = tmp_path / "browser.png"
        page.screenshot(path=str(shot), full_page=False)
        data = shot.read_bytes()
        assert png_size(data) == (1200, 900) and len(data) > 30_000  # a rendered page, not a blank one
        if os.environ.get("MICRODB_BROWSER_SCREENSHOT"):
            shutil.copy(shot, os.environ["MICRODB_BROWSER_SCREENSHOT"])

        page.fill("textarea[name=sql]", "SELECT national_id, segment, count(*) AS n FROM customers GROUP BY ALL")
        page.click("button[value=html]")
        page.wait_for_selector("table[data-table=result]")
        assert page.inner_text("#result-count") == "1 rows"
        assert "***" in page.inner_text("table[data-table=result]")

        with page.expect_download() as dl:
            page.click("button[value=csv]")
        text = Path(dl.value.path()).read_text()
        assert text.splitlines()[0] == '"national_id","segment","n"' and '"***"' in text
        with page.expect_download() as dl:
            page.click("button[value=parquet]")
        assert pq.read_table(dl.value.path()).column("national_id").to_pylist() == ["***"]

        page.fill("textarea[name=sql]", "SELECT * FROM read_csv('/etc/passwd')")
        resp_status = []
        page.on("response", lambda r: resp_status.append(r.status) if r.url.endswith("/ui/query") else None)
        page.click("button[value=html]")
        page.wait_for_selector("#error")
        assert "read_csv" in page.inner_text("#error") and resp_status[-1] == 403

        page.click("text=Sign out")
        page.wait_for_selector("input#token")
        assert not [c for c in ctx.cookies() if c["name"] == "microdb_token"]
    finally:
        ctx.close()
    actors = {r["actor"] for r in ws.audit.query(entity="customer/42").to_pylist()}
    assert "analyst" in actors
    logins = ws.audit.query(action="login", actor="analyst", outcome="ok").num_rows
    assert logins >= 1


def test_bad_token_is_refused_and_audited(site, browser):
    ws, base, _ = site
    before = ws.audit.query(action="login", outcome="refused").num_rows
    ctx = browser.new_context()
    page = ctx.new_page()
    try:
        page.goto(base + "/")
        page.fill("input#token", "mdb_not-a-token")
        with page.expect_response(lambda r: r.url.endswith("/login")) as resp:
            page.click("button[type=submit]")
        assert resp.value.status == 401
        assert "not valid" in page.inner_text("#error")
        assert not ctx.cookies()
        page.goto(base + "/ui/entity?address=customer/42")  # no session: back to sign-in
        assert page.locator("input#token").count() == 1
        headers = page.goto(base + "/").headers
        assert "script-src" not in headers["content-security-policy"] and headers["x-frame-options"] == "DENY"
    finally:
        ctx.close()
    assert ws.audit.query(action="login", outcome="refused").num_rows == before + 1

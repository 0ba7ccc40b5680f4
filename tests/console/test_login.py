"""Signing in to the console with an API key, in a real browser: a signed, HttpOnly, SameSite=Strict session
that shows only that key's project, and ends when the key is revoked."""

from __future__ import annotations

import subprocess
import sys

import httpx

from tests.conftest import clean_env, create_key
from tests.console.conftest import KeyedServer, Tab, report, run_tag


def _seed(keyed: KeyedServer, project: str, text: str) -> None:
    report(
        keyed.server,
        key=keyed.keys[project],
        reqPayload={"model": "gpt-4o", "messages": [{"role": "user", "content": text}]},
        respPayload={"choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"}}]},
        statusCode=200,
    )


def _sign_in(tab: Tab, key: str) -> None:
    tab.page.fill("#login input[name=key]", key)
    tab.page.click("#login button")


def test_sign_in_with_a_key_shows_only_its_project(keyed_tab: Tab, keyed_server: KeyedServer) -> None:
    alpha, beta = f"alpha question {run_tag()}", f"beta question {run_tag()}"
    _seed(keyed_server, "alpha", alpha)
    _seed(keyed_server, "beta", beta)
    tab = keyed_tab

    tab.open(f"/?meta=x%3D{alpha[:5]}")
    tab.page.wait_for_url(lambda url: "/login?next=" in url)
    tab.shot("login")
    _sign_in(tab, "ps-not-a-key")
    assert "not an API key of this server" in tab.page.locator("p.error").inner_text()

    _sign_in(tab, keyed_server.keys["alpha"])
    tab.page.wait_for_url(lambda url: url.endswith("/?meta=x%3Dalpha"))  # back where the visit began
    tab.open("/")
    for _ in range(50):  # the reports are written by the group-commit writer, a moment after they are sent
        if alpha in tab.page.locator("main").inner_text():
            break
        tab.page.wait_for_timeout(200)
        tab.page.reload()
    text = tab.page.locator("main").inner_text()
    assert alpha in text
    assert beta not in text
    assert "alpha" in tab.page.locator("header .project").inner_text()

    session = next(c for c in tab.page.context.cookies() if c["name"] == "pipeserve_session")
    assert session["httpOnly"] is True
    assert session["sameSite"] == "Strict"
    assert keyed_server.keys["alpha"] not in session["value"]  # the cookie names the key's id, never the key
    assert tab.page.evaluate("document.cookie") == ""  # no script can read it

    tab.page.click("header form button")  # sign out
    tab.page.wait_for_url(lambda url: url.endswith("/login"))
    tab.open("/datasets")
    tab.page.wait_for_url(lambda url: url.endswith("/login?next=%2Fdatasets"))


def test_a_revoked_key_ends_its_sessions(keyed_tab: Tab, keyed_server: KeyedServer) -> None:
    data_dir = keyed_server.server.data_dir
    key = create_key(data_dir, "alpha", name="short-lived")
    keyed_tab.open("/login")
    _sign_in(keyed_tab, key)
    keyed_tab.page.wait_for_url(keyed_server.server.url + "/")
    keyed_tab.open("/criteria")
    assert keyed_tab.page.url.endswith("/criteria")

    listed = subprocess.run(
        [sys.executable, "-m", "pipeserve", "keys", "list", "--data-dir", str(data_dir)],
        capture_output=True,
        text=True,
        check=True,
        env=clean_env(),
    ).stdout
    key_id = next(line.split("\t")[0] for line in listed.splitlines() if line.split("\t")[2] == "short-lived")
    subprocess.run(
        [sys.executable, "-m", "pipeserve", "keys", "revoke", key_id, "--data-dir", str(data_dir)],
        check=True,
        env=clean_env(),
    )
    keyed_tab.open("/criteria")
    keyed_tab.page.wait_for_url(lambda url: url.endswith("/login?next=%2Fcriteria"))


def test_sign_in_never_sends_elsewhere(keyed_tab: Tab, keyed_server: KeyedServer) -> None:
    keyed_tab.open("/login?next=//example.com/steal")
    _sign_in(keyed_tab, keyed_server.keys["beta"])
    keyed_tab.page.wait_for_url(keyed_server.server.url + "/")


def test_pages_need_a_session_once_keys_exist(keyed_server: KeyedServer) -> None:
    base = keyed_server.server.url
    assert httpx.get(f"{base}/datasets", timeout=30).headers["location"] == "/login?next=%2Fdatasets"
    forged = httpx.get(f"{base}/", cookies={"pipeserve_session": "eyJrIjoia2V5X3gifQ.AAAA"}, timeout=30)
    assert forged.status_code == 303
    # Without a session a form is refused even with a valid CSRF token, and no dataset is made.
    with httpx.Client(base_url=base, timeout=30) as client:
        page = client.get("/login")
        token = page.text.split('name="csrf_token" value="')[1].split('"')[0]
        posted = client.post("/datasets", data={"csrf_token": token, "name": "sneaky"})
        assert posted.status_code == 401
    headers = {"Authorization": f"Bearer {keyed_server.keys['alpha']}"}
    names = [d["name"] for d in httpx.get(f"{base}/v1/datasets", headers=headers, timeout=30).json()["data"]]
    assert "sneaky" not in names

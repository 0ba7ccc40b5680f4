"""The console in a real browser (Debian's chromium), against the real server and the embedded model."""

from __future__ import annotations

import json
import time
from typing import Any

import httpx

from tests.conftest import MODEL, Server
from tests.console.conftest import Tab, report, run_tag


def _chat(server: Server, text: str, metadata: dict[str, str], **extra: Any) -> str:
    reply = server.client().chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": text}],
        max_completion_tokens=12,
        temperature=0,
        metadata=metadata,
        **extra,
    )
    return reply.id


def _logged(server: Server, tag: str, count: int) -> list[dict[str, Any]]:
    """The logs of a test's run, once the group-commit writer has stored all `count` of them."""
    deadline = time.monotonic() + 30
    while True:
        data = httpx.get(f"{server.v1}/logs", params={"metadata.run": tag}, timeout=30).json()["data"]
        if len(data) >= count or time.monotonic() > deadline:
            assert len(data) == count, data
            return list(data)
        time.sleep(0.2)


def test_each_page_loads_without_a_script_error(tab: Tab, console_server: Server) -> None:
    tag = run_tag()
    _chat(console_server, "Name a colour.", {"run": tag})
    log_id = _logged(console_server, tag, 1)[0]["id"]
    criterion = f"brief-{tag}"
    created = httpx.post(
        f"{console_server.v1}/criteria",
        json={"name": criterion, "instructions": "PASS if the answer is short."},
        timeout=30,
    )
    assert created.status_code == 200, created.text
    dataset = httpx.post(f"{console_server.v1}/datasets", json={"name": f"pages-{tag}"}, timeout=30).json()

    pages = {
        "requests": ("/", "Requests"),
        "request": (f"/requests/{log_id}", MODEL),
        "datasets": ("/datasets", "Datasets"),
        "dataset": (f"/datasets/{dataset['id']}", f"pages-{tag}"),
        "criteria": ("/criteria", "Criteria"),
        "criterion": (f"/criteria/{criterion}", criterion),
        "models": ("/models", "Models"),
        "playground": ("/playground", "Playground"),
    }
    for name, (path, heading) in pages.items():
        response = tab.open(path)
        assert response.status == 200, (path, response.status)
        assert heading in tab.page.locator("h1").inner_text()
        assert "default-src 'self'" in response.headers["content-security-policy"]
        tab.shot(name)
    tab.assert_clean()


def test_filter_the_log_and_open_a_request(tab: Tab, console_server: Server) -> None:
    tag = run_tag()
    _chat(console_server, "What is the capital of France?", {"run": tag, "team": "red"})
    _chat(console_server, "Count to three.", {"run": tag, "team": "blue"})
    report(
        console_server,
        reqPayload={"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Reported elsewhere"}]},
        respPayload={"choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"}}]},
        statusCode=500,
        errorMessage="upstream failed",
        tags={"run": tag},
    )
    _logged(console_server, tag, 3)

    tab.open("/")
    tab.page.fill("textarea[name=meta]", f"run={tag}\nteam=red")
    tab.page.click("#log-filter button")
    tab.page.wait_for_url(lambda url: "meta=" in url)
    assert "team%3Dred" in tab.page.url  # the filter is in the address, to share
    rows = tab.page.locator("#log-rows tr:not(.more)")
    assert rows.count() == 1
    assert "What is the capital of France?" in rows.first.inner_text()

    # The same view, opened from its address alone, and a filter on the status.
    tab.open(f"/?meta=run%3D{tag}&status=500")
    assert tab.page.locator("#log-rows tr:not(.more)").count() == 1
    assert "Reported elsewhere" in tab.page.locator("#log-rows").inner_text()
    tab.open(f"/?meta=run%3D{tag}&model={MODEL}")
    assert tab.page.locator("#log-rows tr:not(.more)").count() == 2

    tab.open(f"/?meta=run%3D{tag}%0Ateam%3Dred")
    tab.page.click("#log-rows td.preview a")
    tab.page.wait_for_url(lambda url: "/requests/log_" in url)
    transcript = tab.page.locator("#transcript").inner_text()
    assert "What is the capital of France?" in transcript
    assert tab.page.locator("#response .role-assistant .text").inner_text().strip()
    tab.page.click("#raw-request summary")
    assert '"max_completion_tokens": 12' in tab.page.locator("#raw-request pre").inner_text()
    assert "team=red" in tab.page.locator("dl.summary").inner_text()
    tab.shot("request-detail")

    tab.open("/?from=yesterday")
    assert "is not a time" in tab.page.locator("p.error").inner_text()
    assert tab.page.input_value("input[name=from]") == "yesterday"  # kept, to fix


def test_older_rows_load_in_place(tab: Tab, console_server: Server) -> None:
    tag = run_tag()
    for number in range(30):
        report(
            console_server,
            reqPayload={"model": "m", "messages": [{"role": "user", "content": f"message {number}"}]},
            respPayload={"choices": []},
            statusCode=200,
            tags={"run": tag},
            requestedAt=1_700_000_000_000 + number * 1000,
        )
    _logged(console_server, tag, 30)
    tab.open(f"/?meta=run%3D{tag}&limit=25")
    rows = tab.page.locator("#log-rows tr:not(.more)")
    assert rows.count() == 25
    assert "message 29" in rows.first.inner_text()  # newest first
    # Without script, "older" is a link to the next keyset page; with htmx it appends that page in place.
    assert "cursor=" in (tab.page.locator("#log-rows tr.more a").first.get_attribute("href") or "")
    tab.page.click("#log-rows tr.more a >> nth=0")
    rows.nth(29).wait_for()  # (wait_for_function would evaluate a string, which the page's CSP forbids)
    assert "message 0" in rows.last.inner_text()
    assert "cursor" not in tab.page.url
    tab.assert_clean()


def test_make_a_dataset_from_a_filter_and_edit_it(tab: Tab, console_server: Server) -> None:
    tag = run_tag()
    _chat(console_server, "Say yes.", {"run": tag})
    _chat(console_server, "Say no.", {"run": tag})
    _logged(console_server, tag, 2)

    tab.open(f"/?meta=run%3D{tag}")
    tab.page.click("details.make-dataset summary")
    tab.page.fill("#dataset-from-filter input[name=name]", f"from-filter-{tag}")
    tab.page.select_option("#dataset-from-filter select[name=split]", "TRAIN")
    tab.page.click("#dataset-from-filter button")
    tab.page.wait_for_url(lambda url: "/datasets/ds_" in url)
    assert "2 entries added" in tab.page.locator("#outcome").inner_text()
    entries = tab.page.locator("table.entries tbody tr")
    assert entries.count() == 2
    assert "Say" in entries.first.inner_text()
    tab.shot("dataset")
    dataset_url = tab.page.url.split("?")[0]

    # The same filter again adds nothing: those logs are in the dataset already.
    tab.open(f"/?meta=run%3D{tag}")
    tab.page.click("details.make-dataset summary")
    tab.page.select_option("#dataset-from-filter select[name=dataset]", label=f"from-filter-{tag} (2 entries)")
    tab.page.click("#dataset-from-filter button")
    tab.page.wait_for_url(lambda url: "/datasets/ds_" in url)
    assert "0 entries added, 2 skipped" in tab.page.locator("#outcome").inner_text()

    # Edit an entry: its split, and a refused change (no assistant answer at the end).
    tab.page.click("table.entries tbody tr >> nth=0 >> text=edit")
    tab.page.wait_for_url(lambda url: "/entries/dse_" in url)
    tab.page.select_option("#edit-entry select[name=split]", "TEST")
    tab.page.click("#edit-entry button")
    tab.page.wait_for_url(lambda url: url.startswith(dataset_url + "?saved="))
    assert tab.page.locator("table.entries .split-test").count() == 1

    tab.page.click("table.entries tbody tr >> nth=0 >> text=edit")
    tab.page.fill("#edit-entry textarea", json.dumps({"messages": [{"role": "user", "content": "only a question"}]}))
    tab.page.click("#edit-entry button")
    assert "assistant" in tab.page.locator("p.error").inner_text()

    tab.page.goto(dataset_url)
    with tab.page.expect_download() as download:
        tab.page.click("a:text-is('all')")
    lines = download.value.path().read_text().splitlines()
    assert len(lines) == 2
    assert json.loads(lines[0])["messages"][-1]["role"] == "assistant"

    tab.page.on("dialog", lambda dialog: dialog.accept())  # "Delete this entry?"
    tab.page.click("table.entries tbody tr >> nth=0 >> text=edit")
    tab.page.click("#delete-entry button")
    tab.page.wait_for_url(dataset_url)
    assert tab.page.locator("table.entries tbody tr").count() == 1
    tab.assert_clean()


def test_a_playground_chat_streams_and_is_logged(tab: Tab, console_server: Server) -> None:
    tab.open("/playground")
    tab.page.fill("#playground textarea[name=message]", "Write two sentences about the sea.")
    tab.page.fill("#playground input[name=temperature]", "0")
    tab.page.fill("#playground input[name=max_tokens]", "40")
    shown = json.loads(tab.page.locator("#request-json").inner_text())
    assert shown["stream"] is True
    assert shown["messages"][-1] == {"role": "user", "content": "Write two sentences about the sea."}
    tab.page.check("#playground input[name=log]")
    tab.page.click("#send")
    answer = tab.page.locator("#chat .role-assistant .text").last
    tab.page.locator("#chat .streaming").wait_for(state="detached")
    assert answer.inner_text().strip()
    # Shown piece by piece as the server-sent events arrived, not in one go at the end.
    assert int(answer.get_attribute("data-chunks") or "0") >= 2
    assert "completion tokens" in tab.page.locator("#result").inner_text()
    tab.shot("playground")

    tab.page.click("#result a")
    deadline = time.monotonic() + 30
    while tab.page.locator("#log-rows tr:not(.more)").count() != 1 and time.monotonic() < deadline:
        time.sleep(0.3)  # the log is written by the group-commit writer, a moment after the answer
        tab.page.reload()
    assert "two sentences about the sea" in tab.page.locator("#log-rows").inner_text()
    tab.assert_clean()


PAYLOAD = '<script>window.__pwned = 1</script><img src=x onerror="window.__pwned = 2">'


def test_a_logged_script_is_shown_not_run(tab: Tab, console_server: Server) -> None:
    tag = run_tag()
    report(
        console_server,
        reqPayload={"model": PAYLOAD[:60], "messages": [{"role": "user", "content": PAYLOAD}]},
        respPayload={"choices": [{"index": 0, "message": {"role": "assistant", "content": PAYLOAD}}]},
        statusCode=200,
        errorMessage=PAYLOAD,
        tags={"run": tag, "note": PAYLOAD},
    )
    log_id = _logged(console_server, tag, 1)[0]["id"]
    for path in (f"/?meta=run%3D{tag}", f"/requests/{log_id}"):
        tab.open(path)
        assert tab.page.evaluate("typeof window.__pwned") == "undefined"
        assert tab.page.locator("main script, main img").count() == 0
        assert PAYLOAD in tab.page.locator("main").inner_text()  # shown as the text it is
    tab.shot("script-payload")


def test_judge_by_hand_and_measure_alignment(tab: Tab, console_server: Server) -> None:
    name = f"polite-{run_tag()}"
    for body in (
        {"name": name, "instructions": "PASS if the answer is polite.\nFAIL if it is rude."},
        {"instructions": "PASS if the answer is polite and kind.\nFAIL if it is rude.\nIgnore its length."},
    ):
        url = f"{console_server.v1}/criteria" + ("" if "name" in body else f"/{name}/versions")
        assert httpx.post(url, json=body, timeout=30).status_code == 200

    tab.open(f"/criteria/{name}")
    assert tab.page.locator("#diff tr.diff-replace, #diff tr.diff-insert").count() >= 2
    assert "Ignore its length." in tab.page.locator("#diff td.new").all_inner_texts()

    tab.page.fill("#judge textarea[name=input]", "Can you help me?")
    tab.page.fill("#judge textarea[name=output]", "Of course, I would be glad to help you.")
    tab.page.click("#judge button")
    verdict = tab.page.locator("#verdict .verdict")
    verdict.wait_for()
    assert 0.0 <= float(verdict.locator(".score").inner_text()) <= 1.0
    assert f"{name}@v2" in verdict.inner_text()

    rows = [
        {"input": "Hello", "output": "Hello! How can I help you today?", "label": "PASS"},
        {"input": "Hello", "output": "Go away, you are annoying.", "label": "FAIL"},
    ]
    tab.page.fill("#align textarea[name=rows]", "\n".join(json.dumps(row) for row in rows))
    tab.page.click("#align button")
    result = tab.page.locator("#alignment .alignment")
    result.wait_for()
    assert "on 2 rows" in result.inner_text()
    assert tab.page.locator("#alignment .f1").inner_text()
    tab.shot("criterion")
    tab.assert_clean()


def test_models_show_load_and_refresh(tab: Tab, console_server: Server) -> None:
    tab.open("/models")
    row = tab.page.locator("table.models tbody tr", has_text=MODEL)
    assert "ready" in row.locator("td.state").inner_text()
    # The table is refreshed in place by htmx, under the page's Content-Security-Policy.
    with tab.page.expect_response(
        lambda r: r.url.endswith("/models") and r.request.headers.get("hx-request") == "true", timeout=20_000
    ) as refreshed:
        pass
    assert refreshed.value.status == 200
    assert tab.page.locator("table.models svg.spark, table.models .muted").count() >= 1
    tab.assert_clean()

"""Cancel pressed while a job still waits in Gradio's queue, against the running app. The server here lets one
run in at a time, so a second session's Run waits in the queue behind A's long run (held through gradio_client).

- In the page (headless Chromium): Run, then Cancel, is taken at once; when its turn comes the job ends with the
  cancelled message and writes nothing; the next Run goes in full (no stale flag).
- Through the API: gradio_client's Job.cancel() takes a queued /run out of the queue; the session's next run goes.
"""
from __future__ import annotations

import time

import pytest

gradio_client = pytest.importorskip("gradio_client")

from gradio_client.utils import Status  # noqa: E402

from mxlab.recipe import Recipe  # noqa: E402

from app_server import ARGS, CHROMIUM, running_app  # noqa: E402

pytestmark = pytest.mark.slow

LONG = Recipe(steps=[{"name": "awq", "n_grid": 1000, "clip_grid": 1000}],
              calib=dict(n_samples=8, seq_len=128)).to_yaml()             # legitimate, but minutes long
SMALL = Recipe(weights="mxint4", acts="mxint8", steps=["rtn"], calib=dict(n_samples=2, seq_len=32)).to_yaml()


@pytest.fixture(scope="module")
def url(tmp_path_factory):
    import app

    patch = pytest.MonkeyPatch()
    patch.setattr(app, "RUN_ENTRY_LIMIT", 1)          # one run inside the server: the next waits in the queue
    try:
        with running_app(tmp_path_factory.mktemp("ws")) as address:
            yield address
    finally:
        patch.undo()


def _client(url):
    return gradio_client.Client(url, verbose=False, download_files=False)


def _wait(cond, timeout: float) -> None:
    end = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < end, "timed out"
        time.sleep(0.05)


def _names(client) -> list[str]:
    """The workspace's run names, from the runs table."""
    table = client.predict(api_name="/runs")[0]
    rows = [dict(zip(table["headers"], r)) for r in table["data"] if any(v not in (None, "") for v in r)]
    return [r["name"] for r in rows]


def _hold(url):
    """A long run of another session, running (deep in AWQ's grid): the one entry is taken."""
    holder = _client(url)
    job = holder.submit("", LONG, "tinystories", 2, "long", api_name="/run")
    _wait(lambda: "awq" in " ".join(str(getattr(p, "desc", "")) for p in job.status().progress_data or []), 120)
    return holder, job


def _release(holder, job) -> None:
    assert holder.predict(api_name="/cancel").startswith("**Cancelling** at the next progress step")
    assert job.result(timeout=30)[0].startswith("**Cancelled")


@pytest.mark.browser
@pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's chromium at /usr/bin/chromium")
def test_cancel_in_the_page_while_the_run_waits_in_the_queue(url):
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=ARGS, headless=True)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.set_default_timeout(60_000)
            page.goto(url)
            page.wait_for_function("document.querySelector('#status-model')?.innerText.includes('parameters')")
            page.get_by_role("tab", name="2 · Recipe").click()
            order = page.locator("#method-order textarea")
            order.fill("")
            order.press_sequentially("rtn", delay=60)                    # a quick recipe for the next run
            page.get_by_role("tab", name="3 · Run").click()
            holder, long_job = _hold(url)
            try:
                page.locator("#run-btn").click()
                page.wait_for_function("document.querySelector('#status-run')?.innerText.includes('queue')",
                                       timeout=30_000)                   # the run waits in Gradio's queue
                page.locator("#cancel-btn").click()
                page.wait_for_function("document.querySelector('#status-run')?.innerText.includes("
                                       "'the job waiting in the queue will not start')", timeout=10_000)
            finally:
                _release(holder, long_job)
            # the queued job's turn comes after the long run has stopped and the queue has moved: 30 s was too
            # short once on CI's 2 loaded cores (the test passes in ~30 s alone)
            page.wait_for_function("document.querySelector('#status-run')?.innerText.includes("
                                   "'Cancelled while waiting in the queue; nothing was started.')", timeout=90_000)
            assert _names(holder) == []                                  # neither run wrote anything
            page.locator("#run-btn").click()                             # the next Run goes in full
            page.wait_for_function("document.querySelector('#status-run')?.innerText.includes('Done.')",
                                   timeout=180_000)
            assert len(_names(holder)) == 1
        finally:
            browser.close()


def test_api_job_cancel_takes_a_queued_run_out_of_the_queue(url):
    client = _client(url)
    before = _names(client)
    holder, long_job = _hold(url)
    try:
        queued = client.submit("", SMALL, "tinystories", 1, "queued", api_name="/run")
        _wait(lambda: queued.status().code == Status.IN_QUEUE, 30)
        assert client.predict(api_name="/cancel") == "Nothing of this session is running."   # not started yet
        assert queued.cancel()
    finally:
        _release(holder, long_job)
    message, _ = client.predict("", SMALL, "tinystories", 1, "next", api_name="/run")
    assert message.startswith("**Done")
    assert _names(client) == [*before, "next"]                          # the cancelled one never ran

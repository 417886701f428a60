"""Bad input against the running app through gradio_client, as a hostile client would send it: oversized
recipes refused at once, no file outside the allowed roots read through any endpoint (and the refusal
the same whether the file exists or not), and the freeze case: one session's heavy run never starves
the others, and Cancel stops it within two seconds."""
from __future__ import annotations

import time
from pathlib import Path

import pytest

gradio_client = pytest.importorskip("gradio_client")

from mxlab.guard import AllowedRoots  # noqa: E402
from mxlab.lab.server import POLICY, FairGate  # noqa: E402
from mxlab.limits import short  # noqa: E402
from mxlab.recipe import Recipe  # noqa: E402

from _faults import snapshot  # noqa: E402
from app_server import running_app  # noqa: E402

pytestmark = pytest.mark.slow

SECRET = "mxlab-secret-7d1f0c"
SMALL = Recipe(weights="mxint4", acts="mxint8", calib=dict(n_samples=2, seq_len=32)).to_yaml()


@pytest.fixture(scope="module")
def outside(tmp_path_factory):
    """A directory the app may not read, holding a secret text file and a model-looking directory."""
    d = tmp_path_factory.mktemp("outside")
    (d / "secret.txt").write_text(f"{SECRET} " * 2000)
    (d / "model").mkdir()
    (d / "model" / "config.json").write_text('{"model_type": "llama"}')
    return d


@pytest.fixture(scope="module")
def url(tmp_path_factory, outside):
    ws = tmp_path_factory.mktemp("workspace")
    (ws / "escape.txt").symlink_to(outside / "secret.txt")          # a link inside an allowed root
    with running_app(ws) as address:                                # runs and session folders in ws
        assert not POLICY.roots.contains(outside)
        yield address


@pytest.fixture(scope="module")
def client(url):
    return gradio_client.Client(url, verbose=False, download_files=False)


def _message(out) -> str:
    return out[0] if isinstance(out, (list, tuple)) else str(out)


# ---------------------------------------------------------------------------------- oversized recipes
@pytest.mark.parametrize("yaml_text, match", [
    ("steps: [{name: awq, n_grid: 1000000000}]", "exceeds the limit 1000"),
    ("block_size: 1000000000000", "exceeds the limit 4096"),
    ("calib: {n_samples: 1000000000}", "exceeds the limit 4096"),
    ("a: &a [1, 2, 3]\nb: &b [*a, *a, *a]\nc: [*b, *b, *b]", "anchors/aliases"),
    ("weights: " + "z" * 60000, "not a format name"),
    ("# pad\n" * 20000, "over the limit"),
])
def test_oversized_recipes_are_refused_at_once(client, yaml_text, match):
    before = snapshot(POLICY.workspace)
    start = time.perf_counter()
    message = _message(client.predict("", yaml_text, "tinystories", 1, api_name="/run"))
    assert time.perf_counter() - start < 5.0
    assert message.startswith("**Error:**") and match in message, message[:300]
    assert len(message) < 400 and "z" * 50 not in message
    assert snapshot(POLICY.workspace) == before


# ---------------------------------------------------------------------------------- reading files
def _paths(outside: Path) -> list[str]:
    ws = str(POLICY.workspace)
    return [str(outside / "secret.txt"), str(outside / "missing.txt"), "/etc/passwd", "/etc/shadow",
            "~/.bashrc", "../../../../../../etc/passwd", f"{ws}/../{outside.name}/secret.txt",
            f"{ws}/escape.txt", str(outside / "model"), str(outside), "/proc/self/environ"]


def _refusals(client, outside) -> dict[str, list[str]]:
    """Every endpoint that takes a source or a name, fed every path: endpoint -> messages."""
    got: dict[str, list[str]] = {}
    for p in _paths(outside):
        calls = {
            "load_model": lambda: client.predict(p, SMALL, api_name="/load_model"),
            "run: model": lambda: client.predict(p, SMALL, "tinystories", 1, api_name="/run"),
            "run: calib": lambda: client.predict(
                "", Recipe(calib=dict(dataset=p, n_samples=2, seq_len=32)).to_yaml(), "tinystories", 1,
                api_name="/run"),
            "run: eval": lambda: client.predict("", SMALL, p, 1, api_name="/run"),
            "inspect": lambda: client.predict(p, "all layers", api_name="/inspect"),
            "export": lambda: client.predict(p, api_name="/export"),
            "sensitivity": lambda: client.predict(p, "all layers", api_name="/sensitivity"),
            "compare": lambda: client.predict([p], api_name="/compare"),
            "import_yaml": lambda: client.predict(f"calib: {{dataset: '{p}'}}", api_name="/import_yaml"),
            "mix_frontier: calib": lambda: client.predict(
                Recipe(calib=dict(dataset=p, n_samples=2, seq_len=32)).to_yaml(), ["mxint4", "mxint8"], "rtn", 1, 8,
                api_name="/mix_frontier"),
        }
        for name, call in calls.items():
            try:
                out = call()
                text = repr(out)
            except Exception as err:  # noqa: BLE001 - gradio's own refusal (e.g. a value not in a dropdown)
                text = f"exception: {err}"
            got.setdefault(name, []).append(text.replace(short(p), "<P>").replace(p, "<P>"))
    return got


def test_no_endpoint_reads_a_file_outside_the_allowed_roots(client, outside):
    before = snapshot(POLICY.workspace)
    got = _refusals(client, outside)
    for endpoint, texts in got.items():
        for text in texts:
            assert SECRET not in text, endpoint
            assert "root:" not in text, endpoint                          # /etc/passwd's content
            assert "tokens" not in text or "Error" in text, endpoint
    # the refusal is word for word the same whether the file exists, is missing, is a link or a dir
    for endpoint in ("load_model", "run: model", "run: calib", "run: eval", "mix_frontier: calib"):
        assert len(set(got[endpoint])) == 1, (endpoint, set(got[endpoint]))
        assert "--allow-path" in got[endpoint][0] or "exception" in got[endpoint][0], got[endpoint][0]
    assert snapshot(POLICY.workspace) == before


def test_gradio_file_routes_refuse_outside_files(url, outside):
    import httpx

    for p in (outside / "secret.txt", Path("/etc/passwd"), Path(POLICY.workspace) / "escape.txt"):
        r = httpx.get(f"{url}gradio_api/file={p}")
        assert r.status_code in (403, 404), (p, r.status_code)
        assert SECRET not in r.text


def test_an_allowed_root_is_read(tmp_path):
    roots = AllowedRoots([tmp_path])
    (tmp_path / "t.txt").write_text("hi")
    assert roots.check_text(str(tmp_path / "t.txt"), ["tinystories"]) == str(tmp_path / "t.txt")
    assert roots.check_text("tinystories", ["tinystories"]) == "tinystories"
    assert roots.check_model("Qwen/Qwen2.5-0.5B") == "Qwen/Qwen2.5-0.5B"


def test_upload_size_is_capped(url):
    import httpx

    from mxlab.limits import bound

    data = b"a" * (bound("upload bytes") + 1024)
    r = httpx.post(f"{url}gradio_api/upload", files={"files": ("big.yaml", data)}, timeout=60)
    assert r.status_code in (400, 413), r.status_code


# ---------------------------------------------------------------------------------- the freeze case
def _wait(cond, timeout: float) -> float:
    start = time.perf_counter()
    while not cond():
        assert time.perf_counter() - start < timeout, "timed out"
        time.sleep(0.05)
    return time.perf_counter() - start


def _progress(job) -> str:
    """The job's latest progress description ('' before the first report)."""
    data = job.status().progress_data or []
    return " ".join(str(getattr(p, "desc", "") or "") for p in data)


def test_freeze_case_refuse_at_once_cancel_within_two_seconds_and_the_other_session_starts(url):
    a, b, c = (gradio_client.Client(url, verbose=False, download_files=False) for _ in range(3))
    long_run = Recipe(steps=[{"name": "awq", "n_grid": 1000, "clip_grid": 1000}],
                      calib=dict(n_samples=8, seq_len=128)).to_yaml()          # legitimate, but minutes long
    job_a = a.submit("", long_run, "tinystories", 2, api_name="/run")
    _wait(lambda: "awq" in _progress(job_a), 120)                               # A is deep in the grid search
    job_b = b.submit("", SMALL, "tinystories", 1, api_name="/run")
    _wait(lambda: POLICY.gate.waiting == 1, 30)                                 # B is queued behind A

    start = time.perf_counter()
    message = _message(c.predict("", "steps: [{name: awq, n_grid: 1000000000}]", "tinystories", 1, api_name="/run"))
    assert time.perf_counter() - start < 2.0 and "exceeds the limit" in message

    pressed = time.perf_counter()
    assert "Cancelling" in a.predict(api_name="/cancel")
    result_a = job_a.result(timeout=10)
    assert time.perf_counter() - pressed < 2.0
    assert _message(result_a).startswith("**Cancelled")
    _wait(lambda: POLICY.gate.waiting == 0, 2.0)                                 # B got the worker
    assert _message(job_b.result(timeout=120)).startswith("**Done")


def test_fair_gate_serves_sessions_in_arrival_order_and_one_job_per_session():
    import threading

    from mxlab.errors import MxlabError

    gate, order, cancel = FairGate(1), [], threading.Event()
    first = threading.Event()

    def job(name, hold):
        with gate.slot(name, cancel):
            order.append(name)
            first.set()
            time.sleep(hold)
    threads = [threading.Thread(target=job, args=("s1", 0.3))]
    threads[0].start()
    first.wait(5)
    for name in ("s2", "s3"):
        threads.append(threading.Thread(target=job, args=(name, 0.0)))
        threads[-1].start()
        _wait(lambda n=len(threads) - 1: gate.waiting == n, 5)
    with pytest.raises(MxlabError, match="already has a run"):
        with gate.slot("s2", cancel):
            pass
    for t in threads:
        t.join(5)
    assert order == ["s1", "s2", "s3"]

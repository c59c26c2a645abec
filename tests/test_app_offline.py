"""`python app.py` with no network and nothing cached starts and says what it could not download.

"No network" is made here, not assumed from the runner: the Hub (``HF_ENDPOINT``)
and Neuronpedia (``AXON_NEURONPEDIA_URL``, ``AXON_NEURONPEDIA_DATASETS_URL``)
point at a closed port of 127.0.0.1, so the test holds on a networked runner too.

The two servers (no network; an empty offline hub) start side by side, once for
the module: a start-up mostly waits on one core, and this machine has two.
"""

import contextlib
import socket
import threading
import urllib.request

import pytest

from app_server import AppServer

HOWS = ["no network", "empty offline hub"]


@contextlib.contextmanager
def closed_url():
    """``http://127.0.0.1:PORT`` where nothing listens: the port is bound (so no
    other process takes it for the test's duration) but never listened on, so a
    connection is refused at once."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        yield f"http://127.0.0.1:{s.getsockname()[1]}"


def _in_parallel(calls) -> None:
    threads = [threading.Thread(target=c) for c in calls]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


@pytest.fixture(scope="module")
def servers(tmp_path_factory):
    """{how: (server, closed url)}, both started at once."""
    with contextlib.ExitStack() as stack:
        made = {}
        for how in HOWS:
            tmp = tmp_path_factory.mktemp("offline")
            empty = tmp / "empty-cache"
            empty.mkdir()
            url = stack.enter_context(closed_url())
            env = {
                "HF_ENDPOINT": url, "HF_HOME": str(tmp / "hf-home"),
                "AXON_NEURONPEDIA_URL": url, "AXON_NEURONPEDIA_DATASETS_URL": url,
            }
            if how == "no network":
                # No AXON_OFFLINE_HUB: the app probes the Hub, finds it unreachable and goes offline.
                env.update(AXON_OFFLINE_HUB="", HF_HUB_CACHE=str(empty))
            made[how] = (AppServer(empty, env=env, log_dir=tmp), url)
        errors = {}

        def start(how):
            try:
                made[how][0].start()
            except Exception as err:  # noqa: BLE001 - raised below, in the test's thread
                errors[how] = err

        _in_parallel([lambda how=how: start(how) for how in HOWS])
        stack.callback(_in_parallel, [server.stop for server, _ in made.values()])
        if errors:
            raise next(iter(errors.values()))
        yield made


@pytest.mark.parametrize("how", HOWS)
def test_app_starts_offline_and_explains(servers, how):
    app, closed = servers[how]
    assert app.environment()["HF_ENDPOINT"] == closed
    page = urllib.request.urlopen(app.url, timeout=10).read().decode()
    assert "AXON" in page
    out = app.client().predict("The capital of France is", "gpt2-small", "gpt2-small-res-jb",
                               "blocks.8.hook_resid_pre", 0.8, 50, 0.95, 1.1, 5, 0, 12, 0.1, "", "npmi",
                               api_name="/generate")
    status = out[3]
    assert "Could not download SAE gpt2-small-res-jb / blocks.8.hook_resid_pre" in status
    assert "Traceback" not in status and "Traceback" not in app.log_text()
    if how == "no network":
        assert "Hugging Face Hub is unreachable" in status
    else:
        assert "holds no offline hub" in status
    assert app.proc.poll() is None  # still serving

"""`python app.py` with no network and nothing cached starts and says what it could not download.

"No network" is made here, not assumed from the runner: the Hub (``HF_ENDPOINT``)
and Neuronpedia (``AXON_NEURONPEDIA_URL``, ``AXON_NEURONPEDIA_DATASETS_URL``)
point at a closed port of 127.0.0.1, so the test holds on a networked runner too.
"""

import socket
import urllib.request

import pytest

from app_server import AppServer


@pytest.fixture
def closed_url():
    """``http://127.0.0.1:PORT`` where nothing listens: the port is bound (so no
    other process takes it for the test's duration) but never listened on, so a
    connection is refused at once."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        yield f"http://127.0.0.1:{s.getsockname()[1]}"


@pytest.mark.parametrize("how", ["no network", "empty offline hub"])
def test_app_starts_offline_and_explains(tmp_path, closed_url, how):
    empty = tmp_path / "empty-cache"
    empty.mkdir()
    env = {
        "HF_ENDPOINT": closed_url, "HF_HOME": str(tmp_path / "hf-home"),
        "AXON_NEURONPEDIA_URL": closed_url, "AXON_NEURONPEDIA_DATASETS_URL": closed_url,
    }
    if how == "no network":
        # No AXON_OFFLINE_HUB: the app probes the Hub, finds it unreachable and goes offline.
        env.update(AXON_OFFLINE_HUB="", HF_HUB_CACHE=str(empty))
    with AppServer(empty, env=env, log_dir=tmp_path) as app:
        assert app.environment()["HF_ENDPOINT"] == closed_url
        page = urllib.request.urlopen(app.url, timeout=10).read().decode()
        assert "AXON" in page
        from gradio_client import Client

        client = Client(app.url, verbose=False)
        out = client.predict("The capital of France is", "gpt2-small", "gpt2-small-res-jb",
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

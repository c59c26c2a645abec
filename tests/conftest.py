"""Shared fixtures: a private, offline Hugging Face cache with random-weight
checkpoints in the real repo layouts (see scripts/offline_hub.py).

HF_HUB_CACHE / HF_HUB_OFFLINE must be set before huggingface_hub is imported
(it reads them at import), so they are set here, at collection time.
"""

from __future__ import annotations

import atexit
import contextlib
import importlib
import io
import os
import shutil
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

_HUB = Path(os.environ.get("AXON_TEST_HUB") or tempfile.mkdtemp(prefix="axon-test-hub-"))
if not os.environ.get("AXON_TEST_HUB"):  # a private hub (~100 MB with the families) goes with the run
    atexit.register(shutil.rmtree, _HUB, True)
os.environ["HF_HUB_CACHE"] = str(_HUB)
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def offline_hub() -> Path:
    """The tiny offline hub, written once per test session."""
    from scripts.offline_hub import write_offline_hub

    if not (_HUB / "AXON_OFFLINE_HUB.json").exists():
        write_offline_hub(_HUB, "tiny", layers=[2, 5, 8, 11])  # 5, 11: several layers (test_depth)
    return _HUB


@pytest.fixture(scope="session")
def pairs(offline_hub):
    from axon_core.loading import PairCache

    return PairCache(max_saes=6, device="cpu")  # every SAE the session's tests load stays: a layered run reads 4


@pytest.fixture(scope="session")
def pair(pairs):
    """gpt2 + gpt2-small-res-jb / blocks.8.hook_resid_pre, loaded by their real names."""
    return pairs.get("gpt2-small-res-jb", "blocks.8.hook_resid_pre")


@pytest.fixture(scope="session")
def pythia_hub(offline_hub) -> Path:
    """The offline hub plus a tiny random ``pythia-70m-deduped`` and its res-sm SAEs (layers 0, 2, 3)."""
    from scripts.offline_hub import PYTHIA_SAE_REPO, write_pythia

    if not (_HUB / ("models--" + PYTHIA_SAE_REPO.replace("/", "--"))).exists():  # written last
        write_pythia(_HUB, "tiny")
    return _HUB


@pytest.fixture(scope="session")
def gemma3_hub(offline_hub) -> Path:
    """The offline hub plus a real-size random ``google/gemma-3-270m`` (TransformerLens
    loads Gemma only at its real dimensions) and one gemma-scope-2-270m-pt-res SAE."""
    from scripts.offline_hub import GEMMA3_SAE_REPO, write_gemma3

    if not (_HUB / ("models--" + GEMMA3_SAE_REPO.replace("/", "--"))).exists():  # written last
        write_gemma3(_HUB)
    return _HUB


@pytest.fixture(scope="session")
def gemma3_pair(gemma3_hub):
    """The real-size Gemma 3 270M and its Gemma Scope 2 SAE, loaded once for the session
    (~2 GB, ~10 s to load: tests/test_families.py and tests/test_watch.py share it)."""
    from axon_core.loading import PairCache

    pairs = PairCache(device="cpu")
    yield pairs.get("gemma-scope-2-270m-pt-res", "layer_12_width_16k_l0_medium")
    pairs._models.clear()


@pytest.fixture(scope="module")
def app_module(offline_hub, tmp_path_factory):
    """``import app`` on the offline hub, its labels pointed at a closed port (in-process app tests)."""
    if "app" not in sys.modules:
        tmp = tmp_path_factory.mktemp("app-inprocess")
        env = {"AXON_LABEL_CACHE": str(tmp / "labels.sqlite"), "AXON_NEURONPEDIA_URL": "http://127.0.0.1:9",
               "AXON_NEURONPEDIA_DATASETS_URL": "http://127.0.0.1:9"}
        saved = {k: os.environ.get(k) for k in env}
        os.environ.update(env)
        try:
            with contextlib.redirect_stdout(io.StringIO()):
                importlib.import_module("app")
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
    return sys.modules["app"]


# ---- the browser tests' Chromium and app servers (tests/browser_kit.py) ------------------------


@pytest.fixture(scope="module")
def browser():
    """One Chromium per browser module (not per session: Playwright's sync API keeps an
    asyncio loop running in this thread while it is open, and later in-process tests
    call asyncio.run)."""
    import browser_kit as kit

    kit.require_browser()
    with kit.sync_api.sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=kit.CHROMIUM, args=kit.CHROMIUM_ARGS)
        yield b
        b.close()


@pytest.fixture(scope="session")
def browser_app(offline_hub, pythia_hub, tmp_path_factory):
    """``python app.py`` for the browser tests whose Neuronpedia answers one feature at a
    time (``.fake``: the FakeNeuronpedia); Pythia in its hub for the picker test."""
    import browser_kit as kit
    from app_server import AppServer
    from neuronpedia_fake import FakeNeuronpedia

    kit.require_browser()
    with FakeNeuronpedia(labels={(kit.NP_ID, i): kit.label_of(i) for i in range(1024)}) as fake:
        with AppServer(offline_hub, neuronpedia=fake, log_dir=tmp_path_factory.mktemp("browser-app"),
                       env=kit.APP_ENV) as server:
            server.fake = fake
            yield server
            assert "Traceback" not in server.log_text(), server.log_text()[-3000:]


@pytest.fixture(scope="session")
def bulk_app(offline_hub, tmp_path_factory):
    """``python app.py`` for the browser tests that search: the same labels (a few named,
    browser_kit.BULK_NAMES), also in bulk, and every feature's evidence (``.fake``)."""
    import browser_kit as kit
    from app_server import AppServer
    from neuronpedia_fake import FakeNeuronpedia

    kit.require_browser()
    names = {i: kit.bulk_label_of(i) for i in range(1024)}
    batches = [[(i, names[i]) for i in range(b, b + 256)] for b in range(0, 1024, 256)]
    with FakeNeuronpedia(labels={(kit.NP_ID, i): d for i, d in names.items()}, batches={kit.NP_ID: batches}) as fake:
        for i in range(1024):
            fake.feature_extra[(kit.NP_ID, i)] = kit.EVIDENCE
        # paced (AXON_STEP_DELAY, ~20 tokens a second): the notes under the text are redrawn at
        # the table's cadence (0.5 s), and test_watch_browser sees its sparkline at several lengths
        with AppServer(offline_hub, neuronpedia=fake, log_dir=tmp_path_factory.mktemp("bulk-app"),
                       env={**kit.APP_ENV, "AXON_STEP_DELAY": "0.05"}) as server:
            server.fake = fake
            yield server
            assert "Traceback" not in server.log_text(), server.log_text()[-3000:]

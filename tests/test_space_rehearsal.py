"""A Hugging Face Space, rehearsed: ``python app.py`` with the environment a Gradio Space sets.

A Space runs ``python app.py`` in the repository checkout with ``SYSTEM=spaces``,
``SPACE_ID``, ``SPACE_HOST``, ``GRADIO_SERVER_NAME=0.0.0.0`` and
``GRADIO_SERVER_PORT``, and its proxy reaches the app from outside the
container. Checked here, on the tiny offline hub, talking to 127.0.0.1 only:

1. the listening socket is on all interfaces (``/proc/net/tcp``), not 127.0.0.1;
2. the page and ``/generate`` answer;
3. share links and the embed view's link name ``https://owner-axon.hf.space/``;
4. the label cache and the parsed catalogue land in AXON's cache folder
   (:func:`axon_core.paths.cache_dir`: writable, and ``/data/axon`` when the
   Space has persistent storage), nothing in the app folder;
5. off ZeroGPU, a ``@spaces.GPU`` generator still streams: its first frame
   reaches a client while the generator is still running.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import pickle
import re
import shutil
import socket
import sys
import threading
import time
import urllib.request
import uuid
from pathlib import Path

import pytest

from app_server import ROOT, AppServer, free_port
from neuronpedia_fake import FakeNeuronpedia

import gradio_client  # a dependency of gradio itself: never skipped

SPACE_ID, SPACE_HOST = "owner/axon", "owner-axon.hf.space"
PUBLIC_URL = f"https://{SPACE_HOST}/"
GENERATE_ARGS = ["The capital of France is", "gpt2-small", "gpt2-small-res-jb", "blocks.8.hook_resid_pre",
                 0.8, 50, 0.95, 1.1, 6, 0, 12, 0.1, "", "npmi"]


def listening_addresses(port: int) -> list[str]:
    """Local addresses of the sockets LISTENing on ``port``, from /proc/net/tcp{,6}."""
    found = []
    for table, v6 in (("/proc/net/tcp", False), ("/proc/net/tcp6", True)):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            local, state = fields[1], fields[3]
            addr_hex, port_hex = local.split(":")
            if state != "0A" or int(port_hex, 16) != port:  # 0A: TCP_LISTEN
                continue
            raw = bytes.fromhex(addr_hex)
            if v6:  # four 32-bit words, each little-endian
                raw = b"".join(raw[i:i + 4][::-1] for i in range(0, 16, 4))
                found.append(socket.inet_ntop(socket.AF_INET6, raw))
            else:
                found.append(socket.inet_ntop(socket.AF_INET, raw[::-1]))
    return found


# With SYSTEM=spaces Gradio also starts the `spaces` package's hot-reload server
# (uvicorn in a thread, 0.0.0.0:7887, at the first request), whose discarded event
# loops print this at garbage collection: Gradio's noise on every Space, not ours.
GRADIO_SPACES_NOISE = "Exception ignored in: <function BaseEventLoop.__del__"


def app_tracebacks(log: str) -> int:
    """Tracebacks in the app's log, other than Gradio's Spaces noise."""
    return log.count("Traceback") - log.count(GRADIO_SPACES_NOISE)


def tree_snapshot(root: Path) -> dict[str, float]:
    """Every file under ``root`` with its mtime, ignoring ``.git`` and ``__pycache__``
    (Python's own bytecode cache, written on a Space too)."""
    snap = {}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if d not in ("__pycache__", ".git")]
        for name in filenames:
            path = Path(dirpath, name)
            try:
                snap[str(path.relative_to(root))] = path.stat().st_mtime
            except OSError:
                pass
    return snap


def call_event(base_url: str, api_name: str, values: list, query: str = "", timeout: float = 60.0) -> list:
    """Run one event of the page through Gradio's queue, as the browser does
    (``fn_index`` from ``/config``, so events hidden from the API work too; the
    page's query string on the join request). ``values`` fill the event's inputs
    in order, ``gr.State`` inputs excepted (the server holds those). Returns the
    event's output data."""
    with urllib.request.urlopen(base_url + "config", timeout=10) as r:
        config = json.load(r)
    states = {c["id"] for c in config["components"] if c.get("type") == "state"}
    deps = config["dependencies"]
    index = next(i for i, d in enumerate(deps) if d.get("api_name") == api_name)
    given = iter(values)
    data = [None if i in states else next(given) for i in deps[index]["inputs"]]
    assert next(given, "all used") == "all used", f"{api_name} takes fewer inputs than given"
    session = uuid.uuid4().hex[:11]
    body = json.dumps({"data": data, "fn_index": deps[index].get("id", index), "session_hash": session,
                       "event_data": None, "trigger_id": None}).encode()
    join = base_url + "gradio_api/queue/join" + (f"?{query}" if query else "")
    urllib.request.urlopen(urllib.request.Request(join, body, {"Content-Type": "application/json"}),
                           timeout=10).read()
    with urllib.request.urlopen(f"{base_url}gradio_api/queue/data?session_hash={session}",
                                timeout=timeout) as stream:
        for line in stream:
            line = line.decode().strip()
            if not line.startswith("data:"):
                continue
            msg = json.loads(line[5:])
            if msg.get("msg") == "process_completed":
                assert msg.get("success"), msg
                return msg["output"]["data"]
    raise AssertionError(f"no result for {api_name}")


@pytest.fixture(scope="module")
def space(offline_hub, tmp_path_factory):
    """``python app.py`` as a Space starts it, with a fresh HF_HOME and user cache folder."""
    tmp = tmp_path_factory.mktemp("space")
    (tmp / "hf-home").mkdir()
    env = {
        "SYSTEM": "spaces", "SPACE_ID": SPACE_ID, "SPACE_HOST": SPACE_HOST,
        "HF_HOME": str(tmp / "hf-home"),
        "XDG_CACHE_HOME": str(tmp / "user-cache"),  # the container's ~/.cache, fresh
        # AXON's caches are left to their defaults: that is what is checked.
        "AXON_CACHE_DIR": None, "AXON_LABEL_CACHE": None,
    }
    # The app folder is a copy of the checkout, as on a Space (and so that nobody
    # else's edits to the working tree count as the app's writes).
    app_dir = tmp / "app"
    shutil.copytree(ROOT, app_dir, ignore=shutil.ignore_patterns(
        ".git", "__pycache__", "*.pyc", "out", ".pytest_cache", ".venv", ".hypothesis"))
    before = tree_snapshot(app_dir)
    with FakeNeuronpedia(labels={("gpt2-small/8-res-jb", i): f"label {i}" for i in range(512)}) as fake, \
            AppServer(offline_hub, neuronpedia=fake, env=env, log_dir=tmp, bind_all=True, app_dir=app_dir) as app:
        app.tmp, app.before = tmp, before
        yield app


def test_listens_on_all_interfaces(space):
    addresses = listening_addresses(space.port)
    print(f"listening on {addresses} port {space.port}; first page after {space.started_in:.1f} s")
    assert addresses, f"nothing listens on port {space.port}"
    assert set(addresses) <= {"0.0.0.0", "::"}, addresses  # a Space's proxy must reach it


def test_page_and_generate_answer(space):
    with urllib.request.urlopen(space.url, timeout=10) as r:
        assert r.status == 200 and "AXON" in r.read().decode()
    client = gradio_client.Client(space.url, verbose=False, download_files=False)
    out = client.predict(*GENERATE_ARGS, api_name="/generate")
    run = out[4]
    generated = [t for t in run["tokens"] if not t["is_prompt"]]
    assert len(generated) == 6 and any(t["features"] for t in run["tokens"])
    assert app_tracebacks(space.log_text()) == 0, space.log_text()[-3000:]


def test_share_link_and_embed_view_name_the_space(space):
    # What "Copy link" returns in the page. No forwarded-host header here, as from
    # a proxy that rewrites nothing: SPACE_ID alone decides the public address.
    (link,) = call_event(space.url, "share_link", GENERATE_ARGS[:13] + [[2, 5], ""])
    assert link.startswith(PUBLIC_URL + "?"), link
    assert "prompt=The+capital+of+France+is" in link and "autorun=1" in link and "layers=2%2C5" in link
    # The embed view (?embed=1, what an <iframe> or <gradio-app> shows) links to the full page.
    out = call_event(space.url, "from_query", [], query="prompt=Hello+there&embed=1")
    (open_link,) = [v for v in out if isinstance(v, str) and "axon-open" in v]
    assert f'href="{PUBLIC_URL}?prompt=Hello+there' in open_link, open_link
    assert "embed=" not in open_link


def test_caches_land_in_the_cache_folder_not_the_app_folder(space):
    from axon_core.paths import SPACE_PERSISTENT_DIR as data

    # /data/axon if this machine has persistent storage, else the (fresh) user cache folder.
    if data.is_dir() and os.access(data, os.W_OK | os.X_OK):
        expected = data / "axon"
    else:
        expected = space.tmp / "user-cache" / "axon"
    labels = expected / "labels.sqlite"
    assert labels.is_file() and labels.stat().st_size > 0, sorted(map(str, expected.parent.rglob("*")))
    assert list(expected.glob("catalogue*.pickle")), sorted(map(str, expected.rglob("*")))


def test_nothing_written_into_the_app_folder(space):
    # The last test on this server: stop it first, so that shutdown writes count too.
    space.stop()
    after = tree_snapshot(space.app_dir)
    changed = sorted(p for p in after if space.before.get(p) != after[p])
    assert not changed, f"the app wrote into its folder: {changed}"


# ---- where caches go, in process --------------------------------------------------


def test_cache_dir_order(tmp_path, monkeypatch):
    from axon_core import paths

    data = tmp_path / "data"
    assert paths.cache_dir({"AXON_CACHE_DIR": str(tmp_path / "x")}, persistent=data) == tmp_path / "x"
    # No persistent storage (no /data): the user cache folder, on a Space or not.
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "user"))
    assert paths.cache_dir({"SYSTEM": "spaces"}, persistent=data) == tmp_path / "user" / "axon"
    data.mkdir()
    assert paths.cache_dir({"SYSTEM": "spaces"}, persistent=data) == data / "axon"
    assert paths.cache_dir({}, persistent=data) == tmp_path / "user" / "axon"  # not a Space
    assert paths.cache_dir({"SYSTEM": "spaces", "AXON_CACHE_DIR": str(tmp_path / "x")},
                           persistent=data) == tmp_path / "x"
    data.chmod(0o500)
    try:
        # /data not writable: the user cache folder. Root may write anywhere (os.access says yes), so
        # access is read from the permission bits, as a Space's user meets them: checked as root too.
        real = os.access
        monkeypatch.setattr(paths.os, "access", lambda p, mode: real(p, mode) and (
            not mode & os.W_OK or bool(os.stat(p).st_mode & 0o200)))
        assert not paths.os.access(data, os.W_OK)
        assert paths.cache_dir({"SYSTEM": "spaces"}, persistent=data) == tmp_path / "user" / "axon"
    finally:
        data.chmod(0o700)


@pytest.fixture
def space_with_storage(tmp_path, monkeypatch):
    """This process as a Space whose persistent storage is ``tmp_path/data``."""
    from axon_core import paths

    data = tmp_path / "data"
    data.mkdir()
    monkeypatch.setattr(paths, "SPACE_PERSISTENT_DIR", data)
    monkeypatch.setenv("SYSTEM", "spaces")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "user"))
    for name in ("AXON_CACHE_DIR", "AXON_LABEL_CACHE"):
        monkeypatch.delenv(name, raising=False)
    return data


def test_label_cache_goes_to_persistent_storage(space_with_storage):
    from axon_core.labels import LabelService

    with LabelService(enabled=False) as svc:
        assert svc.cache_path == space_with_storage / "axon" / "labels.sqlite"
        assert svc.cache_path.is_file()


def test_catalogue_cache_goes_to_persistent_storage(space_with_storage):
    from axon_core import catalogue

    catalogue.load_catalogue.cache_clear()
    try:
        catalogue.load_catalogue()
        assert list((space_with_storage / "axon").glob("catalogue*.pickle"))
    finally:
        catalogue.load_catalogue.cache_clear()


# ---- ZeroGPU's decorator, off ZeroGPU ----------------------------------------------


def test_spaces_gpu_generator_streams_off_zerogpu():
    """``@spaces.GPU`` on a generator behind a Gradio queue: the client gets the
    first frame while the generator is still blocked, i.e. frames stream."""
    import gradio as gr
    import spaces

    assert not os.environ.get("SPACES_ZERO_GPU")
    release, finished = threading.Event(), threading.Event()

    @spaces.GPU(duration=30)
    def stream(n):
        for i in range(int(n)):
            yield f"frame {i}"
            if i == 0:
                release.wait(30)
        finished.set()

    def plain():
        return None

    assert spaces.GPU(duration=30)(plain) is plain  # off ZeroGPU the decorator is the identity
    with gr.Blocks() as demo:
        n = gr.Number(3)
        out = gr.Textbox()
        gr.Button().click(stream, n, out, api_name="stream")
    port = free_port()
    demo.queue().launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True,
                        quiet=True, ssr_mode=False)
    try:
        client = gradio_client.Client(f"http://127.0.0.1:{port}/", verbose=False)
        job = client.submit(3, api_name="/stream")
        deadline = time.monotonic() + 30
        while not job.outputs() and time.monotonic() < deadline:
            time.sleep(0.05)
        first = list(job.outputs())
        still_running = not finished.is_set()
        release.set()
        assert first and first[0] == "frame 0", first
        assert still_running, "the generator had finished before its first frame arrived"
        assert job.result(timeout=30) == "frame 2"
    finally:
        release.set()
        demo.close()


def test_what_crosses_zerogpus_process_boundary_pickles(app_module):
    """On ZeroGPU a ``@spaces.GPU`` generator runs in a forked worker and every
    value it yields is pickled back to the server process (spaces.zero.wrappers:
    a PicklingError ends the run with "ZeroGPU worker error"). The app's GPU
    function (``gpu_steps``) yields plain TokenSteps: each must pickle, and they
    must be the run itself."""
    from axon_core.generation import GenerationSettings, generate

    app = app_module
    settings = GenerationSettings(max_new_tokens=4, seed=5)
    steps = list(app.HANDLERS.gpu_steps("gpt2-small-res-jb", "blocks.8.hook_resid_pre", "The capital of France is", settings))
    assert [pickle.loads(pickle.dumps(s)) for s in steps] == steps
    pair = app.SERVICES.pairs.get("gpt2-small-res-jb", "blocks.8.hook_resid_pre")
    assert steps == list(generate(pair, "The capital of France is", settings))


def test_zerogpu_path_streams_the_same_run_as_the_engine(app_module, monkeypatch):
    """The ZeroGPU path (each view computes its run inside one GPU call, frames
    drawn outside it) streams several frames and ends with the same run JSON as
    the engine's path; steering works there too."""
    app = app_module
    args = GENERATE_ARGS[:8] + [120, 21] + GENERATE_ARGS[10:]
    with contextlib.redirect_stdout(io.StringIO()):
        engine_run = list(app.HANDLERS.run_generation(*args))[-1][5]
        engine_steered = list(app.HANDLERS.run_generation(*args[:12], "3:40", "npmi"))[-1]
        monkeypatch.setattr(app.SERVICES.settings, "zero_gpu", True)
        frames = list(app.HANDLERS.run_generation(*args))
        steered = list(app.HANDLERS.run_generation(*args[:12], "3:40", "npmi"))[-1]
    got, want = frames[-1][5]["tokens"], engine_run["tokens"]
    assert len(frames) >= 2 and len(got) == len(want)
    for a, b in zip(got, want):  # the same run (values to float rounding: thread counts may differ)
        assert (a["token_id"], [f["index"] for f in a["features"]]) == (b["token_id"], [f["index"] for f in b["features"]])
        assert all(abs(f["activation"] - g["activation"]) <= 1e-4 * max(1.0, abs(g["activation"]))
                   for f, g in zip(a["features"], b["features"]))
    # steering on ZeroGPU: the engine's steered run, token for token, and its comparison with the plain run
    assert steered[5]["meta"]["steer"] == engine_steered[5]["meta"]["steer"] and steered[5]["meta"]["steer"]
    assert [t["token_id"] for t in steered[5]["tokens"]] == [t["token_id"] for t in engine_steered[5]["tokens"]]
    assert "axon-compare" in steered[9] and steered[9] == engine_steered[9]


def _picklable(value) -> bool:
    try:
        pickle.dumps(value)
        return True
    except Exception:  # noqa: BLE001
        return False


# ---- the Space's front matter --------------------------------------------------------


def front_matter() -> dict:
    import yaml

    text = (ROOT / "README.md").read_text()
    assert text.startswith("---\n")
    return yaml.safe_load(text.split("---\n", 2)[1])


def test_front_matter_preloads_what_the_default_pair_loads(offline_hub):
    from sae_lens.constants import SAE_CFG_FILENAME, SAE_WEIGHTS_FILENAME, SPARSITY_FILENAME
    from sae_lens.loading.pretrained_saes_directory import get_pretrained_saes_directory

    from axon_core.catalogue import DEFAULT_RELEASE, DEFAULT_SAE_ID

    front = front_matter()
    preload = {}
    for entry in front["preload_from_hub"]:
        repo, files = entry.split()  # "repo file,file" (no revision pinned)
        preload[repo] = set(files.split(","))
    # The model: by the repo name TransformerLens asks the Hub for (the offline hub,
    # which serves loading by real names, has it under that name), every file it serves.
    model_snapshots = list((offline_hub / "models--gpt2" / "snapshots").iterdir())
    served = {p.name for snap in model_snapshots for p in snap.iterdir()}
    assert served <= preload["gpt2"], served - preload["gpt2"]
    assert {"model.safetensors", "config.json", "tokenizer.json"} <= preload["gpt2"]
    # The SAE: SAELens's repo and folder for the default release, and its file names.
    lookup = get_pretrained_saes_directory()[DEFAULT_RELEASE]
    folder = lookup.saes_map[DEFAULT_SAE_ID]
    expected = {f"{folder}/{name}" for name in (SAE_CFG_FILENAME, SAE_WEIGHTS_FILENAME, SPARSITY_FILENAME)}
    assert preload[lookup.repo_id] == expected
    sae_dir = offline_hub / ("models--" + lookup.repo_id.replace("/", "--")) / "snapshots"
    assert {f"{folder}/{p.name}" for p in sae_dir.glob(f"*/{folder}/*")} <= expected
    assert set(preload) == {"gpt2", lookup.repo_id}


def test_front_matter_matches_this_environment():
    import gradio

    front = front_matter()
    assert front["sdk"] == "gradio" and front["app_file"] == "app.py"
    assert front["sdk_version"] == gradio.__version__
    # requirements.txt pins the Gradio the Space runs, so a fresh install gets the version
    # this check (and tests/test_gradio_state.py's growth) was made for.
    pins = [line.strip() for line in (ROOT / "requirements.txt").read_text().splitlines()
            if line.strip().startswith("gradio")]
    assert pins == [f"gradio=={front['sdk_version']}"], pins
    assert str(front["python_version"]) == f"{sys.version_info.major}.{sys.version_info.minor}"
    assert front["suggested_hardware"] in {"cpu-basic", "cpu-upgrade"}  # what the README's numbers are for
    assert re.fullmatch(r"\d+[mh]", str(front["startup_duration_timeout"]))

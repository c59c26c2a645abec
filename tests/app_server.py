"""Start ``python app.py`` as a real server for end-to-end tests.

The app runs on the tiny offline hub (``AXON_OFFLINE_HUB``), with Neuronpedia
pointed at a :class:`~neuronpedia_fake.FakeNeuronpedia` and a private label
cache, on a free port of 127.0.0.1::

    with AppServer(hub_dir, neuronpedia=fake) as app:
        Client(app.url) ...

``bind_all=True`` starts it the way a Gradio Space does instead: no
``AXON_HOST``/``AXON_PORT``, but ``GRADIO_SERVER_NAME=0.0.0.0`` and
``GRADIO_SERVER_PORT`` (the test still talks to 127.0.0.1 only). In ``env``, a
value of ``None`` removes that variable from the app's environment.
``app_dir`` runs ``app.py`` from another folder (a copy of the repository), as
its working directory. ``started_in`` is the seconds from launch to the first page served.

``app.client()`` is a ``gradio_client.Client`` of this server that :meth:`stop`
closes before it stops the server: Gradio's shutdown waits up to 5 s for open
connections, and a client's heartbeat stream stays open until the server's next
heartbeat after ``close()``. The server sends one every
``GRADIO_HEARTBEAT_INTERVAL`` = 0.5 s here (Gradio's default is 15 s; what it
changes is how soon a closed client's session is let go, so a closed client's
stream ends at once).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class AppServer:
    def __init__(self, hub: Path, neuronpedia=None, env: dict | None = None, log_dir: Path | None = None,
                 startup_timeout: float = 180.0, bind_all: bool = False, app_dir: Path | None = None):
        self.port = free_port()
        self.bind_all = bind_all
        self.app_dir = Path(app_dir) if app_dir is not None else ROOT
        self.started_in: float | None = None
        self.url = f"http://127.0.0.1:{self.port}/"
        self.hub, self.neuronpedia, self.startup_timeout = Path(hub), neuronpedia, startup_timeout
        self.log_path = (log_dir or Path(os.environ.get("TMPDIR", "/tmp"))) / f"axon-app-{self.port}.log"
        self.extra_env = env or {}
        self.proc: subprocess.Popen | None = None
        self.clients: list = []

    def client(self, **kw):
        """A ``gradio_client.Client`` of this server (closed by :meth:`stop`)."""
        import gradio_client

        kw.setdefault("verbose", False)
        kw.setdefault("download_files", False)
        c = gradio_client.Client(self.url, **kw)
        self.clients.append(c)
        return c

    def environment(self) -> dict:
        env = {k: v for k, v in os.environ.items() if not k.startswith("HF_HUB")}
        env.update(
            AXON_OFFLINE_HUB=str(self.hub),
            AXON_LABEL_CACHE=str(self.log_path.with_suffix(".labels.sqlite")),
            GRADIO_ANALYTICS_ENABLED="False", PYTHONUNBUFFERED="1", GRADIO_HEARTBEAT_INTERVAL="0.5",
        )
        if self.bind_all:  # as a Space: Gradio's own variables, all interfaces
            for name in ("AXON_HOST", "AXON_PORT"):
                env.pop(name, None)
            env.update(GRADIO_SERVER_NAME="0.0.0.0", GRADIO_SERVER_PORT=str(self.port))
        else:
            env.update(AXON_PORT=str(self.port), AXON_HOST="127.0.0.1")
        if self.neuronpedia is not None:
            env["AXON_NEURONPEDIA_URL"] = self.neuronpedia.url
            env["AXON_NEURONPEDIA_DATASETS_URL"] = self.neuronpedia.datasets_url
        env.update(self.extra_env)
        return {k: v for k, v in env.items() if v is not None}

    def start(self) -> "AppServer":
        self.log = open(self.log_path, "w")
        launched = time.monotonic()
        self.proc = subprocess.Popen([sys.executable, str(self.app_dir / "app.py")], cwd=self.app_dir, env=self.environment(),
                                     stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"app exited with {self.proc.returncode}:\n{self.log_text()[-3000:]}")
            try:
                with urllib.request.urlopen(self.url, timeout=2) as r:
                    if r.status == 200:
                        self.started_in = time.monotonic() - launched
                        return self
            except OSError:
                time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"app did not start in {self.startup_timeout:.0f} s:\n{self.log_text()[-3000:]}")

    def log_text(self) -> str:
        try:
            return self.log_path.read_text()
        except OSError:
            return ""

    def stop(self) -> None:
        # the clients' streams closed first (all at once: each ends at the next heartbeat),
        # so that the server then stops at once
        closing = [threading.Thread(target=c.close) for c in self.clients]
        for t in closing:
            t.start()
        for t in closing:
            t.join()
        self.clients.clear()
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        if getattr(self, "log", None):
            self.log.close()

    def __enter__(self) -> "AppServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

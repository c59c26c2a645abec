"""A local fake of Neuronpedia's feature API and its S3 datasets bucket, for tests.

Real HTTP on 127.0.0.1 (a free port), in a background thread::

    with FakeNeuronpedia(labels={("gpt2-small/8-res-jb", 5): "European capitals"}) as fake:
        svc = LabelService(base_url=fake.url, datasets_url=fake.datasets_url, ...)
        fake.mode = "slow"; fake.delay = 2.0          # every answer now takes 2 s
        fake.requests[fake.feature_path("gpt2-small/8-res-jb", 5)]   # hits on that path

``labels`` maps (np_id, index) to a description, a list of descriptions (best
first) or None (the feature exists but has no explanations); anything else is a
404. ``batches`` maps np_id to a list of batches, each a list of (index,
description) pairs or raw JSON-lines dicts; they are served gzip-compressed at
``{datasets_url}/v1/{np_id}/explanations/batch-N.jsonl.gz``, and the bucket
answers S3 ``?list-type=2&prefix=`` listings.

Modes (``fake.mode``), applied to every request:
``normal``, ``slow`` (sleep ``delay`` s, then answer normally), ``error``
(status ``error_status``, default 500), ``ratelimit`` (429 with ``Retry-After:
{retry_after}``), ``garbage`` (200 with a non-JSON body), ``close`` (drop the
connection without answering), ``hold`` (keep every request waiting, counted
in ``fake.held``, until ``fake.let_go()``: a test then knows a request is in
flight and unanswered for as long as it likes, with no sleeps).
``fail_next(path, times, status)`` fails one path only, ``times`` times.
"""

from __future__ import annotations

import collections
import gzip
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Iterable, Mapping
from urllib.parse import parse_qs, unquote, urlsplit
from xml.sax.saxutils import escape

MODES = ("normal", "slow", "error", "ratelimit", "garbage", "close", "hold")
DATASETS_PREFIX = "/datasets"


class FakeNeuronpedia:
    def __init__(
        self,
        labels: Mapping[tuple[str, int], str | list[str] | None] | None = None,
        batches: Mapping[str, list[Iterable[Any]]] | None = None,
        *,
        list_bucket: bool = True,
    ):
        self.labels: dict[tuple[str, int], str | list[str] | None] = dict(labels or {})
        self.list_bucket = list_bucket
        self.delay = 2.0
        self.error_status = 500
        self.retry_after: str | None = "30"
        self.requests: collections.Counter[str] = collections.Counter()  # path -> hits
        self.arrivals: list[tuple[float, str]] = []  # (time.monotonic(), path)
        self.headers: dict[str, dict[str, str]] = {}  # path -> last request's headers, lower-case keys
        self._mode = "normal"
        self._batches: dict[str, list[bytes]] = {}
        self._fail: dict[str, list[int]] = {}
        self._lock = threading.Lock()
        self._gate = threading.Event()  # set: held requests go on (answered normally)
        self.held = 0  # requests waiting in "hold" mode now
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._port: int | None = None
        for np_id, rows in (batches or {}).items():
            self.set_batches(np_id, rows)

    # ---- control -----------------------------------------------------------

    @property
    def mode(self) -> str:
        return self._mode

    @mode.setter
    def mode(self, value: str) -> None:
        if value not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {value!r}")
        if value == "hold":
            self._gate.clear()
        self._mode = value

    def let_go(self) -> None:
        """Answer every held request (normally) and hold no more: mode becomes ``normal``."""
        self._mode = "normal"
        self._gate.set()

    def wait_held(self, n: int = 1, timeout: float = 30.0) -> bool:
        """Block until at least ``n`` requests are held."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if self.held >= n:
                return True
            time.sleep(0.005)
        return self.held >= n

    def set_batches(self, np_id: str, batches: list[Iterable[Any]]) -> None:
        model_id, source_id = np_id.split("/", 1)
        files = []
        for batch in batches:
            lines = []
            for item in batch:
                if isinstance(item, dict):
                    row = item
                else:
                    index, desc = item
                    row = {
                        "modelId": model_id, "layer": source_id, "index": str(index),
                        "description": desc, "explanationModelName": "fake-model",
                        "typeName": "oai_token-act-pair", "authorId": "fake",
                    }
                lines.append(json.dumps(row))
            files.append(gzip.compress(("\n".join(lines) + "\n").encode()))
        with self._lock:
            self._batches[np_id] = files

    def fail_next(self, path: str, times: int = 1, status: int = 500) -> None:
        """Answer the next ``times`` requests for ``path`` with ``status``
        (0: drop the connection)."""
        with self._lock:
            self._fail.setdefault(path, []).extend([status] * times)

    def reset_counts(self) -> None:
        with self._lock:
            self.requests.clear()
            self.arrivals.clear()
            self.headers.clear()

    def count(self, prefix: str = "") -> int:
        """Total hits on paths starting with ``prefix``."""
        with self._lock:
            return sum(n for p, n in self.requests.items() if p.startswith(prefix))

    @staticmethod
    def feature_path(np_id: str, index: int) -> str:
        return f"/api/feature/{np_id}/{index}"

    @staticmethod
    def batch_path(np_id: str, batch: int) -> str:
        return f"{DATASETS_PREFIX}/v1/{np_id}/explanations/batch-{batch}.jsonl.gz"

    # ---- lifecycle ---------------------------------------------------------

    @property
    def port(self) -> int:
        """The port; still answers after stop(), so clients then get "connection refused"."""
        assert self._port is not None, "not started"
        return self._port

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def datasets_url(self) -> str:
        return f"{self.url}{DATASETS_PREFIX}"

    def start(self) -> FakeNeuronpedia:
        server = _Server(("127.0.0.1", 0), _Handler)
        server.fake = self  # type: ignore[attr-defined]
        self._server = server
        self._port = server.server_address[1]
        self._thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._gate.set()  # no handler thread stays held
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> FakeNeuronpedia:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # ---- answers -----------------------------------------------------------

    def _answer(self, path: str, query: dict[str, list[str]]) -> tuple[int, bytes, str]:
        if path.startswith("/api/feature/"):
            parts = path[len("/api/feature/"):].split("/")
            if len(parts) == 3 and parts[2].isdigit():
                np_id, index = f"{parts[0]}/{parts[1]}", int(parts[2])
                if (np_id, index) in self.labels:
                    return 200, json.dumps(self._feature_json(np_id, index)).encode(), "application/json"
            return 404, b'{"message":"Feature not found"}', "application/json"
        if path == f"{DATASETS_PREFIX}/" and "list-type" in query and self.list_bucket:
            return 200, self._listing(query.get("prefix", [""])[0]).encode(), "application/xml"
        if path.startswith(f"{DATASETS_PREFIX}/v1/"):
            head, sep, name = path[len(DATASETS_PREFIX) + 4:].rpartition("/explanations/")
            if sep and name.startswith("batch-") and name.endswith(".jsonl.gz"):
                n = name[len("batch-"):-len(".jsonl.gz")]
                files = self._batches.get(head, [])
                if n.isdigit() and int(n) < len(files):
                    return 200, files[int(n)], "application/gzip"
        return 403 if path.startswith(DATASETS_PREFIX) else 404, b"<Error>AccessDenied</Error>", "application/xml"

    def _feature_json(self, np_id: str, index: int) -> dict:
        model_id, source_id = np_id.split("/", 1)
        value = self.labels[(np_id, index)]
        descs = [] if value is None else [value] if isinstance(value, str) else list(value)
        return {
            "modelId": model_id, "layer": source_id, "index": str(index),
            "explanations": [
                {"description": d, "explanationModelName": "fake-model", "typeName": "oai_token-act-pair",
                 "authorId": "fake", "scores": []}
                for d in descs
            ],
            "activations": [], "maxActApprox": 1.0, "neuron_alignment_indices": [],
        }

    def _listing(self, prefix: str) -> str:
        keys = [
            f"v1/{np_id}/explanations/batch-{n}.jsonl.gz"
            for np_id, files in self._batches.items()
            for n in range(len(files))
        ]
        keys = [k for k in keys if k.startswith(prefix)]
        contents = "".join(f"<Contents><Key>{escape(k)}</Key></Contents>" for k in keys)
        return (
            '<?xml version="1.0" encoding="UTF-8"?><ListBucketResult>'
            f"<Name>neuronpedia-datasets</Name><Prefix>{escape(prefix)}</Prefix>"
            f"<KeyCount>{len(keys)}</KeyCount><IsTruncated>false</IsTruncated>{contents}</ListBucketResult>"
        )


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # clients that time out and hang up are part of the tests


class _Handler(BaseHTTPRequestHandler):
    server_version = "FakeNeuronpedia/1"

    def do_GET(self) -> None:  # noqa: N802
        fake: FakeNeuronpedia = self.server.fake  # type: ignore[attr-defined]
        split = urlsplit(self.path)
        path = unquote(split.path)
        with fake._lock:
            fake.requests[path] += 1
            fake.arrivals.append((time.monotonic(), path))
            fake.headers[path] = {k.lower(): v for k, v in self.headers.items()}
            forced = fake._fail[path].pop(0) if fake._fail.get(path) else None
            mode = fake.mode
        if forced is not None:
            return self._drop() if forced == 0 else self._send(forced, b'{"message":"forced failure"}')
        if mode == "slow":
            time.sleep(fake.delay)
        elif mode == "hold":
            with fake._lock:
                fake.held += 1
            fake._gate.wait()
            with fake._lock:
                fake.held -= 1
        elif mode == "error":
            return self._send(fake.error_status, b'{"message":"Internal Server Error"}')
        elif mode == "ratelimit":
            extra = {"Retry-After": fake.retry_after} if fake.retry_after is not None else {}
            return self._send(429, b'{"message":"Too many requests"}', headers=extra)
        elif mode == "garbage":
            return self._send(200, b"\x00\xff<html>not json {{{", "application/json")
        elif mode == "close":
            return self._drop()
        status, body, ctype = fake._answer(path, parse_qs(split.query))
        self._send(status, body, ctype)

    def _send(self, status: int, body: bytes, ctype: str = "application/json", headers: Mapping[str, str] = {}) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        for k, v in headers.items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body)

    def _drop(self) -> None:
        self.close_connection = True

    def log_message(self, format: str, *args: Any) -> None:  # keep test output quiet
        pass

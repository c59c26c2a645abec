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

``set_bulk(np_id, folder, batches)`` serves the other bulk folders the same
way (``features/``, ``activations/``: raw dicts, keyed on their own
``index``, string or int); listings cover every folder.

``POST /api/explanation/search`` (``{modelId, layers, query, offset}``) answers
like Neuronpedia's semantic search: 20 results a page from ``search_results``
(query → list of ``(np_id, index, description, cosine)``), else every known
label sharing a word (3+ letters) with the query. ``search_limit`` search
requests are answered (then a 429 with Neuronpedia's body); ``bodies`` records
each POST's JSON. ``gate[prefix] = threading.Event()`` holds every answer on
paths starting with ``prefix`` until the event is set. ``feature_extra[(np_id, index)]`` is merged into that
feature's ``/api/feature`` answer: ``activations`` (top examples: ``tokens``, ``values``, ``maxValue``,
``maxValueTokenIndex``), logit lens (``pos_str``/``pos_values``, ``neg_str``/``neg_values``), density
(``frac_nonzero``), ``maxActApprox`` (see tests/test_evidence.py's ``feature_json``).

Modes (``fake.mode``), applied to every request:
``normal``, ``slow`` (sleep ``delay`` s, then answer normally), ``error``
(status ``error_status``, default 500), ``ratelimit`` (429 with ``Retry-After:
{retry_after}`` and Neuronpedia's JSON body), ``garbage`` (200 with a non-JSON
body), ``close`` (drop the connection without answering), ``hold`` (keep every
request waiting, counted in ``fake.held``, until ``fake.let_go()``: a test then
knows a request is in flight and unanswered for as long as it likes, with no sleeps).
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
FOLDERS = ("explanations", "features", "activations")
SEARCH_PATH = "/api/explanation/search"
SEARCH_PAGE = 20


def rate_limit_body(endpoint: str, limit: int, remaining: int = 0) -> bytes:
    """Neuronpedia's 429 body (its rate limiter's own fields)."""
    return json.dumps({"endpoint": endpoint, "limitPerWindow": limit, "requestWindow": "60 minutes",
                       "remainingRequests": remaining,
                       "error": f"Rate limit exceeded for {endpoint}. Try again later."}).encode()


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
        self._batches: dict[tuple[str, str], list[bytes]] = {}  # (np_id, folder) -> gzip'd files
        self.search_results: dict[str, list[tuple[str, int, str, float]]] = {}
        self.search_limit = 200
        self.bodies: list[tuple[str, Any]] = []  # (path, JSON body) of each POST
        self.feature_extra: dict[tuple[str, int], dict] = {}
        self._stopped = False
        self.peers: set[tuple] = set()  # (host, port) of each connection seen: kept-alive ones count once
        self.gate: dict[str, threading.Event] = {}  # path prefix -> answers wait until it is set (10 s at most)
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
        self.set_bulk(np_id, "explanations", batches)

    def set_bulk(self, np_id: str, folder: str, batches: list[Iterable[Any]]) -> None:
        assert folder in FOLDERS, folder
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
            self._batches[(np_id, folder)] = files

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
    def batch_path(np_id: str, batch: int, folder: str = "explanations") -> str:
        return f"{DATASETS_PREFIX}/v1/{np_id}/{folder}/batch-{batch}.jsonl.gz"

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
        self._stopped = False
        server = _Server(("127.0.0.1", 0), _Handler)
        server.fake = self  # type: ignore[attr-defined]
        self._server = server
        self._port = server.server_address[1]
        self._thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopped = True  # kept-alive connections get no more answers either
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
            head, _, name = path[len(DATASETS_PREFIX) + 4:].rpartition("/")
            np_id, _, folder = head.rpartition("/")
            if folder in FOLDERS and name.startswith("batch-") and name.endswith(".jsonl.gz"):
                n = name[len("batch-"):-len(".jsonl.gz")]
                files = self._batches.get((np_id, folder), [])
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
            # the feature row's other fields as Neuronpedia answers them: arrays default to [], density 0 (unknown)
            "activations": [], "maxActApprox": 1.0, "neuron_alignment_indices": [],
            "pos_str": [], "pos_values": [], "neg_str": [], "neg_values": [], "frac_nonzero": 0,
            "freq_hist_data_bar_heights": [], "freq_hist_data_bar_values": [],
            "logits_hist_data_bar_heights": [], "logits_hist_data_bar_values": [],
            "topkCosSimIndices": [], "topkCosSimValues": [], "hasVector": False,
            **self.feature_extra.get((np_id, index), {}),
        }

    def all_labels(self) -> dict[tuple[str, int], str]:
        """Every (np_id, index) → first description this fake knows (API and explanation batches)."""
        out: dict[tuple[str, int], str] = {}
        with self._lock:
            files = {k: v for k, v in self._batches.items() if k[1] == "explanations"}
        for (np_id, _), blobs in files.items():
            for blob in blobs:
                for line in gzip.decompress(blob).splitlines():
                    row = json.loads(line)
                    out.setdefault((np_id, int(row["index"])), row.get("description") or "")
        for key, value in self.labels.items():
            descs = [] if value is None else [value] if isinstance(value, str) else list(value)
            if descs:
                out.setdefault(key, descs[0])
        return out

    def _search(self, body: Any) -> tuple[int, bytes, str]:
        if not isinstance(body, dict) or not isinstance(body.get("query"), str) or len(body["query"]) < 3:
            return 400, b'{"error":"query must be at least 3 characters"}', "application/json"
        model_id, layers, query = body.get("modelId"), body.get("layers") or [], body["query"]
        offset = int(body.get("offset") or 0)
        if query in self.search_results:
            hits = self.search_results[query]
        else:
            words = {w for w in "".join(c if c.isalnum() else " " for c in query.lower()).split() if len(w) >= 3}
            hits = [(np_id, i, d, 0.5) for (np_id, i), d in sorted(self.all_labels().items())
                    if words & set("".join(c if c.isalnum() else " " for c in d.lower()).split())]
        hits = [h for h in hits if h[0].split("/", 1)[0] == model_id and h[0].split("/", 1)[1] in layers]
        page = hits[offset: offset + SEARCH_PAGE]
        results = [{"modelId": np_id.split("/", 1)[0], "layer": np_id.split("/", 1)[1], "index": str(i),
                    "description": d, "cosine_similarity": cos, "neuron": {}} for np_id, i, d, cos in page]
        more = offset + SEARCH_PAGE < len(hits)
        return 200, json.dumps({"request": body, "results": results, "resultsCount": len(hits), "hasMore": more,
                                "nextOffset": offset + SEARCH_PAGE if more else None}).encode(), "application/json"

    def _listing(self, prefix: str) -> str:
        keys = [
            f"v1/{np_id}/{folder}/batch-{n}.jsonl.gz"
            for (np_id, folder), files in self._batches.items()
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
    protocol_version = "HTTP/1.1"  # keep-alive, as Neuronpedia and S3 (every answer has a Content-Length)

    def do_POST(self) -> None:  # noqa: N802
        self.do_GET(post=True)

    def do_GET(self, post: bool = False) -> None:  # noqa: N802
        fake: FakeNeuronpedia = self.server.fake  # type: ignore[attr-defined]
        if fake._stopped:
            return self._drop()
        split = urlsplit(self.path)
        path = unquote(split.path)
        body: Any = None
        if post:
            raw = self.rfile.read(min(int(self.headers.get("Content-Length") or 0), 1 << 20))
            try:
                body = json.loads(raw)
            except ValueError:
                body = raw
        with fake._lock:
            searches = fake.requests[SEARCH_PATH]
            if post:
                fake.bodies.append((path, body))
            fake.requests[path] += 1
            fake.peers.add(self.client_address)
            fake.arrivals.append((time.monotonic(), path))
            fake.headers[path] = {k.lower(): v for k, v in self.headers.items()}
            forced = fake._fail[path].pop(0) if fake._fail.get(path) else None
            mode = fake.mode
        for prefix, event in list(fake.gate.items()):
            if path.startswith(prefix):
                event.wait(10.0)
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
            return self._send(429, rate_limit_body("/api", 25000), headers=extra)
        elif mode == "garbage":
            return self._send(200, b"\x00\xff<html>not json {{{", "application/json")
        elif mode == "close":
            return self._drop()
        if post and path == SEARCH_PATH:
            if searches >= fake.search_limit:
                return self._send(429, rate_limit_body("/api/explanation/search", fake.search_limit))
            status, out, ctype = fake._search(body)
        elif post:
            status, out, ctype = 404, b'{"error":"not found"}', "application/json"
        else:
            status, out, ctype = fake._answer(path, parse_qs(split.query))
        self._send(status, out, ctype)

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

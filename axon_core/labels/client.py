"""Neuronpedia over HTTP: one feature's label, one bulk batch, how many batches there are.

All requests go through one pooled ``httpx.Client`` per client (timeouts,
kept-alive connections, httpx's retry of connections that fail to open).

Sources: ``GET {base}/api/feature/{modelId}/{sourceId}/{index}`` (first
``explanations[].description``), ``POST {base}/api/explanation/search`` (by
meaning), and for bulk the gzip JSON-lines batches
``{datasets}/v1/{modelId}/{sourceId}/explanations/batch-N.jsonl.gz``, listed
by an S3 ListObjectsV2 call. Errors worth retrying raise
:class:`LabelFetchError` (a 429: :class:`RateLimited`, with its
``Retry-After``); "no such feature" and "no label" are ``None``.

Worked example::

    client = NeuronpediaClient()                       # env-var defaults, see the package doc
    client.fetch_feature("gpt2-small/8-res-jb", 4821)  # 'European capitals' (None: it has no label)
    client.count_batches("gpt2-small/8-res-jb")        # 24 (None: the bucket cannot be listed)
    client.download_batch("gpt2-small/8-res-jb", 0)    # {0: '...', 1: '...', ...}; None past the last
"""

from __future__ import annotations

import email.utils
import gzip
import io
import json
import os
import re
import time
import urllib.parse
from typing import Mapping

import httpx

DEFAULT_BASE_URL = "https://www.neuronpedia.org"
DEFAULT_DATASETS_URL = "https://neuronpedia-datasets.s3.us-east-1.amazonaws.com"
USER_AGENT = "axon-labels/1"

class LabelFetchError(RuntimeError):
    """A fetch failed in a way worth retrying later."""


class RateLimited(LabelFetchError):
    def __init__(self, retry_after: float):
        super().__init__(f"HTTP 429, retry after {retry_after:.0f} s")
        self.retry_after = retry_after


class PrefetchError(LabelFetchError):
    """A bulk batch could not be downloaded; finished batches are kept."""


def split_np_id(np_id: str) -> tuple[str, str]:
    model_id, _, source_id = np_id.partition("/")
    if not model_id or not source_id or "/" in source_id:
        raise ValueError(f"Neuronpedia id must look like 'gpt2-small/8-res-jb', got {np_id!r}")
    return model_id, source_id


MAX_ANSWER = 4 << 20  # bytes of an API answer read at most
MAX_BATCH = 256 << 20  # bytes of a bulk batch read at most


def _http_client(timeout: float) -> httpx.Client:
    """The one pooled HTTP client of a :class:`NeuronpediaClient`: kept-alive
    connections, a connect/read timeout, and httpx's own retry (with back-off)
    of connections that fail to open."""
    return httpx.Client(
        timeout=httpx.Timeout(timeout, connect=min(timeout, 5.0)),
        limits=httpx.Limits(max_connections=16, max_keepalive_connections=8),
        transport=httpx.HTTPTransport(retries=1),
        headers={"User-Agent": USER_AGENT},
        follow_redirects=True,
    )


def _read(http: httpx.Client, method: str, url: str, *, headers: Mapping[str, str] | None = None,
          json_body: dict | None = None, timeout: float | None = None, max_bytes: int = MAX_ANSWER):
    """(status, body, headers): HTTP error statuses are returned; a network
    failure, a timeout or an answer over ``max_bytes`` raises :class:`LabelFetchError`."""
    kwargs: dict = {"headers": dict(headers or {})}
    if json_body is not None:
        kwargs["json"] = json_body
    if timeout is not None:
        kwargs["timeout"] = httpx.Timeout(timeout, connect=min(timeout, 5.0))
    try:
        with http.stream(method, url, **kwargs) as resp:
            chunks, size = [], 0
            for chunk in resp.iter_bytes():
                size += len(chunk)
                if size > max_bytes:
                    raise LabelFetchError(f"answer over {max_bytes >> 20} MB")
                chunks.append(chunk)
            return resp.status_code, b"".join(chunks), resp.headers
    except httpx.TimeoutException as e:
        raise LabelFetchError(f"{type(e).__name__}: timed out") from e
    except (httpx.HTTPError, httpx.InvalidURL) as e:
        raise LabelFetchError(f"{type(e).__name__}: {e}") from e


def _retry_after(value: str | None, default: float = 60.0) -> float:
    if not value:
        return default
    try:
        seconds = float(value)
    except ValueError:
        try:
            seconds = email.utils.parsedate_to_datetime(value).timestamp() - time.time()
        except (TypeError, ValueError):
            return default
    return min(max(seconds, 1.0), 3600.0)


def _parse_feature(data) -> str | None:
    """The best explanation of a ``/api/feature`` answer (parsed JSON), None if it has none."""
    if not isinstance(data, dict) or not isinstance(data.get("explanations"), list):
        raise ValueError("response has no 'explanations' list")
    for exp in data["explanations"]:
        desc = exp.get("description") if isinstance(exp, dict) else None
        if isinstance(desc, str) and desc.strip():
            return desc
    return None


def _parse_search(body: bytes) -> list[tuple[str, int, str, float]]:
    """The results of an explanation search answer; malformed entries are skipped."""
    data = json.loads(body)
    if not isinstance(data, dict) or not isinstance(data.get("results"), list):
        raise ValueError("response has no 'results' list")
    out = []
    for r in data["results"]:
        try:
            np_id = f"{r['modelId']}/{r['layer']}"
            split_np_id(np_id)
            out.append((np_id, int(r["index"]), str(r["description"]), float(r.get("cosine_similarity") or 0.0)))
        except (KeyError, TypeError, ValueError):
            continue
    return out


def _parse_batch(raw: bytes, source_id: str) -> dict[int, str]:
    """index -> first description in a (gzipped) JSON-lines explanations batch."""
    text = gzip.decompress(raw) if raw[:2] == b"\x1f\x8b" else raw
    out: dict[int, str] = {}
    lines = bad = 0
    for line in text.splitlines():
        if not line.strip():
            continue
        lines += 1
        try:
            row = json.loads(line)
            index, desc = int(row["index"]), row["description"]
        except (ValueError, TypeError, KeyError):
            bad += 1
            continue
        if row.get("layer", source_id) != source_id:
            continue
        if isinstance(desc, str) and desc.strip():
            out.setdefault(index, desc)
    if lines and bad == lines:
        raise ValueError("no line of the batch is an explanation record")
    return out


def iter_rows(raw: bytes):
    """The JSON objects of a (gzipped) JSON-lines file, read line by line; others skipped."""
    stream = gzip.GzipFile(fileobj=io.BytesIO(raw)) if raw[:2] == b"\x1f\x8b" else io.BytesIO(raw)
    for line in stream:
        if line.strip():
            try:
                row = json.loads(line)
            except ValueError:
                continue
            if isinstance(row, dict):
                yield row


def _quote(segment: str) -> str:
    return urllib.parse.quote(segment, safe="")


class NeuronpediaClient:
    """Blocking calls to Neuronpedia's API (``base_url``) and bulk bucket (``datasets_url``)."""

    def __init__(self, base_url: str | None = None, datasets_url: str | None = None, api_key: str | None = None,
                 timeout: float = 3.0):
        env = os.environ.get
        self.base_url = (base_url or env("AXON_NEURONPEDIA_URL") or DEFAULT_BASE_URL).rstrip("/")
        self.datasets_url = (
            datasets_url or env("AXON_NEURONPEDIA_DATASETS_URL") or DEFAULT_DATASETS_URL
        ).rstrip("/")
        self.api_key = api_key if api_key is not None else env("NEURONPEDIA_API_KEY") or None
        self.timeout = timeout
        self.http = _http_client(timeout)  # one pool for labels, search and bulk downloads

    def close(self) -> None:
        self.http.close()

    def fetch_feature(self, np_id: str, index: int) -> str | None:
        """One feature's label; None where Neuronpedia has none (or no such feature)."""
        record = self.fetch_record(np_id, index)
        return None if record is None else _parse_feature(record)

    def fetch_record(self, np_id: str, index: int) -> dict | None:
        """One feature's whole ``/api/feature`` answer (labels, examples, logit lens,
        density); None where there is no such feature. Raises :class:`RateLimited`
        on a 429, :class:`LabelFetchError` (or ValueError: not JSON) otherwise."""
        model_id, source_id = split_np_id(np_id)
        url = f"{self.base_url}/api/feature/{_quote(model_id)}/{_quote(source_id)}/{index}"
        headers = {"Accept": "application/json"}
        if self.api_key:
            headers["x-api-key"] = self.api_key
        status, body, resp_headers = _read(self.http, "GET", url, headers=headers)
        if status == 200:
            data = json.loads(body)
            if not isinstance(data, dict):
                raise ValueError("the feature answer is not a JSON object")
            return data
        if status == 404:
            return None
        if status == 429:
            raise RateLimited(_retry_after(resp_headers.get("Retry-After") if resp_headers else None))
        raise LabelFetchError(f"HTTP {status}")

    def search(self, model_id: str, source_ids: list[str], query: str) -> list[tuple[str, int, str, float]]:
        """Neuronpedia's explanation search (by meaning): the first page of
        (np_id, index, description, cosine similarity). Raises :class:`RateLimited`
        on a 429 (its window from the body), :class:`LabelFetchError` otherwise."""
        url = f"{self.base_url}/api/explanation/search"
        headers = {"Accept": "application/json"}
        if self.api_key:
            headers["x-api-key"] = self.api_key
        payload = {"modelId": model_id, "layers": list(source_ids), "query": query, "offset": 0}
        status, body, resp_headers = _read(self.http, "POST", url, headers=headers, json_body=payload)
        if status == 429:
            raise RateLimited(_retry_after(resp_headers.get("Retry-After") if resp_headers else None, 600.0))
        if status != 200:
            raise LabelFetchError(f"HTTP {status}")
        return _parse_search(body)

    def download_batch(self, np_id: str, batch: int, retries: int = 0,
                       timeout: float = 60.0) -> dict[int, str] | None:
        """Batch ``batch`` of ``np_id``'s explanations (index → label), tried
        ``retries + 1`` times; None where there is no such batch (403/404: past the last).
        Raises :class:`PrefetchError` when every try failed."""
        return self._download(np_id, "explanations", batch, retries, timeout,
                              lambda body: _parse_batch(body, split_np_id(np_id)[1]))

    def download_rows(self, np_id: str, folder: str, batch: int, retries: int = 0,
                      timeout: float = 60.0, keep=None) -> list | None:
        """Batch ``batch`` of another bulk folder (``features``, ``activations``):
        its JSON-lines records as dicts (each through ``keep`` where given, and
        dropped where that returns None: a big batch is never held whole),
        malformed lines skipped; None past the last."""
        def parse(body: bytes) -> list:
            rows = iter_rows(body) if keep is None else (keep(r) for r in iter_rows(body))
            return [r for r in rows if r is not None]

        return self._download(np_id, folder, batch, retries, timeout, parse)

    def _download(self, np_id: str, folder: str, batch: int, retries: int, timeout: float, parse):
        model_id, source_id = split_np_id(np_id)
        url = f"{self.datasets_url}/v1/{_quote(model_id)}/{_quote(source_id)}/{folder}/batch-{batch}.jsonl.gz"
        err: Exception | None = None
        for attempt in range(retries + 1):
            if attempt:
                time.sleep(min(30.0, 2.0**attempt))
            try:
                status, body, _ = _read(self.http, "GET", url, timeout=timeout, max_bytes=MAX_BATCH)
                if status in (403, 404):
                    return None
                if status != 200:
                    raise LabelFetchError(f"HTTP {status}")
                return parse(body)
            except (OSError, EOFError, ValueError, LabelFetchError) as e:  # network, gzip, JSON
                err = e
        raise PrefetchError(f"{url}: {type(err).__name__}: {err}") from err

    def count_batches(self, np_id: str, folder: str = "explanations") -> int | None:
        """Number of batch files of a bulk folder, from an S3 ListObjectsV2 call; None if unlistable."""
        prefix = f"v1/{np_id}/{folder}/"
        url = f"{self.datasets_url}/?list-type=2&prefix={urllib.parse.quote(prefix)}"
        try:
            status, body, _ = _read(self.http, "GET", url)
        except (LabelFetchError, ValueError):
            return None
        if status != 200 or b"<IsTruncated>true</IsTruncated>" in body:
            return None
        keys = re.findall(rb"<Key>([^<]*)</Key>", body)
        return sum(1 for k in keys if re.search(rb"/batch-\d+\.jsonl\.gz$", k)) or None

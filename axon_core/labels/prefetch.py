"""The bulk download: every published explanation batch of one SAE, each stored once, resumable.

Batches are numbered from 0 until the bucket answers 403/404. Each is stored
with a "done" mark in one transaction (by ``store_batch``), so an interrupted
prefetch resumes at the first missing batch; ``progress(done, total)`` hears
each (``total`` None where the bucket cannot be listed).

Worked example (what :meth:`LabelService.prefetch` does)::

    stored = prefetch_all(client, "gpt2-small/8-res-jb", done={0, 1},
                          store_batch=lambda batch, labels: len(labels),
                          progress=lambda done, total: print(done, total))
    # 2 24, 3 24, ..., 24 24 -> the labels stored by this call (batches 0 and 1 were done)
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable

from .client import NeuronpediaClient, split_np_id

Progress = Callable[[int, "int | None"], None]
MAX_BATCHES = 1_000_000


def prefetch_all(client: NeuronpediaClient, np_id: str, done: set[int],
                 store_batch: Callable[[int, Any], int], progress: Progress | None = None, *,
                 retries: int = 0, timeout: float = 60.0, workers: int = 1, folder: str = "explanations",
                 keep: Callable[[dict], Any] | None = None) -> int:
    """Download the batches of ``np_id``'s bulk ``folder`` not in ``done``, hand each to
    ``store_batch(batch, labels)`` (for ``explanations``: index → label; another
    folder: its records, each through ``keep`` where given: :meth:`NeuronpediaClient.download_rows`), and return the sum of what it returned.
    Raises :class:`~axon_core.labels.client.PrefetchError` where a batch fails
    ``retries + 1`` times (the batches before it stay stored). Where the bucket
    lists ``total`` batches, ``workers`` of them are downloaded at once (stored
    as each arrives); after them, batches are probed one by one until a 404."""
    split_np_id(np_id)  # a ValueError before any request
    total = client.count_batches(np_id, folder)

    def download(b: int):
        if folder == "explanations":
            return client.download_batch(np_id, b, retries, timeout)
        return client.download_rows(np_id, folder, b, retries, timeout, keep)

    finished, stored, batch = len(done), 0, 0
    if progress:
        progress(finished, total)
    if total and workers > 1:
        todo = [b for b in range(total) if b not in done]
        with ThreadPoolExecutor(min(workers, max(1, len(todo))), thread_name_prefix="axon-bulk") as pool:
            for b, labels in zip(todo, pool.map(download, todo)):
                if labels is None:
                    break
                stored += store_batch(b, labels)
                finished += 1
                if progress:
                    progress(finished, max(total, finished))
        done, batch = done | set(todo), total
    while batch < MAX_BATCHES:
        if batch not in done:
            labels = download(batch)
            if labels is None:  # 404/403: no more batches
                break
            stored += store_batch(batch, labels)
            finished += 1
            if progress:
                progress(finished, max(total, finished) if total else None)
        batch += 1
    return stored

"""Human labels for SAE features, fetched from Neuronpedia and cached on disk.

One :class:`LabelService` per process serves every browser session. Its
:meth:`~LabelService.label` never waits for the network: it answers from the
cache, or with the fallback ``"Feature {index}"`` while a background worker
fetches the real label, so the next call (next frame) gets it.

Worked example::

    svc = LabelService()                          # env-var defaults, see below
    svc.label("gpt2-small/8-res-jb", 4821)        # 'Feature 4821' (fetch scheduled)
    ...                                           # a moment later
    svc.label("gpt2-small/8-res-jb", 4821)        # 'European capitals'
    svc.label(None, 7)                            # 'Feature 7' (SAE not on Neuronpedia)
    svc.status()["message"]                       # None, or 'Neuronpedia unreachable (...)'
    svc.prefetch("gpt2-small/8-res-jb")           # bulk download, resumable -> 24576
    svc.evidence.get("gpt2-small/8-res-jb", 4821) # top examples, logit lens: what is local (the rest is fetched)
    svc.close()

Command line (interrupt with Ctrl-C, run again to resume)::

    python -m axon_core.labels prefetch gpt2-small/8-res-jb [--cache PATH] [--evidence]
    python -m axon_core.labels get gpt2-small/8-res-jb 4821

Sources: ``GET {base}/api/feature/{modelId}/{sourceId}/{index}`` (first
``explanations[].description``), and for bulk the gzip JSON-lines batches
``{datasets}/v1/{modelId}/{sourceId}/explanations/batch-N.jsonl.gz``.
Failures (timeouts, 5xx, 429, garbage) give the fallback and are retried with
per-feature exponential back-off; a 429 pauses all fetches for ``Retry-After``;
a 404 or a feature without explanations is remembered as "no label".

Environment: ``AXON_NEURONPEDIA_URL``, ``AXON_NEURONPEDIA_DATASETS_URL``,
``NEURONPEDIA_API_KEY`` (sent as ``x-api-key``), ``AXON_LABEL_CACHE`` (SQLite
file; default ``labels.sqlite`` in :func:`axon_core.paths.cache_dir`: ``AXON_CACHE_DIR``,
else ``/data/axon`` on a Space with persistent storage, else the user cache
directory), ``AXON_NEURONPEDIA_RATE`` (client-side cap, requests per second).

The package, one concern a module, in the order a label travels:

| module | what it does |
|---|---|
| ``client.py`` | Neuronpedia's HTTP API and its bulk dataset: one feature, one batch, how many batches |
| ``store.py`` | the SQLite disk cache: readers, one writer, a corrupt file moved aside, memory only where unwritable |
| ``prefetch.py`` | the bulk download: every batch once, resumable |
| ``evidence.py`` | a feature's evidence (top examples, logit lens, density, typical maximum) as plain values |
| ``evidence_fetch.py`` | :class:`EvidenceService` (``svc.evidence``): evidence local at once, fetched in the background, bulk folders |
| ``service.py`` | :class:`LabelService`: memory cache, background workers, back-off, rate cap, 429 pauses |
| ``__main__.py`` | the command line above |
| ``text.py`` | the fallback label and :func:`safe_text` |

Safety: labels are third-party text and are stored and returned *raw*.
:func:`safe_text` strips control characters and truncates; HTML escaping is
the job of each renderer, not of this module.
"""

from .client import LabelFetchError, PrefetchError, RateLimited
from .service import LabelService
from .store import MAX_IDLE_READERS
from .text import fallback_label, safe_text

__all__ = ["LabelFetchError", "LabelService", "MAX_IDLE_READERS", "PrefetchError", "RateLimited", "fallback_label",
           "safe_text"]

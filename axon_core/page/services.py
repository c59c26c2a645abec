"""The process-wide resources every browser session shares, in one object.

:class:`Services` holds the SAE catalogue, the (model, SAE) cache, the label
service and the engine, with the page's settings. :meth:`Services.start`
builds them once per process, as ``python app.py`` does; every handler in
:mod:`axon_core.page` takes it as its first argument (no module globals), so
a test builds its own or swaps one part.

Worked example::

    services = Services.start(hub_notice=configure_hub())
    services.pairs.get(DEFAULT_RELEASE, DEFAULT_SAE_ID)    # loaded at start already
    services.engine.stats()["computed"]                    # 0
    services.labels.bulk_state("gpt2-small/8-res-jb")     # 'running': its labels download in bulk
    services.versions()["sae-lens"]                        # '6.54.…'
"""

from __future__ import annotations

import contextlib
import functools
import sys
from dataclasses import dataclass
from importlib import metadata

from ..catalogue import DEFAULT_RELEASE, DEFAULT_SAE_ID, Catalogue, load_catalogue
from ..engine import Engine, share_cpus
from ..labels import LabelService
from ..loading import LoadError, PairCache
from .settings import PageSettings


@functools.cache  # read once: each lookup scans site-packages (~30 ms a run otherwise)
def _versions() -> tuple[tuple[str, str], ...]:
    names = ["torch", "transformer-lens", "sae-lens", "gradio", "plotly"]
    return tuple((n, metadata.version(n)) for n in names)


@dataclass
class Services:
    settings: PageSettings
    catalogue: Catalogue
    pairs: PairCache
    labels: LabelService
    engine: Engine
    hub_notice: str | None = None  # how the Hub is reached (offline, ...), for the status line
    startup_error: str | None = None  # the default SAE could not load at start

    @classmethod
    def start(cls, settings: PageSettings | None = None, hub_notice: str | None = None) -> "Services":
        """Everything, for this process: call once (the default SAE loads here:
        ZeroGPU expects the model loaded at import)."""
        settings = settings or PageSettings.from_env()
        catalogue = load_catalogue()
        pairs = PairCache(max_saes=settings.limits.max_layers + 1)  # a run of four layers, and the next pick
        labels = LabelService()
        if settings.label_bulk:  # every label of the default SAE local soon, in the background
            with contextlib.suppress(KeyError):
                labels.bulk(catalogue.choice(DEFAULT_RELEASE, DEFAULT_SAE_ID).neuronpedia_id)
        # Torch's threads: all CPUs but one until the engine has measured (below, after the
        # default pair loads: Engine.choose_threads, axon_core/threads.py). AXON_TORCH_THREADS overrides.
        share_cpus(pairs.device, settings.torch_threads)
        # The engine thread's Python glue between torch ops must get the GIL back quickly
        # while views build frames: hand it over every 0.5 ms instead of every 5 ms.
        sys.setswitchinterval(0.0005)
        # The one engine: its thread steps every session's run (off ZeroGPU; on ZeroGPU
        # each view computes its own run inside one @spaces.GPU call).
        engine = Engine(max_run_seconds=settings.max_run_seconds, batch=settings.batch,
                        replay_bytes=settings.replay_bytes, step_delay=settings.step_delay)
        services = cls(settings, catalogue, pairs, labels, engine, hub_notice)
        try:  # ZeroGPU expects the model loaded at import
            engine.choose_threads(pairs.get(DEFAULT_RELEASE, DEFAULT_SAE_ID), settings.torch_threads)
        except LoadError as err:
            services.startup_error = str(err)
        return services

    def bulk_labels(self, *pairs) -> None:
        """Start the bulk label download of these loaded pairs' SAEs (in the
        background; see :meth:`LabelService.bulk`), where AXON_LABEL_BULK allows."""
        if self.settings.label_bulk:
            self.labels.bulk(*(getattr(p, "neuronpedia_id", None) for p in pairs))

    def versions(self) -> dict[str, str]:
        """The libraries a run's JSON records."""
        return dict(_versions())

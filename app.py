"""AXON: watch GPT-2's SAE features light up while it writes (the Gradio UI).

This file is the Blocks UI and its wiring only; everything else is in
``axon_core/``. Run ``python app.py`` (or ``AXON_OFFLINE_HUB=DIR python app.py``
on a hub written by ``scripts/offline_hub.py``).
"""

from __future__ import annotations

from axon_core.hub import configure_hub

HUB_NOTICE = configure_hub()  # before anything imports huggingface_hub

import atexit  # noqa: E402
import contextlib  # noqa: E402
import dataclasses  # noqa: E402
import datetime  # noqa: E402
import functools  # noqa: E402
import html  # noqa: E402
import json  # noqa: E402
import logging  # noqa: E402
import math  # noqa: E402
import os  # noqa: E402
import shutil  # noqa: E402
import signal  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from importlib import metadata  # noqa: E402
from pathlib import Path  # noqa: E402

import gradio as gr  # noqa: E402
import pandas as pd  # noqa: E402
import plotly  # noqa: E402
import spaces  # noqa: E402

from axon_core.engine import Engine, LiveRun, share_cpus  # noqa: E402
from axon_core.figure import to_json  # noqa: E402
from axon_core.catalogue import DEFAULT_MODEL, DEFAULT_RELEASE, DEFAULT_SAE_ID, load_catalogue  # noqa: E402
from axon_core.depth import causal_check, run_tokens  # noqa: E402
from axon_core.generation import GenerationSettings, PromptError, encode_prompt, generate, hook_layer  # noqa: E402
from axon_core.generation import forward_lock  # noqa: E402
from axon_core.residuals import FastWeights  # noqa: E402
from axon_core.labels import LabelService  # noqa: E402
from axon_core.loading import LoadError, PairCache  # noqa: E402
from axon_core.session import VIEW_EDGE_KINDS, RunSession, SessionRuns, comparison_html  # noqa: E402
from axon_core.share import Limits, base_url_for, build_link, parse_query  # noqa: E402
from axon_core.steering import steering_edit  # noqa: E402

log = logging.getLogger("axon")
HERE = Path(__file__).resolve().parent
PLOTLY_JS = Path(plotly.__file__).resolve().parent / "package_data" / "plotly.min.js"
gr.set_static_paths([str(PLOTLY_JS)])


def _env_number(name: str, default: float, low: float, cast=float):
    """A number from the environment, at least ``low``; anything else keeps ``default``."""
    raw = os.environ.get(name)
    try:
        value = cast(raw) if raw not in (None, "") else default
    except (TypeError, ValueError, OverflowError):
        log.warning("%s=%r is not a number; using %s", name, raw, default)
        return default
    return value if not math.isnan(value) and value >= low else default


# Links and API calls are clamped to the sliders' own ranges, so whatever they
# ask for is a value the page can show (and Generate then accepts).
LIMITS = dataclasses.replace(Limits.from_env(), top_k=(0, 200), activation_threshold=(0.0, 10.0))
MAX_RUN_SECONDS = _env_number("AXON_MAX_RUN_SECONDS", 180.0, 1.0)
ZERO_GPU = os.environ.get("SPACES_ZERO_GPU", "").lower() in ("1", "true")
# Sessions viewing a run at once (the engine steps all their runs in turns; a
# view only waits and draws). ZeroGPU: one, as each view drives its own run on the GPU.
CONCURRENCY = _env_number("AXON_CONCURRENCY", 1 if ZERO_GPU else 16, 1, int)
QUEUE_SIZE = _env_number("AXON_QUEUE_SIZE", 64, 1, int)
EXPORT_MAX_AGE = 3600.0  # downloads are kept this long (seconds)
FRAME_INTERVAL = 0.1  # a view draws at most this often (seconds): ≤ 10 frames a second
TABLE_INTERVAL = 0.5  # the features table, at most this often during a run (seconds)
LABEL_TAIL = 2.0  # after a run, labels still arriving are drawn for this long (seconds)
SESSION_TTL = 900  # a browser session's run is forgotten this long after its last update (seconds)
DEFAULTS = GenerationSettings()
EXAMPLES = [
    "The capital of France is",
    "In 1969, the first person to walk on the Moon was",
    "def fibonacci(n):",
    "She opened the letter and began to cry because",
]
TABLE_COLUMNS = ["feature", "layer", "label", "activation", "peak", "tokens", "attribution"]

# Process-wide resources, shared by every browser session (read-mostly, thread-safe).
CATALOGUE = load_catalogue()
PAIRS = PairCache(max_saes=LIMITS.max_layers + 1)  # a run of four layers, and the next pick
LABELS = LabelService()
# Torch gets all CPUs but one on a CPU machine; the other is the server's (frames,
# Gradio, labels), so a view never stalls the engine's parallel ops. AXON_TORCH_THREADS overrides.
share_cpus(PAIRS.device, os.environ.get("AXON_TORCH_THREADS"))
# The engine thread's Python glue between torch ops must get the GIL back quickly
# while views build frames: hand it over every 0.5 ms instead of every 5 ms.
sys.setswitchinterval(0.0005)
# The one engine: its thread steps every session's run (off ZeroGPU; on ZeroGPU
# each view computes its own run inside one @spaces.GPU call: gpu_steps).
ENGINE = Engine(max_run_seconds=MAX_RUN_SECONDS, batch=os.environ.get("AXON_BATCH", "auto"),
                replay_bytes=int(_env_number("AXON_REPLAY_MB", 16, 0)) << 20)
STARTUP_ERROR: str | None = None
try:  # ZeroGPU expects the model loaded at import
    PAIRS.get(DEFAULT_RELEASE, DEFAULT_SAE_ID)
except LoadError as err:
    STARTUP_ERROR = str(err)


@functools.cache  # read once: each lookup scans site-packages (~30 ms a run otherwise)
def _versions() -> tuple[tuple[str, str], ...]:
    names = ["torch", "transformer-lens", "sae-lens", "gradio", "plotly"]
    return tuple((n, metadata.version(n)) for n in names)


def versions() -> dict[str, str]:
    return dict(_versions())


# ---- status and tables ------------------------------------------------------


def status_line(run: RunSession | None = None, extra: str | None = None, state: str = "idle") -> str:
    """The status line as HTML (every variable part escaped): a gr.HTML, not
    Markdown, since a browser re-renders Markdown at ~100 ms a frame. ``state``
    (idle, running, done, failed) is kept in a data attribute for scripts and tests."""
    parts = [f'<b data-state="{state}" class="axon-state">{PAIRS.device}</b>']
    if run is not None:
        parts.append(f"{html.escape(run.meta['model'])} · {html.escape(run.meta['release'])} / "
                     f"<code>{html.escape(run.meta['sae_id'])}</code>")
        if run.layered:
            parts.append("layers " + ", ".join(str(layer) for layer in sorted(run.by_layer)))
        ms = run.ms_per_token()
        if ms is not None:
            parts.append(f"{ms:.0f} ms/token")
        parts.append(f"{len(run.steps)} tokens · {len(run.graph)} features")
    labels = LABELS.status()
    if labels.get("paused_for"):
        parts.append(f"labels: Neuronpedia rate limit, paused {labels['paused_for']:.0f} s")
    elif labels.get("reachable") is False:  # the latest fetch failed (not: one ever did)
        parts.append("labels: Neuronpedia unreachable, showing feature numbers")
    if not labels.get("persistent", True):
        parts.append("labels: the label cache cannot be written, labels are kept in memory only")
    for note in (HUB_NOTICE, STARTUP_ERROR, extra):
        if note:
            parts.append(html.escape(note))
    return " · ".join(parts)


def table_frame(run: RunSession | None) -> pd.DataFrame:
    rows = run.table() if run else []
    df = pd.DataFrame(rows, columns=TABLE_COLUMNS)
    for col in ("activation", "peak", "attribution"):
        df[col] = pd.to_numeric(df[col], errors="coerce").round(3)
    return df


# ---- generation ---------------------------------------------------------------


def _request_from_inputs(prompt, model, release, sae_id, temperature, top_k, top_p,
                         repetition_penalty, max_tokens, seed, feature_k, threshold, steer="", layers=None):
    """Every input through the same validator as share links: clamped, never raising.
    ``layers``: the layer picker's value (a list) or a link's "2,5,8,11"."""
    if isinstance(layers, (list, tuple)):
        layers = ",".join(str(x) for x in layers)
    raw = {
        "prompt": prompt, "model": model, "release": release, "sae_id": sae_id,
        "temperature": temperature, "top_k": top_k, "top_p": top_p,
        "repetition_penalty": repetition_penalty, "max_tokens": max_tokens, "seed": seed,
        "feature_k": feature_k, "threshold": threshold, "steer": steer, "layers": layers,
    }
    return parse_query({k: "" if v is None else str(v) for k, v in raw.items()}, LIMITS)


def layer_pairs(pair, layers, notices: list[str], progress=None) -> list:
    """The other SAEs a run reads at once: for each layer of ``layers`` but the
    primary's, the release's SAE like the primary at that layer (see
    :meth:`Release.by_layer`), at most ``LIMITS.max_layers`` in all. What cannot
    be read is left out with a notice."""
    primary = hook_layer(pair.hook_name)
    wanted = [int(x) for x in layers if int(x) != primary]
    if not wanted:
        return []
    if primary is None:
        notices.append(f"layers: {pair.hook_name} is not a block's hook point; read it alone")
        return []
    rel = CATALOGUE.by_release.get(pair.choice.release)
    by_layer = rel.by_layer(pair.choice.sae_id) if rel else {}
    missing = [x for x in wanted if x not in by_layer]
    if missing:
        notices.append(f"layers: {pair.choice.release} has no SAE like {pair.choice.sae_id} at "
                       f"{', '.join(map(str, missing))}")
    wanted = [x for x in wanted if x in by_layer]
    if len(wanted) + 1 > LIMITS.max_layers:
        notices.append(f"layers: a run reads at most {LIMITS.max_layers} SAEs; kept "
                       f"{', '.join(map(str, sorted([primary] + wanted[: LIMITS.max_layers - 1])))}")
        wanted = wanted[: LIMITS.max_layers - 1]
    extra = []
    for layer in wanted:
        other = PAIRS.get(pair.choice.release, by_layer[layer], progress=progress)
        if other.model is not pair.model:  # another session switched models meanwhile
            raise LoadError("The model changed while the run's SAEs were loading: press Generate again.")
        extra.append(other)
    return extra


def _scrub_update(run: RunSession):
    """The token slider: its range follows the run; its value follows the newest
    token unless the person has scrubbed."""
    if not run.steps:
        return gr.skip()
    first, last = run.steps[0].position, run.steps[-1].position
    value = last if run.at is None else run.at
    return gr.update(minimum=first, maximum=max(last, first + 1), value=value)


def _frame(run, extra=None, final=False, compare=None):
    """One UI update: text, graph, table, status, state, token slider; on the last
    frame also the run JSON, the download buttons, the timeline and (for a
    steered run) the side-by-side comparison. The table and the slider are
    redrawn at most every TABLE_INTERVAL during a run (a browser spends ~200 ms
    re-rendering the table)."""
    now = time.monotonic()
    table = scrub = gr.skip()
    if final or now - run.table_at >= TABLE_INTERVAL:
        run.table_at, table, scrub = now, table_frame(run), _scrub_update(run)
    out = [run.text_html(), run.figure_json(), table, status_line(run, extra, "done" if final else "running"), run]
    if final:
        run_json = run.export_json(versions())
        ready = gr.update(interactive=True)
        out += [run_json, ready, ready, to_json(run.timeline()).decode(),
                compare if compare is not None else ""]
    else:
        out += [gr.skip()] * 5
    return out + [scrub]


def _failure(message: str, run=None):
    gr.Warning(html.escape(message))
    return [gr.skip(), gr.skip(), gr.skip(), status_line(run, message, "failed"), run] + [gr.skip()] * 6


def _view(run: RunSession, live, pull=None):
    """Frames of ``live`` at the view's own cadence: at most one per
    FRAME_INTERVAL, only when there are new steps (or new labels); a replayed run
    is revealed at the pace it was computed. The engine never waits on this.
    ``pull`` (ZeroGPU) computes the next steps in this thread instead."""
    run.follow(live)
    while not run.caught_up:
        if live.finished:  # a paced replay, or the last steps of a run that just ended
            time.sleep(min(FRAME_INTERVAL, run.next_due()))
        elif pull is not None:
            pull()
        else:
            live.wait(len(run.steps), FRAME_INTERVAL)  # new steps, or the frame interval
        # frames cost the server ~10 ms each: with many runs live, each view draws less often
        scale = max(1.0, ENGINE.live_count / 2)
        time.sleep(run.frame_wait(scale))
        if (run.sync() or run.labels_changed()) and not run.caught_up and run.frame_due(scale=scale):
            yield _frame(run)
    run.sync()


def _label_tail(run: RunSession):
    """After a run: while labels of the newest token's features are still on
    their way (and Neuronpedia answers), redraw as they arrive, for LABEL_TAIL s."""
    if not run.np_id or not run.steps or LABELS.status().get("reachable") is False:
        return
    wanted = [f.index for f in run.steps[-1].features[:8]]
    deadline = time.monotonic() + LABEL_TAIL
    while LABELS.pending(run.np_id, wanted) and time.monotonic() < deadline:
        time.sleep(0.2)
        if run.labels_changed():
            yield True


GPU_SECONDS = int(min(MAX_RUN_SECONDS, 120))  # one ZeroGPU call computes one whole run


@spaces.GPU(duration=GPU_SECONDS)
def gpu_steps(release: str, sae_id: str, prompt: str, settings: GenerationSettings, steer: tuple = (),
              extra_ids: tuple = ()):
    """ZeroGPU's path: one run computed inside one GPU call (a worker process
    there), yielding plain TokenSteps, which cross its process boundary
    (pickled); frames are drawn by the caller. Off ZeroGPU the engine computes
    runs and this is not used. ``extra_ids``: sae ids of the release read at once."""
    pair = PAIRS.get(release, sae_id)
    extra = [PAIRS.get(release, x) for x in extra_ids]
    edit = steering_edit(pair.sae, steer) if steer else None
    deadline = time.monotonic() + GPU_SECONDS - 5
    for step in generate(pair, prompt, settings, edit, extra=extra):
        yield step
        if time.monotonic() > deadline:
            return


def _gpu_live(pair, req, meta, steer, extra=()):
    """A LiveRun fed by :func:`gpu_steps` in the caller's thread, and the
    function that feeds it for about one frame interval."""
    live = LiveRun(None, meta, req.settings, steer)
    live.started, live.state = time.monotonic(), "running"
    steps = gpu_steps(pair.choice.release, pair.choice.sae_id, req.prompt, req.settings, steer,
                      tuple(x.choice.sae_id for x in extra))

    def pull():
        deadline = time.monotonic() + FRAME_INTERVAL
        try:
            while time.monotonic() < deadline:
                step = next(steps)
                live._append([step], new_token=not step.is_prompt)
        except StopIteration:
            live._end("done")
        except Exception as err:  # noqa: BLE001 - the run fails, the app goes on
            log.exception("GPU run failed")
            live._end("failed", error=f"Generation failed ({type(err).__name__}); the app is still running.")

    return live, pull


def run_generation(prompt, model, release, sae_id, temperature, top_k, top_p, repetition_penalty,
                   max_tokens, seed, feature_k, threshold, steer="", edge_kind="npmi", at=None, layers=None,
                   progress=gr.Progress()):
    """Generate from ``prompt`` and stream text, graph, table and status per frame.

    The engine computes the run (or an identical one in flight, or replays a
    finished one); this view samples it. With ``steer`` ("feature:coefficient,
    ..."), the plain run is computed alongside and both are compared side by
    side at the end. ``at`` (a token position, from a link) is shown at the end.
    ``layers`` (a list, or "2,5,8,11"): read the release's SAEs at these
    layers too, in the same forward (each layer a plane of the graph).
    """
    req, notices = _request_from_inputs(prompt, model, release, sae_id, temperature, top_k, top_p,
                                        repetition_penalty, max_tokens, seed, feature_k, threshold, steer,
                                        layers)
    if notices:
        gr.Info(html.escape("; ".join(notices)[:300]))
    try:
        pair = PAIRS.get(req.release or DEFAULT_RELEASE, req.sae_id or DEFAULT_SAE_ID,
                         progress=lambda frac, msg: progress(frac, desc=msg))
        extra = layer_pairs(pair, req.layers, notices, progress=lambda frac, msg: progress(frac, desc=msg))
    except LoadError as err:
        yield _failure("; ".join([str(err)] + notices))
        return
    if req.model and req.model != pair.choice.model:
        notices.append(f"model {req.model[:40]} does not go with release {pair.choice.release}: "
                       f"ran {pair.choice.model}")
    meta = {"model": pair.choice.model, "release": pair.choice.release, "sae_id": pair.choice.sae_id,
            "hook_name": pair.hook_name, "neuronpedia_id": pair.neuronpedia_id, "device": pair.device,
            "prompt": req.prompt}
    kind = edge_kind if isinstance(edge_kind, str) and edge_kind in VIEW_EDGE_KINDS else "npmi"
    run = RunSession({**meta, "steer": req.steer}, req.settings, LABELS, w_dec=pair.sae.W_dec, edge_kind=kind,
                     frame_interval=FRAME_INTERVAL, saes=[pair, *extra] if extra else None)
    lives, pulls = [], [None, None]
    try:
        try:
            if ZERO_GPU:  # checked here, before a GPU call is spent on them
                encode_prompt(pair.model, req.prompt)
                steering_edit(pair.sae, req.steer)
                for i, steer in enumerate([req.steer, ()] if req.steer else [req.steer]):
                    live, pulls[i] = _gpu_live(pair, req, meta, steer, extra)
                    lives.append(live)
            else:
                lives.append(ENGINE.submit(pair, req.prompt, req.settings, req.steer, meta, extra))
                if req.steer:  # the plain run, computed alongside (or already cached)
                    lives.append(ENGINE.submit(pair, req.prompt, req.settings, (), meta, extra))
        except (PromptError, ValueError) as err:  # ValueError: a steering spec this SAE cannot take
            yield _failure("; ".join([str(err)] + notices), run)
            return
        live = lives[0]
        yield from _view(run, live, pulls[0])
        if live.state == "failed":
            yield _failure(live.error or "Generation failed.", run)
            return
        compare = None
        if req.steer:
            plain_live = lives[1]
            while not plain_live.finished:
                if pulls[1] is not None:
                    pulls[1]()
                else:
                    plain_live.wait(len(plain_live.steps), FRAME_INTERVAL)
            plain = RunSession(meta, req.settings, LABELS, saes=run.saes or None)
            for step in plain_live.steps:
                plain.add(step)
            compare = comparison_html(plain, run)
        if at is not None:
            run.scrub(at)
        ended = [n for n in live.notices if n.startswith("stopped")][-1:]
        extra = "; ".join(notices + ended) or None
        final = _frame(run, extra=extra, final=True, compare=compare)
        yield final
        for _ in _label_tail(run):
            yield _frame(run, extra=extra, final=True, compare=compare)
    except Exception as err:  # noqa: BLE001 - a person sees a message, the log the trace
        log.exception("generation failed")
        yield _failure(f"Generation failed ({type(err).__name__}); the app is still running.", run)
    finally:
        if not ZERO_GPU:
            for live in lives:
                ENGINE.release(live)
        run.compact()


def prepare_download(run: RunSession | None, kind: str):
    """Write one download (the run's JSON or the standalone graph page) when a
    person asks for it; nothing is written for runs nobody downloads."""
    if run is None or not run.steps:
        gr.Warning("Generate first: there is no run to download yet.")
        return None  # no file: the page's script then starts no download
    path = write_download(run, kind)
    if path is None:
        gr.Warning("Downloads are unavailable: the disk cannot be written.")
        return None
    return gr.update(value=str(path))


def write_download(run: RunSession, kind: str) -> Path | None:
    """The file in a fresh folder under one export directory whose folders
    older than EXPORT_MAX_AGE are removed first; None where the disk cannot be written."""
    try:
        root = Path(tempfile.gettempdir()) / f"axon-exports-{os.getpid()}"
        if not root.is_dir():
            root.mkdir(parents=True, exist_ok=True)
            atexit.register(shutil.rmtree, root, True)  # gone with the process
        now = time.time()
        for old in root.iterdir():
            try:
                if now - old.stat().st_mtime > EXPORT_MAX_AGE:
                    shutil.rmtree(old, ignore_errors=True)
            except OSError:  # removed meanwhile by another session
                pass
        folder = Path(tempfile.mkdtemp(prefix="run-", dir=root))
        # the name the browser saves it under: prompt, model and date
        path = folder / run.download_name(kind, datetime.datetime.now(datetime.timezone.utc).date())
        if kind == "json":
            path.write_text(json.dumps(run.export_json(versions())))
        else:
            path.write_text(run.export_html())
    except OSError as err:
        log.warning("could not write the download: %s", err)
        return None
    return path


# ---- picker ---------------------------------------------------------------------


def releases_for(model):
    names = [r.release for r in CATALOGUE.releases(model)] if model else []
    value = names[0] if names else None
    return gr.update(choices=names, value=value), sae_ids_for(value)


def sae_ids_for(release):
    rel = CATALOGUE.by_release.get(release)
    ids = rel.sae_ids() if rel else []
    value = DEFAULT_SAE_ID if DEFAULT_SAE_ID in ids else (ids[0] if ids else None)
    return gr.update(choices=ids, value=value)


def layer_choices(release, sae_id) -> list[int]:
    """Layers whose SAE of ``release`` a run of ``sae_id`` can read at once
    (its own included: picking it changes nothing)."""
    rel = CATALOGUE.by_release.get(release)
    return list(rel.by_layer(sae_id)) if rel and sae_id else []


def layers_for(release, sae_id, current):
    """The layer picker after the SAE changed: its choices, keeping what still applies."""
    choices = layer_choices(release, sae_id)
    return gr.update(choices=choices, value=[x for x in (current or []) if x in choices])


def load_choice(release, sae_id, progress=gr.Progress()):
    if not release or not sae_id:
        return status_line()
    try:
        pair = PAIRS.get(release, sae_id, progress=lambda frac, msg: progress(frac, desc=msg))
    except LoadError as err:
        gr.Warning(str(err))
        return status_line(extra=str(err))
    return status_line(extra=f"loaded {pair.choice.release} / {pair.choice.sae_id}")


def prefetch_labels(release, sae_id, progress=gr.Progress()):
    try:
        np_id = CATALOGUE.choice(release, sae_id).neuronpedia_id
    except KeyError as err:
        return status_line(extra=str(err.args[0]))
    if not np_id:
        return status_line(extra="This SAE has no Neuronpedia id: its features keep their numbers.")
    try:
        n = LABELS.prefetch(np_id, progress=lambda done, total: progress(
            (done / total) if total else 0.0, desc=f"labels: batch {done}"))
    except Exception as err:  # noqa: BLE001
        return status_line(extra=f"Label prefetch failed: {type(err).__name__}: {str(err)[:120]}")
    return status_line(extra=f"{n:,} labels cached for {np_id}")


# ---- inspector ------------------------------------------------------------------


INSPECT_HINT = ("**Inspector.** Generate, then click a node in the graph or a row of the table: "
                "its label, activation over the run, co-firing neighbours and the tokens it pushed show here.")
NEIGHBOUR_COLUMNS = ["feature", "label", "npmi", "co_fired"]
PUSH_COLUMNS = ["token", "attribution"]


def inspect(run: RunSession | None, key):
    """The inspector for one graph node (``key``: the feature's index, or in a
    run of several layers its :func:`node_key`)."""
    empty = (INSPECT_HINT, None, pd.DataFrame(columns=NEIGHBOUR_COLUMNS), pd.DataFrame(columns=PUSH_COLUMNS),
             gr.skip(), gr.skip())
    if run is None or key is None:
        return empty
    try:
        key = int(key)
    except (TypeError, ValueError):
        return empty
    try:  # the run's SAE may have left the cache since, and not load again (offline, memory)
        pair_model = PAIRS.get(run.meta["release"], run.meta["sae_id"]).model
    except LoadError as err:
        return (html.escape(str(err)),) + empty[1:]
    info = run.inspector(key, lambda t: pair_model.tokenizer.decode([t]))
    if info is None:
        return empty
    link = f" · [Neuronpedia]({info['url']})" if info["url"] else ""
    where = f" · layer {info['layer']}" if info["layer"] is not None else ""
    head = (f"### {html.escape(info['label'])}\n\nfeature **#{info['index']}**{where} · now {info['activation']:.2f}"
            f" · peak {info['peak']:.2f} · fired on {info['tokens']} tokens{link}")
    history = pd.DataFrame(info["history"], columns=["position", "activation"])
    plot = gr.LinePlot(history, x="position", y="activation", height=180)
    neighbours = pd.DataFrame(info["neighbours"], columns=NEIGHBOUR_COLUMNS).round(3)
    pushes = pd.DataFrame(info["pushes"], columns=PUSH_COLUMNS).round(3)
    # steering acts on the run's primary SAE: a feature of another layer is not put in the steering box
    steerable = info["index"] if not run.layered or info["layer"] == run.primary_layer else gr.skip()
    return head, plot, neighbours, pushes, run.text_html(highlight=key), steerable


def inspect_from_table(run, evt: gr.SelectData):
    row = getattr(evt, "row_value", None)
    if not row or run is None:
        return inspect(run, None)
    try:
        return inspect(run, run.key(int(row[0]), int(row[1]) if row[1] is not None else None))
    except (TypeError, ValueError, IndexError):
        return inspect(run, None)


def inspect_from_graph(run, evt: gr.SelectData):
    return inspect(run, evt.value if evt.value is not None else evt.index)


# ---- share links ----------------------------------------------------------------


def _base_url(request: gr.Request | None) -> str:
    host = request.headers.get("x-forwarded-host") or request.headers.get("host") if request else None
    scheme = (request.headers.get("x-forwarded-proto") if request else None) or "http"
    return base_url_for(os.environ.get("SPACE_ID"), host, scheme)


def share_link(run: RunSession | None, prompt, model, release, sae_id, temperature, top_k, top_p,
               repetition_penalty, max_tokens, seed, feature_k, threshold, steer, layers, request: gr.Request):
    """A link that reopens and reruns this prompt with these settings (and, when
    the graph is scrubbed to a token, shows that token)."""
    req, _ = _request_from_inputs(prompt, model, release, sae_id, temperature, top_k, top_p,
                                  repetition_penalty, max_tokens, seed, feature_k, threshold, steer, layers)
    req = dataclasses.replace(req, autorun=True, at=run.at if run is not None else None)
    return build_link(_base_url(request), req)


def embed_link(params: dict, request: gr.Request | None) -> str:
    """The embed view's "Open in AXON" link: the full page, same run."""
    req, _ = parse_query(params, LIMITS)
    req = dataclasses.replace(req, embed=False, autorun=True)
    url = html.escape(build_link(_base_url(request), req), quote=True)
    return f'<a class="axon-open" href="{url}" target="_blank" rel="noopener">Open in AXON ↗</a>'



def from_query(request: gr.Request):
    """Fill the inputs from the page's query string; start at once with autorun=1."""
    params = dict(request.query_params) if request else {}
    req, notices = parse_query(params, LIMITS)
    s = req.settings
    # The release decides the model (the dropdowns must agree, or Generate refuses them):
    # a valid release wins, else the first release of a valid model, else the defaults.
    if req.release in CATALOGUE.by_release:
        release = req.release
        model = CATALOGUE.by_release[release].model
    elif req.model in CATALOGUE.models():
        model = req.model
        release = CATALOGUE.releases(model)[0].release
    else:
        model, release = DEFAULT_MODEL, DEFAULT_RELEASE
    ids = CATALOGUE.by_release[release].sae_ids()
    sae_id = req.sae_id if req.sae_id in ids else (DEFAULT_SAE_ID if DEFAULT_SAE_ID in ids else ids[0])
    if req.model and req.model != model:
        notices.append(f"model {req.model} does not go with release {release}, using {model}"
                       if req.model in CATALOGUE.models() else f"model not in the catalogue, using {model}")
    if req.release and req.release != release:
        notices.append(f"release not in the catalogue, using {release}")
    if req.sae_id and req.sae_id != sae_id:
        notices.append(f"sae_id not in release {release}, using {sae_id}")
    if notices:
        gr.Info(html.escape("Link: " + "; ".join(notices)[:300]))  # a link's text is not markup
    prompt = req.prompt if "prompt" in params else EXAMPLES[0]
    release_choices = [r.release for r in CATALOGUE.releases(model)]
    choices = layer_choices(release, sae_id)
    layers = [x for x in req.layers if x in choices]
    if len(layers) < len(req.layers):
        gr.Info(html.escape(f"Link: release {release} has no SAE like {sae_id} at layers "
                            f"{', '.join(str(x) for x in req.layers if x not in choices)}"))
    return (prompt, model, gr.update(choices=release_choices, value=release), gr.update(choices=ids, value=sae_id),
            s.temperature, s.top_k, s.top_p, s.repetition_penalty, s.max_new_tokens, s.seed,
            s.feature_k, s.activation_threshold, format_steer(req.steer),
            bool(req.autorun and "prompt" in params), req.at, embed_link(params, request) if req.embed else "",
            gr.update(choices=choices, value=layers))


def format_steer(spec) -> str:
    return ", ".join(f"{f}:{c:g}" for f, c in spec)


def add_steer(run: RunSession | None, feature, strength, current):
    """Append "feature:coefficient" to the steering box; the strength is in units of
    the feature's peak activation in the current run (1 unit if it has none)."""
    try:
        feature = int(feature)
    except (TypeError, ValueError):
        gr.Warning("Pick a feature first (click a node or a table row).")
        return current
    key = run.key(feature, run.primary_layer) if run is not None else feature  # the picked SAE's feature
    peak = run.graph.node(key).peak if run is not None and key in run.graph else 1.0
    entry = f"{feature}:{float(strength) * peak:.4g}"
    return f"{current.strip()}, {entry}" if current and current.strip() else entry


def redraw(run: RunSession | None, kind):
    if run is None or kind not in VIEW_EDGE_KINDS:
        return gr.skip()
    run.edge_kind = kind
    return run.figure_json(relayout=False)


def _at_token(run: RunSession, position):
    """Outputs for the graph shown at ``position`` (None: the newest token)."""
    run.scrub(position)
    return (run.figure_json(relayout=False), run.text_html(), table_frame(run),
            to_json(run.timeline()).decode(), _scrub_update(run))


def scrub_to(run: RunSession | None, position):
    """The token slider: the graph as it was at that token (during a run too)."""
    if run is None or not run.steps:
        return (gr.skip(),) * 5
    try:
        position = int(position)
    except (TypeError, ValueError):
        return (gr.skip(),) * 5
    return _at_token(run, position)


def highlight_token(run: RunSession | None, evt: gr.SelectData):
    """A click on a token (in the text or the timeline) shows the graph at that
    token: its features lit and named; a second click goes back to the newest token."""
    try:
        position = int(evt.value if evt.value is not None else evt.index)
    except (TypeError, ValueError):
        return (gr.skip(),) * 5
    if run is None or not run.steps:
        return (gr.skip(),) * 5
    return _at_token(run, None if run.at == position else position)


CAUSAL_COLUMNS = ["source", "source_label", "target", "target_label", "npmi", "virtual_weight", "effect"]
CAUSAL_HINT = ("**Which earlier features caused these?** Read several layers (Model and SAE → Layers), generate, "
               "pick a token (slider or click), then test it: each of its 8 strongest features at an earlier layer "
               "is ablated in turn (that position re-run from there up) and every later layer's features on the "
               "token are measured. Co-firing (NPMI), virtual weight and measured effect side by side.")


def causal_for_token(run: RunSession | None):
    """Ablate the shown token's strongest features at each earlier layer and
    measure the later layers (axon_core.depth.causal_check); draw the effects
    as edges and list them beside co-firing and virtual weight."""
    empty = pd.DataFrame(columns=CAUSAL_COLUMNS)
    if run is None or not run.steps:
        return gr.skip(), gr.skip(), empty, "Generate first: there is no token to test yet."
    if not run.layered:
        return gr.skip(), gr.skip(), empty, ("This run reads one layer. Pick more layers under "
                                             "*Model and SAE → Layers* and generate again.")
    if not run.caught_up:
        return gr.skip(), gr.skip(), empty, "Wait for the run to finish, then test a token."
    position = run.at if run.at is not None else run.steps[-1].position
    try:
        pair = PAIRS.get(run.meta["release"], run.meta["sae_id"])
    except LoadError as err:
        return gr.skip(), gr.skip(), empty, html.escape(str(err))
    t = time.perf_counter()
    try:
        checks = depth_checks(pair, run, position)
    except (ValueError, RuntimeError) as err:
        log.exception("causal check failed")
        return gr.skip(), gr.skip(), empty, f"The check failed ({type(err).__name__}): {html.escape(str(err)[:200])}"
    ms = 1e3 * (time.perf_counter() - t)
    rows = run.set_causal(checks)
    run.edge_kind = "causal"
    token = next((s.text for s in run.steps if s.position == position), "")
    df = pd.DataFrame(rows, columns=CAUSAL_COLUMNS).round(3)
    note = (f"Token {position} ({html.escape(repr(token))}): {sum(len(c.features) for c in checks)} ablations "
            f"in {ms:.0f} ms. In the graph: measured effects (blue: the earlier feature helped the later one "
            f"fire, red: it held it back; width: size).")
    return run.figure_json(relayout=False), "causal", df, note


def depth_checks(pair, run: RunSession, position: int):
    """One :func:`causal_check` per earlier layer of ``run`` at ``position``."""
    model = pair.model
    bos = getattr(model.tokenizer, "bos_token_id", None)
    tokens = run_tokens(run.steps, bos)
    edits = {pair.hook_name: steering_edit(pair.sae, run.meta["steer"])} if run.meta.get("steer") else None
    layers = sorted(run.by_layer)
    fast = pair.fast_weights if FastWeights.supports(model) else None
    checks = []
    with forward_lock(model, None) if fast is None else contextlib.nullcontext():
        for i, layer in enumerate(layers[:-1]):
            checks.append(causal_check(model, tokens, position, run.by_layer[layer],
                                       [run.by_layer[x] for x in layers[i + 1:]], k=8,
                                       threshold=run.settings.activation_threshold,
                                       weights=fast, edits=edits))
    return checks


def engine_stats() -> dict:
    """Engine counters (generations computed, attached, replayed; batched and
    single steps; recent runs' step counts and times): no prompts, no content."""
    return ENGINE.stats()


SESSION_RUNS = SessionRuns()
_GONE = object()


def drop_stale_entries(blocks, session_hash: str | None) -> int:
    """Free what Gradio (6.31) keeps of a session's past outputs; returns how many entries.

    Gradio keeps, per browser session (``Blocks.state_holder.session_data``),
    a table of the page's blocks and each one's latest config and value
    (``SessionState.blocks_config.blocks`` and ``.config_values``). An output
    that gets a prop update (``gr.skip()``, ``gr.update(...)``) is replaced in
    that table by a new component with a new id, and a later plain value for
    it is stored under that new id as a new entry, never removed. A run's
    frames skip the run JSON, the timeline, the comparison (and the table
    between redraws) until its end, so each run left its run JSON (~0.2 MB for
    4 tokens) behind for the session's life: ~30 MB per 100 runs (found with
    tracemalloc and a reference chain ``demo.state_holder.session_data[hash]
    .config_values[<new id>]["props"]["value"]``).

    Removes, for one session, the entries of ids that are neither one of the
    page's blocks nor a session's current replacement of one (a frame in flight
    may still use that). Does nothing (0) for an unknown session, before
    launch, or where Gradio keeps sessions another way (tests/test_gradio_state.py).
    """
    if not session_hash:
        return 0
    try:
        state = blocks.state_holder.session_data.get(session_hash)
        own = blocks.blocks  # the page's blocks: id -> block
        if state is None:
            return 0
        table = state.blocks_config.blocks
        values = state.config_values
    except AttributeError:  # not launched, or another Gradio
        return 0
    current = {getattr(block, "_id", None) for key, block in list(table.items()) if key in own}
    removed = 0
    for mapping in (table, values):
        for key in [k for k in list(mapping) if k not in own and k not in current]:
            if mapping.pop(key, _GONE) is not _GONE:
                removed += 1
    return removed


def generate_for_session(request: gr.Request, progress=gr.Progress(), *inputs):
    """The Generate, Enter and Steer events: :func:`run_generation` for this
    browser session, which it keeps to one run at a time (see :class:`SessionRuns`)."""
    key = getattr(request, "session_hash", None)
    ticket = SESSION_RUNS.start(key)
    frames = run_generation(*inputs, progress=progress)
    try:
        for frame in frames:
            if SESSION_RUNS.superseded(key, ticket):
                return
            yield frame
    finally:
        frames.close()  # Stop (or a superseding run) ends the generator at once
        SESSION_RUNS.finish(key, ticket)
        drop_stale_entries(demo, key)  # what Gradio would keep of this run's frames for the session's life


def autorun_generation(request: gr.Request, autorun, *inputs):
    if not autorun:
        return
    yield from generate_for_session(request, gr.Progress(), *inputs)


def _forget_run(run: RunSession | None) -> None:
    """A session's state expired or the session closed: drop its run's buffers."""
    if run is not None:
        run.compact()


# ---- the page ---------------------------------------------------------------------

GRAPH_JS = (HERE / "assets" / "graph.js").read_text()
TEXT_JS = (HERE / "assets" / "text.js").read_text()
EDGE_CHOICES = [("above chance (NPMI > 0)", "npmi"), ("all co-firing, by NPMI", "npmi_all"),
                ("co-activation strength", "cooccurrence"), ("decoder cosine (SAE geometry)", "decoder"),
                ("virtual weights across layers", "virtual"), ("measured effects (causal check)", "causal")]
CSS = (HERE / "assets" / "axon.css").read_text()
# plotly.js from this app's own static route; ?embed=1 switches the page to the
# embed view before it draws (text, graph and a link to the full page).
PLOTLY_HEAD = f'<script src="/gradio_api/file={PLOTLY_JS}"></script>'
EMBED_HEAD = ('<script>if (new URLSearchParams(location.search).get("embed") === "1")'
              ' document.documentElement.classList.add("axon-embed");</script>')
EMPTY_TEXT = ('<div class="axon-text axon-empty">Type a prompt and press <b>Generate</b>: the text appears here, '
              'token by token. Hover a token for its features; click it to see the graph as it was then.</div>')
FULL = ["axon-full"]  # hidden in the embed view
# Saves the file a download component was just given (Gradio's FileData: url,
# orig_name): a link with a download name, clicked. From this app's own origin
# the browser saves the URL itself; from another one (a proxy in between) a
# link's download name is ignored, so the bytes are fetched into a blob first.
SAVE_FILE = """async (file) => {
  if (!file || !file.url) return;
  const a = document.createElement('a');
  a.download = file.orig_name || 'axon-download';
  a.href = file.url;
  if (new URL(file.url, location.href).origin !== location.origin) {
    try { a.href = URL.createObjectURL(await (await fetch(file.url)).blob()); }
    catch (e) { console.error('AXON: download failed', e); return; }
    setTimeout(() => URL.revokeObjectURL(a.href), 60000);
  }
  document.body.appendChild(a); a.click(); a.remove();
}"""

with gr.Blocks(title="AXON", delete_cache=(int(EXPORT_MAX_AGE), int(EXPORT_MAX_AGE))) as demo:
    run_state = gr.State(None, time_to_live=SESSION_TTL, delete_callback=_forget_run)
    autorun_state = gr.State(False)
    at_state = gr.State(None)
    gr.HTML('<div class="axon-head"><b>AXON</b> · what GPT-2 is <i>thinking</i> while it writes: '
            'SAE features of its residual stream, token by token</div>', elem_classes=FULL)
    with gr.Row(elem_classes=FULL + ["axon-bar"], equal_height=True):
        prompt = gr.Textbox(show_label=False, placeholder="Type a prompt…", value=EXAMPLES[0], lines=1,
                            max_lines=4, max_length=LIMITS.max_prompt_chars, scale=6, container=False)
        run_btn = gr.Button("Generate", variant="primary", scale=1, min_width=100)
        stop_btn = gr.Button("Stop", variant="stop", scale=0, min_width=70)
        link_btn = gr.Button("Copy link", scale=0, min_width=90)
    with gr.Row(elem_classes=["axon-main"], equal_height=False):
        with gr.Column(scale=2, min_width=300, elem_classes=["axon-side"]):
            text = gr.HTML(EMPTY_TEXT, js_on_load=TEXT_JS, elem_id="axon-text-box", container=False)
            status = gr.HTML(status_line(), elem_id="axon-status", container=False)
            scrub = gr.Slider(0, 1, value=0, step=1, label="Show the graph at token (drag; the end follows the run)",
                              interactive=True, elem_id="axon-scrub")
            table = gr.Dataframe(pd.DataFrame(columns=TABLE_COLUMNS), label="Top features (latest token)",
                                 interactive=False, wrap=True, max_height=300, elem_classes=FULL + ["axon-table"],
                                 column_widths=["13%", "10%", "29%", "14%", "11%", "10%", "13%"])
            embed_open = gr.HTML("", elem_classes=["axon-embed-only"])
        with gr.Column(scale=3, min_width=360, elem_classes=["axon-graph-col"]):
            graph = gr.HTML(value="", html_template='<div class="axon-plot axon-graph"></div>', js_on_load=GRAPH_JS,
                            head=PLOTLY_HEAD, elem_id="axon-graph-box", container=False)
            edge_kind = gr.Radio(EDGE_CHOICES, value="npmi", label="Edges", elem_classes=FULL)
    with gr.Accordion("Model and SAE", open=False, elem_classes=FULL):
        with gr.Row():
            model = gr.Dropdown(CATALOGUE.models(), value=DEFAULT_MODEL, label="Model")
            release = gr.Dropdown([r.release for r in CATALOGUE.releases(DEFAULT_MODEL)], value=DEFAULT_RELEASE,
                                  label="SAE release")
            sae_id = gr.Dropdown(CATALOGUE.by_release[DEFAULT_RELEASE].sae_ids(), value=DEFAULT_SAE_ID,
                                 label="SAE id (hook point)")
        layers = gr.Dropdown(layer_choices(DEFAULT_RELEASE, DEFAULT_SAE_ID), value=[], multiselect=True,
                             label=f"Layers read at once (up to {LIMITS.max_layers} with the SAE above, one forward; "
                                   "each layer a plane of the graph)")
        prefetch_btn = gr.Button("Prefetch all labels for this SAE", size="sm")
    with gr.Accordion("Sampling and features", open=False, elem_classes=FULL):
        with gr.Row():
            temperature = gr.Slider(0, 2, value=DEFAULTS.temperature, step=0.05, label="Temperature (0 = greedy)")
            top_k = gr.Slider(0, 200, value=DEFAULTS.top_k, step=1, label="Top-k (0 = off)")
            top_p = gr.Slider(0, 1, value=DEFAULTS.top_p, step=0.01, label="Top-p")
            repetition_penalty = gr.Slider(1, 2, value=DEFAULTS.repetition_penalty, step=0.05,
                                           label="Repetition penalty")
        with gr.Row():
            max_tokens = gr.Slider(1, LIMITS.max_new_tokens, value=DEFAULTS.max_new_tokens, step=1,
                                   label="Max new tokens")
            seed = gr.Number(value=DEFAULTS.seed, precision=0, label="Seed")
            feature_k = gr.Slider(1, 64, value=DEFAULTS.feature_k, step=1, label="Features per token")
            threshold = gr.Slider(0, 10, value=DEFAULTS.activation_threshold, step=0.05,
                                  label="Activation threshold")
    with gr.Accordion("Inspector and steering", open=True, elem_classes=FULL):
        inspector_head = gr.Markdown(INSPECT_HINT)
        with gr.Row():
            inspector_plot = gr.LinePlot(height=180, label="Activation over the run")
            neighbours = gr.Dataframe(pd.DataFrame(columns=NEIGHBOUR_COLUMNS), label="Strongest co-firing neighbours",
                                      interactive=False)
            pushes = gr.Dataframe(pd.DataFrame(columns=PUSH_COLUMNS),
                                  label="Tokens it pushed (direct logit attribution)", interactive=False)
        with gr.Row():
            steer_feature = gr.Number(label="Feature to steer", precision=0)
            steer_strength = gr.Slider(-10, 10, value=4, step=0.5,
                                       label="Strength (× its peak activation in this run)")
            add_steer_btn = gr.Button("Add to steering", size="sm")
        with gr.Row():
            steer_box = gr.Textbox(label="Steering (feature:coefficient, …; coefficients in activation units)",
                                   placeholder="e.g. 1234:8.5, 88:-3", scale=3)
            steer_btn = gr.Button("Steer (same prompt and seed)", variant="primary", scale=1)
            clear_steer_btn = gr.Button("Clear steering", size="sm", scale=1)
        compare = gr.HTML("", label="Plain vs steered")
    with gr.Accordion("Depth: which earlier features caused these?", open=False, elem_classes=FULL):
        causal_note = gr.Markdown(CAUSAL_HINT)
        causal_btn = gr.Button("Test the shown token by ablation", size="sm")
        causal_table = gr.Dataframe(pd.DataFrame(columns=CAUSAL_COLUMNS), interactive=False, max_height=320,
                                    label="Earlier → later feature: co-firing NPMI, virtual weight, measured effect")
    with gr.Accordion("Timeline: tokens × strongest features (click a token to see the graph then)", open=False,
                      elem_classes=FULL):
        timeline = gr.HTML(value="", html_template='<div class="axon-plot axon-timeline"></div>',
                           js_on_load=GRAPH_JS, head=PLOTLY_HEAD, label="Timeline")
    with gr.Row(elem_classes=FULL):
        json_btn = gr.Button("Download run (JSON)", interactive=False, size="sm")
        html_btn = gr.Button("Download graph (standalone HTML)", interactive=False, size="sm")
        link_box = gr.Textbox(label="Share link", placeholder="Copy link puts a link to this run here",
                              buttons=["copy"], interactive=False, scale=3)
    # the files behind the two buttons, written on demand; holding one makes Gradio
    # serve it, and SAVE_FILE (below) then saves it from the page
    json_file = gr.DownloadButton("json", elem_id="axon-dl-json", elem_classes=["axon-hidden"])
    html_file = gr.DownloadButton("html", elem_id="axon-dl-html", elem_classes=["axon-hidden"])
    run_json = gr.JSON(visible=False)

    inputs = [prompt, model, release, sae_id, temperature, top_k, top_p, repetition_penalty,
              max_tokens, seed, feature_k, threshold, steer_box, edge_kind, at_state, layers]
    # A run's progress shows on the status line only: Gradio's progress overlay on
    # all eleven outputs costs the browser a re-layout every frame.
    # trigger_mode "multiple": a new Generate (or Enter, or Steer) starts at once, also
    # while this session's run or its label tail is still streaming (Gradio's default
    # for a click, "once", dropped the press); SessionRuns then stops the older run.
    STREAMING = dict(show_progress="minimal", show_progress_on=[status], trigger_mode="multiple")
    outputs = [text, graph, table, status, run_state, run_json, json_btn, html_btn, timeline, compare, scrub]
    # preprocess=False: every input reaches _request_from_inputs as sent, which clamps
    # or ignores it with a notice, so no API value (a string for a number, a value
    # not in a dropdown) ends in a bare error.
    run_event = run_btn.click(generate_for_session, inputs, outputs, api_name="generate",
                              concurrency_id="generate", preprocess=False, **STREAMING)
    submit_event = prompt.submit(generate_for_session, inputs, outputs, api_visibility="private",
                                 concurrency_id="generate", preprocess=False, **STREAMING)
    steer_event = steer_btn.click(generate_for_session, inputs, outputs, api_visibility="private",
                                  concurrency_id="generate", preprocess=False, **STREAMING)
    stop_btn.click(None, None, None, cancels=[run_event, submit_event, steer_event])
    add_steer_btn.click(add_steer, [run_state, steer_feature, steer_strength, steer_box], steer_box,
                        api_visibility="private")
    clear_steer_btn.click(lambda: "", None, steer_box, api_visibility="private")
    edge_kind.change(redraw, [run_state, edge_kind], graph, api_visibility="private")
    at_outputs = [graph, text, table, timeline, scrub]
    scrub.input(scrub_to, [run_state, scrub], at_outputs, api_visibility="private", trigger_mode="always_last")
    text.select(highlight_token, run_state, at_outputs, api_visibility="private")
    timeline.select(highlight_token, run_state, at_outputs, api_visibility="private")
    link_btn.click(share_link, [run_state] + inputs[:13] + [layers], link_box, api_visibility="private")
    model.change(releases_for, model, [release, sae_id], api_visibility="private")
    release.input(sae_ids_for, release, sae_id, api_visibility="private")
    sae_id.input(load_choice, [release, sae_id], status, api_visibility="private")
    sae_id.change(layers_for, [release, sae_id, layers], layers, api_visibility="private")
    causal_btn.click(causal_for_token, run_state, [graph, edge_kind, causal_table, causal_note],
                     api_visibility="private", concurrency_id="depth", concurrency_limit=2)
    prefetch_btn.click(prefetch_labels, [release, sae_id], status, api_visibility="private")
    inspector_outputs = [inspector_head, inspector_plot, neighbours, pushes, text, steer_feature]
    table.select(inspect_from_table, run_state, inspector_outputs, api_visibility="private")
    graph.select(inspect_from_graph, run_state, inspector_outputs, api_visibility="private")
    for button, file, kind in ((json_btn, json_file, "json"), (html_btn, html_file, "html")):
        button.click(functools.partial(prepare_download, kind=kind), run_state, file,
                     api_visibility="private").then(None, file, None, js=SAVE_FILE)
    gr.api(engine_stats, api_name="engine_stats", api_visibility="undocumented")
    load_event = demo.load(from_query, None, inputs[:13] + [autorun_state, at_state, embed_open, layers],
                           api_visibility="private")
    autorun_event = load_event.then(autorun_generation, [autorun_state] + inputs, outputs,
                                    api_visibility="private", concurrency_id="generate", **STREAMING)
    stop_btn.click(None, None, None, cancels=[autorun_event])

demo.queue(default_concurrency_limit=CONCURRENCY, max_size=QUEUE_SIZE)


def _stop_on_sigterm(signum, frame):
    raise KeyboardInterrupt  # Gradio's main-thread loop then closes the server cleanly


if __name__ == "__main__":
    # SIGTERM (a Space restarting, a test stopping the server) shuts down like Ctrl-C,
    # so Gradio deletes its cached downloads (delete_cache) and atexit this process's exports.
    signal.signal(signal.SIGTERM, _stop_on_sigterm)
    # Where to listen: AXON_HOST / AXON_PORT if set, else Gradio's own
    # GRADIO_SERVER_NAME / GRADIO_SERVER_PORT (a Space sets 0.0.0.0:7860 and its
    # proxy must reach us), else Gradio's defaults, 127.0.0.1:7860 on a laptop.
    port = os.environ.get("AXON_PORT")
    # ssr_mode=False: server-side rendering needs Node 24+, which we cannot test
    # here, and our page's JavaScript (the one Plotly element, js_on_load) is
    # tested client-side only; so a platform default never changes what runs.
    demo.launch(css=CSS, head=EMBED_HEAD, server_name=os.environ.get("AXON_HOST") or None,
                server_port=int(port) if port else None, ssr_mode=False)

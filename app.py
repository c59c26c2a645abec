"""AXON: watch GPT-2's SAE features light up while it writes (the Gradio page).

This file is the Blocks layout and its event wiring only. What the handlers
compute is in ``axon_core/page/`` (no Gradio there); ``ui/handlers.py`` turns
that into Gradio updates. Run ``python app.py`` (or
``AXON_OFFLINE_HUB=DIR python app.py`` on a hub written by ``scripts/offline_hub.py``).
"""

from __future__ import annotations

from axon_core.hub import configure_hub

HUB_NOTICE = configure_hub()  # before anything imports huggingface_hub

import os  # noqa: E402
import signal  # noqa: E402
from pathlib import Path  # noqa: E402

import gradio as gr  # noqa: E402
import pandas as pd  # noqa: E402
import plotly  # noqa: E402

from ui.zerogpu import gpu_steps_for  # noqa: E402  (imports spaces, before torch: ZeroGPU patches it)
from axon_core.catalogue import DEFAULT_MODEL, DEFAULT_RELEASE, DEFAULT_SAE_ID  # noqa: E402
from axon_core.generation import GenerationSettings  # noqa: E402
from axon_core.page.causal import CAUSAL_COLUMNS, CAUSAL_HINT  # noqa: E402
from axon_core.page.find import FIND_COLUMNS, FIND_HINT  # noqa: E402
from axon_core.page.fork import FORK_HINT  # noqa: E402
from axon_core.page.inspector import INSPECT_HINT, NEIGHBOUR_COLUMNS, PUSH_COLUMNS  # noqa: E402
from axon_core.page.services import Services  # noqa: E402
from axon_core.page.settings import EXAMPLES, EXPORT_MAX_AGE, SESSION_TTL  # noqa: E402
from axon_core.page.status import TABLE_COLUMNS  # noqa: E402
from axon_core.page.watchlist import WATCH_LABEL  # noqa: E402
from ui.handlers import Handlers  # noqa: E402

HERE = Path(__file__).resolve().parent
PLOTLY_JS = Path(plotly.__file__).resolve().parent / "package_data" / "plotly.min.js"
gr.set_static_paths([str(PLOTLY_JS)])

# Process-wide resources, shared by every browser session (read-mostly, thread-safe).
SERVICES = Services.start(hub_notice=HUB_NOTICE)
LIMITS = SERVICES.settings.limits  # the sliders' ranges are the validator's
CATALOGUE = SERVICES.catalogue
HANDLERS = Handlers(SERVICES, gpu_steps=gpu_steps_for(SERVICES))
DEFAULTS = GenerationSettings()

# ---- the page ---------------------------------------------------------------------

GRAPH_JS = (HERE / "assets" / "graph.js").read_text()  # the timeline: a Plotly figure per update
# the live graph: the graph player (the replay page's, too) fed by the server's delta log
LIVE_JS = (HERE / "assets" / "player.js").read_text() + "\n" + (HERE / "assets" / "live.js").read_text()
TEXT_JS = (HERE / "assets" / "text.js").read_text()
NOTES_JS = (HERE / "assets" / "notes.js").read_text()
FORK_JS = (HERE / "assets" / "fork.js").read_text()  # the fork panel scrolled to where the texts part
MARK_STOPPED = (HERE / "assets" / "stop.js").read_text()  # Stop marks the status line stopped
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
    run_state = gr.State(None, time_to_live=SESSION_TTL, delete_callback=HANDLERS.forget_run)
    autorun_state = gr.State(False)
    at_state = gr.State(None)
    picked_state = gr.State(None)  # (layer, index) last clicked in the table or the graph: the Watch button's
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
            text = gr.HTML(EMPTY_TEXT, html_template='<div class="axon-text-host"></div>', js_on_load=TEXT_JS,
                           elem_id="axon-text-box", container=False)
            # under the text: the watch list's sparklines and the decision strip (apart from the text,
            # which then only grows during a run and is streamed as appends)
            notes = gr.HTML("", js_on_load=NOTES_JS, elem_id="axon-notes", container=False)
            status = gr.HTML(HANDLERS.status_line(), elem_id="axon-status", container=False)
            why_btn = gr.Button("Why this word? Add the gradient flavour (through later layers) for the shown token",
                                size="sm", elem_id="axon-why", elem_classes=FULL)
            measure_btn = gr.Button("Measure it: ablate the shown token's 8 strongest features in turn (the measured "
                                    "flavour)", size="sm", elem_id="axon-measure", elem_classes=FULL)
            fork_view = gr.HTML(FORK_HINT, elem_id="axon-fork-view", elem_classes=FULL, container=False,
                                js_on_load=FORK_JS)
            fork_req = gr.Textbox("", elem_id="axon-fork-req", elem_classes=["axon-hidden"], show_label=False,
                                  container=False)  # the strip's fork button writes "position:token:nonce" here (.change: a scripted input event does not reach .input)
            fork_state = gr.State(None)  # a link's fork=position:token, shown once its run is done
            vs_req = gr.Textbox("", elem_id="axon-vs-req", elem_classes=["axon-hidden"], show_label=False,
                                container=False)  # the strip's compared candidate, "position:token" (assets/notes.js)
            scrub = gr.Slider(0, 1, value=0, step=1, label="Show the graph at token (drag; the end follows the run)",
                              interactive=True, elem_id="axon-scrub")
            table = gr.Dataframe(pd.DataFrame(columns=TABLE_COLUMNS), label="Top features (latest token)",
                                 interactive=False, wrap=True, max_height=300, elem_classes=FULL + ["axon-table"],
                                 column_widths=["13%", "10%", "29%", "14%", "11%", "10%", "13%"])
            embed_open = gr.HTML("", elem_classes=["axon-embed-only"])
        with gr.Column(scale=3, min_width=360, elem_classes=["axon-graph-col"]):
            graph = gr.HTML(value="", html_template='<div class="axon-plot axon-graph"></div>', js_on_load=LIVE_JS,
                            head=PLOTLY_HEAD, elem_id="axon-graph-box", container=False)
            edge_kind = gr.Radio(EDGE_CHOICES, value="npmi", label="Edges", elem_classes=FULL)
    with gr.Accordion("Model and SAE", open=False, elem_classes=FULL):
        with gr.Row():
            model = gr.Dropdown(CATALOGUE.models(), value=DEFAULT_MODEL, label="Model")
            release = gr.Dropdown([r.release for r in CATALOGUE.releases(DEFAULT_MODEL)], value=DEFAULT_RELEASE,
                                  label="SAE release")
            sae_id = gr.Dropdown(CATALOGUE.by_release[DEFAULT_RELEASE].sae_ids(), value=DEFAULT_SAE_ID,
                                 label="SAE id (hook point)")
        layers = gr.Dropdown(HANDLERS.layer_choices(DEFAULT_RELEASE, DEFAULT_SAE_ID), value=[], multiselect=True,
                             label=f"Layers read at once (up to {LIMITS.max_layers} with the SAE above, one forward; "
                                   "each layer a plane of the graph)")
        with gr.Row():
            prefetch_btn = gr.Button("Prefetch all labels for this SAE", size="sm")
            prefetch_evidence = gr.Checkbox(False, label="with top examples and logit lens (much larger download)")
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
        with gr.Row(equal_height=True):
            find_box = gr.Textbox(label="Find a feature", placeholder="a word or its start, e.g. France", scale=3)
            find_btn = gr.Button("Find", size="sm", scale=1)
        find_note = gr.Markdown(FIND_HINT)
        find_table = gr.Dataframe(pd.DataFrame(columns=FIND_COLUMNS), interactive=False, max_height=260,
                                  label="Features found (click one to inspect and watch it; one that never fired can be steered)")
        with gr.Row(equal_height=True):
            watch_box = gr.Textbox("", label=WATCH_LABEL, placeholder="e.g. 7124, 88 (or 8:7124 in a run of several layers)",
                                   scale=4, elem_id="axon-watch-box")
            watch_btn = gr.Button("Watch the clicked feature", size="sm", scale=1, elem_id="axon-watch-btn")
            clear_watch_btn = gr.Button("Clear watch list", size="sm", scale=1)
        inspector_head = gr.Markdown(INSPECT_HINT)
        evidence_box = gr.HTML("", elem_id="axon-evidence")  # examples, logit lens, density (page/evidence.py)
        inspected_state, evidence_timer = gr.State(None), gr.Timer(1.0, active=False)  # refreshes it until it arrived
        with gr.Row():
            inspector_plot = gr.LinePlot(height=180, label="Activation over the run")
            neighbours = gr.Dataframe(pd.DataFrame(columns=NEIGHBOUR_COLUMNS), label="Strongest co-firing neighbours",
                                      interactive=False)
            pushes = gr.Dataframe(pd.DataFrame(columns=PUSH_COLUMNS),
                                  label="Tokens it pushed (direct logit attribution)", interactive=False)
        with gr.Row():
            steer_feature = gr.Number(label="Feature to steer", precision=0)
            steer_strength = gr.Slider(-10, 10, value=4, step=0.5,
                                       label="Strength (× its peak in this run, else its typical maximum: "
                                             "the inspector says which)")
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
                      elem_classes=FULL) as timeline_box:
        timeline = gr.HTML(value="", html_template='<div class="axon-plot axon-timeline"></div>',
                           js_on_load=GRAPH_JS, head=PLOTLY_HEAD, label="Timeline")
    with gr.Row(elem_classes=FULL):
        json_btn = gr.Button("Download run (JSON)", interactive=False, size="sm")
        html_btn = gr.Button("Download graph (standalone HTML)", interactive=False, size="sm")
        replay_btn = gr.Button("Download replay (HTML)", interactive=False, size="sm")
        link_box = gr.Textbox(label="Share link", placeholder="Copy link puts a link to this run here",
                              buttons=["copy"], interactive=False, scale=3)
    # the files behind the two buttons, written on demand, then fetched by a click from the page
    json_file = gr.DownloadButton("json", elem_id="axon-dl-json", elem_classes=["axon-hidden"])
    html_file = gr.DownloadButton("html", elem_id="axon-dl-html", elem_classes=["axon-hidden"])
    replay_file = gr.DownloadButton("replay", elem_id="axon-dl-replay", elem_classes=["axon-hidden"])
    run_json = gr.JSON(visible=False)
    timeline_open = gr.State(False)  # the timeline is drawn only while its accordion is open
    api_run = gr.Button("generate", visible=False)  # the API's /generate (the page's own events send less)
    api_fork = gr.Textbox("", visible=False, label="fork")  # /generate's fork="position:token_id" (the page's: "")

    inputs = [prompt, model, release, sae_id, temperature, top_k, top_p, repetition_penalty,
              max_tokens, seed, feature_k, threshold, steer_box, edge_kind, at_state, layers, watch_box, api_fork]
    # A run's progress shows on the status line only: Gradio's progress overlay on
    # all eleven outputs costs the browser a re-layout every frame.
    # trigger_mode "multiple": a new Generate (or Enter, or Steer) starts at once, also
    # while this session's run or its label tail is still streaming (Gradio's default
    # for a click, "once", dropped the press); SessionRuns then stops the older run.
    STREAMING = dict(show_progress="minimal", show_progress_on=[status], trigger_mode="multiple")
    outputs = [text, graph, table, status, run_state, run_json, json_btn, html_btn, timeline, compare, scrub]
    # the page's runs: the same frames without the run JSON and the timeline (ui/handlers.PAGE_LEAVES_OUT),
    # which are hundreds of KB each and sent whole; the timeline follows a run if it is open
    page_outputs = [text, graph, table, status, run_state, json_btn, html_btn, compare, scrub, notes]
    # a new run clears the last run's JSON, timeline and comparison, and re-sends what did not change
    # rather than skipping it (a skip costs Gradio a new component per output per frame)
    HANDLERS.resend_at_start(outputs, {run_json: None, json_btn: json_btn.value, html_btn: html_btn.value,
                                       timeline: "", compare: ""})
    # preprocess=False: every input reaches _request_from_inputs as sent, which clamps
    # or ignores it with a notice, so no API value (a string for a number, a value
    # not in a dropdown) ends in a bare error.
    run_event = run_btn.click(HANDLERS.generate_for_page, inputs, page_outputs, api_visibility="private",
                              concurrency_id="generate", preprocess=False, **STREAMING)
    api_event = api_run.click(HANDLERS.generate_for_session, inputs, outputs, api_name="generate",
                              concurrency_id="generate", preprocess=False, **STREAMING)
    submit_event = prompt.submit(HANDLERS.generate_for_page, inputs, page_outputs, api_visibility="private",
                                 concurrency_id="generate", preprocess=False, **STREAMING)
    steer_event = steer_btn.click(HANDLERS.generate_for_page, inputs, page_outputs, api_visibility="private",
                                  concurrency_id="generate", preprocess=False, **STREAMING)
    # Stop cancels the events; the status line keeps the last frame a run sent, so the
    # page itself says the run was stopped (a new run's frames replace it)
    stop_btn.click(None, None, None, js=MARK_STOPPED, cancels=[run_event, submit_event, steer_event, api_event])
    for event in (run_event, submit_event, steer_event):
        event.then(HANDLERS.after_run, [run_state, timeline_open], [replay_btn, timeline], api_visibility="private")
    timeline_box.expand(HANDLERS.open_timeline, run_state, [timeline_open, timeline], api_visibility="private")
    timeline_box.collapse(lambda: False, None, timeline_open, api_visibility="private")
    add_steer_btn.click(HANDLERS.add_steer, [run_state, steer_feature, steer_strength, steer_box, inspected_state],
                        steer_box, api_visibility="private")
    clear_steer_btn.click(lambda: "", None, steer_box, api_visibility="private")
    edge_kind.change(HANDLERS.redraw, [run_state, edge_kind], graph, api_visibility="private")
    at_outputs = [graph, text, table, timeline, scrub, notes]
    scrub.input(HANDLERS.scrub_to, [run_state, scrub, timeline_open], at_outputs, api_visibility="private",
                trigger_mode="always_last")
    text.select(HANDLERS.highlight_token, [run_state, timeline_open], at_outputs, api_visibility="private")
    timeline.select(HANDLERS.highlight_token, [run_state, timeline_open], at_outputs, api_visibility="private")
    link_btn.click(HANDLERS.share_link, [run_state] + inputs[:13] + [layers, watch_box], link_box,
                   api_visibility="private")
    model.change(HANDLERS.releases_for, model, [release, sae_id], api_visibility="private")
    release.input(HANDLERS.sae_ids_for, release, sae_id, api_visibility="private")
    sae_id.input(HANDLERS.load_choice, [release, sae_id], status, api_visibility="private")
    sae_id.change(HANDLERS.layers_for, [release, sae_id, layers], layers, api_visibility="private")
    why_btn.click(HANDLERS.decision_gradient, [run_state, vs_req], notes, api_visibility="private", concurrency_id="depth",
                  concurrency_limit=2)
    measure_btn.click(HANDLERS.decision_measured, [run_state, vs_req], notes, api_visibility="private", concurrency_id="depth",
                      concurrency_limit=2)
    fork_event = fork_req.change(HANDLERS.fork_run, [run_state, fork_req], fork_view, api_visibility="private",
                                concurrency_id="fork", concurrency_limit=4, trigger_mode="always_last")
    causal_btn.click(HANDLERS.causal_for_token, run_state, [graph, edge_kind, causal_table, causal_note],
                     api_visibility="private", concurrency_id="depth", concurrency_limit=2)
    prefetch_btn.click(HANDLERS.prefetch_labels, [release, sae_id, prefetch_evidence], status,
                       api_visibility="private")
    inspector_outputs = [inspector_head, inspector_plot, neighbours, pushes, text, steer_feature, evidence_box,
                         inspected_state, evidence_timer]
    evidence_timer.tick(HANDLERS.refresh_evidence, [inspected_state, run_state], [evidence_box, evidence_timer],
                        api_visibility="private", show_progress="hidden")
    table.select(HANDLERS.inspect_from_table, run_state, inspector_outputs, api_visibility="private")
    find_inputs, find_outputs = [run_state, find_box, release, sae_id], [find_table, find_note]
    find_btn.click(HANDLERS.find_feature, find_inputs, find_outputs, api_name="find_feature", trigger_mode="always_last")
    find_box.submit(HANDLERS.find_feature, find_inputs, find_outputs, api_visibility="private",
                    trigger_mode="always_last")
    find_table.select(HANDLERS.inspect_from_found, [run_state, release, sae_id], inspector_outputs,
                      api_visibility="private")
    graph.select(HANDLERS.inspect_from_graph, run_state, inspector_outputs, api_visibility="private")
    # the watch list: a search result is pinned by its click; a table row or graph node by the Watch button
    find_table.select(HANDLERS.watch_from_found, [run_state, watch_box, sae_id], watch_box, api_visibility="private")
    table.select(HANDLERS.pick_from_table, run_state, picked_state, api_visibility="private")
    graph.select(HANDLERS.pick_from_graph, run_state, picked_state, api_visibility="private")
    watch_btn.click(HANDLERS.watch_picked, [run_state, picked_state, watch_box, sae_id], watch_box,
                    api_visibility="private")
    clear_watch_btn.click(lambda: "", None, watch_box, api_visibility="private")
    for button, file, kind in ((json_btn, json_file, "json"), (html_btn, html_file, "html"),
                               (replay_btn, replay_file, "replay")):
        button.click(HANDLERS.download_for(kind), run_state, file,
                     api_visibility="private").then(None, file, None, js=SAVE_FILE)
    gr.api(HANDLERS.engine_stats, api_name="engine_stats", api_visibility="undocumented")
    load_event = demo.load(HANDLERS.from_query, None,
                           inputs[:13] + [autorun_state, at_state, embed_open, layers, watch_box, fork_state],
                           api_visibility="private")
    autorun_event = load_event.then(HANDLERS.autorun_generation, [autorun_state] + inputs, page_outputs,
                                    api_visibility="private", concurrency_id="generate", **STREAMING)
    autorun_event.then(HANDLERS.after_run, [run_state, timeline_open], [replay_btn, timeline],
                       api_visibility="private")
    link_fork_event = autorun_event.then(HANDLERS.fork_from_link, [run_state, fork_state], fork_view,
                                         api_visibility="private", concurrency_id="fork")
    stop_btn.click(None, None, None, cancels=[autorun_event, fork_event, link_fork_event])

HANDLERS.page = demo  # its per-session state is trimmed after each run (ui/gradio_state.py)
demo.queue(default_concurrency_limit=SERVICES.settings.concurrency, max_size=SERVICES.settings.queue_size)


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

// AXON's live graph: the graph player (assets/player.js, prepended to this file by
// app.py) fed by the server's delta log. Runs as gr.HTML's js_on_load: `element`,
// `props`, `trigger`, `watch` are given.
//
// The component's value is a log (axon_core/deltas.py): a header line, then one
// JSON delta per line, only ever growing within an epoch, so Gradio streams each
// frame as an append of its new lines. Each value received is applied from where
// the last one ended; a value with another header (a scrub, a new run, a full
// state) resets the player; a shorter value of the same epoch holds nothing new.
// The player draws the newest state at most once per animation frame.
//
// While a pointer is down on the plot (a person orbiting, panning or zooming) the
// player holds its draws (deltas are still applied) and draws the newest state
// when the gesture ends: a Plotly call in mid-drag cuts the gesture off.
// A click on a node sends its key as a select event.
const div = element.querySelector(".axon-plot");
window.__axonFrames = window.__axonFrames || 0;
window.__axonFrameTimes = window.__axonFrameTimes || [];  // when each graph frame was drawn (ms)
// Counts the tests read instead of wall time: values that reached the graph, states
// drawn, draws put off during a gesture, deltas applied, bytes of log read, resets.
window.__axonGraphCounts = window.__axonGraphCounts ||
  { received: 0, drawn: 0, stale: 0, held: 0, caughtUp: true, applied: 0, bytes: 0, resets: 0 };
const counts = window.__axonGraphCounts;
const HEADER = "AXON-DELTAS/1 ";
let head = null, offset = 0, player = null, latest = null;

function makePlayer(opts) {
  opts.onDrawn = (p) => {  // counts for the tests and the benchmark
    window.__axonFrames += 1;
    window.__axonFrameTimes.push(performance.now());
    counts.drawn += 1;
    counts.caughtUp = offset === (latest || "").length && !p._pending && !p._again && !p._held;
    bindClicks();
  };
  opts.onHeld = (p) => { counts.held = p.stats.held; counts.caughtUp = false; };
  return new window.AxonPlayer(div, opts);
}

function bindClicks() {
  if (div.__axonBound || !div.on) return;
  div.__axonBound = true;
  div.on("plotly_click", (ev) => {
    const p = ev && ev.points && ev.points[0];
    if (p && p.customdata !== undefined && p.customdata !== null) {
      trigger("select", { index: p.customdata, value: p.customdata, selected: true });
    }
  });
}

function take(value) {
  if (!value || !value.startsWith(HEADER)) return;
  if (!window.AxonPlayer || !window.Plotly) { setTimeout(() => take(props.value), 100); return; }
  const nl = value.indexOf("\n");
  const line = value.slice(0, nl);
  if (line !== head) {  // a new epoch: the full state follows
    const h = JSON.parse(line.slice(HEADER.length));
    const opts = { planes: h.planes, decay: h.decay, q: h.q, qa: h.qa, style: h.style };
    if (!player) player = makePlayer(opts);
    else player.configure(opts);
    window.__axonPlayer = player;
    player.reset(null);
    head = line; offset = nl + 1;
    counts.resets += 1;
  }
  if (value.length <= offset) { counts.caughtUp = !player._pending && !player._drawing; return; }
  const end = value.lastIndexOf("\n") + 1;  // whole lines only
  const text = value.slice(offset, end);
  offset = end;
  counts.bytes += text.length;
  for (const row of text.split("\n")) {
    if (!row) continue;
    player.apply(JSON.parse(row));
    counts.applied += 1;
  }
}

// A gesture: from a button pressed on the plot until it is released (anywhere),
// cancelled, or the pointer leaves the plot (Plotly ends its drag there too).
let held = false;
function hold() { if (!held) { held = true; if (player) player.hold(true); } }
function release() {
  if (!held) return;
  if (player) counts.held = player.stats.held || 0;
  held = false;
  // in the next animation frame: after Plotly's own mouseup has saved the camera
  requestAnimationFrame(() => { if (player) player.hold(false); });
}
div.addEventListener("pointerdown", hold, true);
div.addEventListener("pointermove", (ev) => { if (ev.buttons) hold(); else release(); }, true);
div.addEventListener("pointerleave", release, true);
window.addEventListener("pointerup", release, true);
window.addEventListener("pointercancel", release, true);
window.addEventListener("blur", release);

function received() {
  const value = props.value;
  if (!value || value === latest) return;
  latest = value;
  counts.received += 1;
  counts.caughtUp = false;
  take(value);
}
watch("value", received);
received();

// AXON's timeline: ONE Plotly element for the whole session, updated in place with
// Plotly.react. (The live 3D graph is the graph player: assets/live.js.)
// Runs as gr.HTML's js_on_load: `element`, `props`, `trigger`, `watch` are given.
// A click on a point sends its customdata (a token position) as a select event.
// While a pointer is down on the plot (a person orbiting, panning or zooming),
// frames are held, the newest kept, and drawn when the gesture ends: a
// Plotly.react in mid-drag puts back the camera of the layout and cuts the gesture
// off. When the gesture ends, Plotly saves the person's camera as a GUI edit
// (mouseup on its canvas), and later frames keep it: their layout carries the same
// opening camera and uirevision every time, which Plotly reads as "unchanged by
// the app", so the person's camera wins.
const div = element.querySelector(".axon-plot");
let drawing = false, queued = false, shown = null, held = false;
// plotly.js draws a 3D scene at twice the canvas size by default (plotGlPixelRatio 2)
// whatever the screen: on a screen of device pixel ratio 1 that is four times the
// pixels to render and composite every frame, for nothing the eye can see.
const CONFIG = { displaylogo: false, responsive: true,
                 plotGlPixelRatio: Math.min(2, Math.max(1, window.devicePixelRatio || 1)) };

function bindClicks() {
  if (div.__axonBound) return;
  div.__axonBound = true;
  div.on("plotly_click", (ev) => {
    const p = ev && ev.points && ev.points[0];
    if (p && p.customdata !== undefined && p.customdata !== null) {
      trigger("select", { index: p.customdata, value: p.customdata, selected: true });
    }
  });
}

function draw() {
  queued = false;
  if (drawing) return;  // the running draw reschedules itself when it ends
  const value = props.value;
  if (!value || value === shown) return;
  if (held) return;  // drawn when the gesture ends
  if (!window.Plotly) { setTimeout(schedule, 100); return; }  // plotly.min.js still loading
  let fig;
  try { fig = JSON.parse(value); } catch (e) { shown = value; return; }
  drawing = true;
  shown = value;
  window.Plotly.react(div, fig.data, fig.layout, CONFIG)
    .then(bindClicks)
    .catch((e) => console.error("AXON: Plotly.react failed", e))
    .finally(() => {
      drawing = false;
      if (props.value !== shown) schedule();
    });
}

// Throttle: at most one draw queued or running, and it always takes the newest
// value, so frames arriving during a draw are skipped, and none is drawn twice.
function schedule() {
  if (drawing || queued) return;
  queued = true;
  requestAnimationFrame(draw);
}

// A gesture: from a button pressed on the plot until it is released (anywhere),
// cancelled, or the pointer leaves the plot (Plotly ends its drag there too).
function hold() { held = true; }
function release() {
  if (!held) return;
  held = false;
  schedule();  // in the next animation frame: after Plotly's own mouseup has saved the camera
}
div.addEventListener("pointerdown", hold, true);
div.addEventListener("pointermove", (ev) => { if (ev.buttons) hold(); else release(); }, true);
div.addEventListener("pointerleave", release, true);
window.addEventListener("pointerup", release, true);
window.addEventListener("pointercancel", release, true);
window.addEventListener("blur", release);

watch("value", schedule);
schedule();

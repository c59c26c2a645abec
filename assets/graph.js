// AXON's plots (the 3D graph, the timeline): ONE Plotly element per component for
// the whole session, updated in place with Plotly.react, so the camera
// (uirevision) and the WebGL context survive frames.
// Runs as gr.HTML's js_on_load: `element`, `props`, `trigger`, `watch` are given.
// A click on a point sends its customdata (feature index, or token position) as a
// select event.
// While a pointer is down on the plot (a person orbiting, panning or zooming),
// frames are held, the newest kept, and drawn when the gesture ends: a
// Plotly.react in mid-drag puts back the camera of the layout and cuts the gesture
// off. When the gesture ends, Plotly saves the person's camera as a GUI edit
// (mouseup on its canvas), and later frames keep it: their layout carries the same
// opening camera and uirevision every time, which Plotly reads as "unchanged by
// the app", so the person's camera wins.
const div = element.querySelector(".axon-plot");
const isGraph = div.classList.contains("axon-graph");
let drawing = false, queued = false, shown = null, held = false;
// plotly.js draws a 3D scene at twice the canvas size by default (plotGlPixelRatio 2)
// whatever the screen: on a screen of device pixel ratio 1 that is four times the
// pixels to render and composite every frame, for nothing the eye can see.
const CONFIG = { displaylogo: false, responsive: true,
                 plotGlPixelRatio: Math.min(2, Math.max(1, window.devicePixelRatio || 1)) };
window.__axonFrames = window.__axonFrames || 0;
window.__axonFrameTimes = window.__axonFrameTimes || [];  // when each graph frame was drawn (ms)
// Counts the tests read instead of wall time: values that reached the graph, values
// drawn, draws that started on a value older than the newest one received, and
// draws put off because a gesture was under way.
window.__axonGraphCounts = window.__axonGraphCounts || { received: 0, drawn: 0, stale: 0, held: 0, caughtUp: true };
const counts = window.__axonGraphCounts;
let latest = props.value || null;  // the newest value this element has been given
if (isGraph && latest) { counts.received += 1; counts.caughtUp = false; }

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
  if (held) { if (isGraph) counts.held += 1; return; }  // drawn when the gesture ends
  if (!window.Plotly) { setTimeout(schedule, 100); return; }  // plotly.min.js still loading
  let fig;
  try { fig = JSON.parse(value); } catch (e) { shown = value; return; }
  drawing = true;
  shown = value;
  if (isGraph && value !== latest) counts.stale += 1;
  window.Plotly.react(div, fig.data, fig.layout, CONFIG)
    .then(() => {
      if (isGraph) {
        window.__axonFrames += 1;
        window.__axonFrameTimes.push(performance.now());
        counts.drawn += 1;
        counts.caughtUp = props.value === value;
      }
      bindClicks();
    })
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

watch("value", () => {
  if (isGraph && props.value && props.value !== latest) {
    latest = props.value;
    counts.received += 1;
    counts.caughtUp = false;
  }
  schedule();
});
schedule();

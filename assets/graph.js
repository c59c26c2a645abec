// AXON's plots (the 3D graph, the timeline): ONE Plotly element per component for
// the whole session, updated in place with Plotly.react, so the camera
// (uirevision) and the WebGL context survive frames.
// Runs as gr.HTML's js_on_load: `element`, `props`, `trigger`, `watch` are given.
// A click on a point sends its customdata (feature index, or token position) as a
// select event.
const div = element.querySelector(".axon-plot");
const isGraph = div.classList.contains("axon-graph");
let drawing = false, pending = false;
window.__axonFrames = window.__axonFrames || 0;

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
  if (!window.Plotly || !props.value) return;
  let fig;
  try { fig = JSON.parse(props.value); } catch (e) { return; }
  drawing = true; const __t=performance.now(); window.__dbg.push([Math.round(__t), "draw", props.value.length]);
  window.Plotly.react(div, fig.data, fig.layout, { displaylogo: false, responsive: true })
    .then(() => {
      if (isGraph) window.__axonFrames += 1;
      bindClicks();
    })
    .finally(() => {
      drawing = false;
      if (pending) { pending = false; requestAnimationFrame(draw); }
    });
}

// Throttle: while a frame is being drawn, keep only the newest one.
function schedule() {
  (window.__dbg = window.__dbg || []).push([Math.round(performance.now()), "watch", (props.value||"").length, drawing]);
  if (drawing) { pending = true; return; }
  requestAnimationFrame(draw);
}

watch("value", schedule);
schedule();

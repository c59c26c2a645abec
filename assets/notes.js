// Under the text (gr.HTML's js_on_load: `element`, `props`, `trigger`, `watch` given):
// the watch list's sparklines and the decision strip, apart from the text so that
// the text only grows during a run.
// The decision strip (axon_core/strip.py): a click on a candidate shows what
// pushed the choice rather than that one (computed with the run, no request).
// The choice is kept while the strip shows the same token (a redraw of the notes),
// and written to a hidden textbox (#axon-vs-req, "position:token") that the
// gradient and measured buttons read: they are then computed against it.
const applyVs = () => {
  const strip = element.querySelector(".axon-decision");
  if (!strip || strip.dataset.pos !== element.dataset.vsPos) return;
  const j = element.dataset.vsJ;
  strip.querySelectorAll(".axon-cand").forEach((b) => b.classList.toggle("vs", b.dataset.j === j));
  strip.querySelectorAll(".dec-push").forEach((d) => d.classList.toggle("off", d.dataset.j !== j));
};
// "colour the graph by push": the graph player colours the deciding token's features by
// their push against the candidate compared (the block shown), until clicked again
const applyTint = () => {
  const on = element.dataset.tint === "1", player = window.__axonPlayer;
  const strip = element.querySelector(".axon-decision");
  const btn = strip && strip.querySelector(".axon-tint");
  if (btn) {
    const text = on ? "graph coloured by push (teal: for the choice, red: against) · click for brightness"
                    : "colour the graph by push (for / against)";
    // only what changed: a write here is a mutation the observer below answers
    if (btn.classList.contains("on") !== on) btn.classList.toggle("on", on);
    if (btn.textContent !== text) btn.textContent = text;
  }
  if (!player || !player.tint) return;
  const shown = strip && strip.querySelector(".dec-push:not(.off)");
  let push = null;
  try { push = on && shown ? JSON.parse(shown.dataset.push) : null; } catch (e) { push = null; }
  player.tint(push);
};
element.addEventListener("click", (ev) => {
  if (!ev.target.closest(".axon-tint")) return;
  element.dataset.tint = element.dataset.tint === "1" ? "0" : "1";
  applyTint();
});
element.addEventListener("click", (ev) => {
  const cand = ev.target.closest(".axon-cand");
  if (!cand || cand.classList.contains("chosen")) return;
  element.dataset.vsPos = cand.closest(".axon-decision").dataset.pos;
  element.dataset.vsJ = cand.dataset.j;
  applyVs();
  applyTint();
  const box = document.querySelector("#axon-vs-req textarea, #axon-vs-req input");
  if (box && cand.dataset.tok) {
    box.value = `${element.dataset.vsPos}:${cand.dataset.tok}`;
    box.dispatchEvent(new Event("input", { bubbles: true }));
  }
});
new MutationObserver(() => { applyVs(); applyTint(); }).observe(element, { childList: true, subtree: true });

// Forks (axon_core/page/fork.py): the "fork" button beside a candidate, or a shift-click on
// the candidate, asks the server to fork the run there with that token. The
// request goes through a hidden textbox (#axon-fork-req) as "position:token:nonce"
// (the nonce: the same fork clicked twice is asked twice; the engine computes it once).
element.addEventListener("click", (ev) => {
  const btn = ev.target.closest(".axon-fork");
  const cand = btn ? null : ev.target.closest(".axon-cand");
  if (!btn && !(cand && ev.shiftKey && !cand.classList.contains("chosen"))) return;
  const src = btn || cand.parentElement.querySelector(".axon-fork");
  if (!src) return;
  ev.stopPropagation();
  const box = document.querySelector("#axon-fork-req textarea, #axon-fork-req input");
  if (!box) return;
  box.value = `${src.dataset.pos}:${src.dataset.tok}:${Date.now()}`;
  box.dispatchEvent(new Event("input", { bubbles: true }));
}, true);

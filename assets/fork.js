// The fork panel (axon_core/page/compare.py's fork_html; gr.HTML's js_on_load: `element` given):
// each column is a box of whole lines that scrolls, and the fork point may be far down it
// (token 121 of 128). Each time the panel is drawn (a new frame replaces it while the fork
// writes), every column is scrolled so that its first diverging token (.tok.diverge, marked)
// sits a third of the way down the box: the two continuations are read from where they part.
// A box already scrolled this way is left alone, so a person's own scrolling is kept until
// the next frame replaces the panel.
const showDivergence = () => {
  element.querySelectorAll(".axon-compare-fork .cols .axon-text").forEach((box) => {
    if (box.dataset.atDiverge === "1") return;
    const tok = box.querySelector(".tok.diverge");
    if (!tok || box.clientHeight === 0) return;
    const b = box.getBoundingClientRect(), t = tok.getBoundingClientRect();
    box.scrollTop = Math.max(0, box.scrollTop + (t.top - b.top) - box.clientHeight / 3);
    box.dataset.atDiverge = "1";
  });
};
new MutationObserver(showDivergence).observe(element, { childList: true, subtree: true });
showDivergence();

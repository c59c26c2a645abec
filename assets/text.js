// The generated text, drawn here rather than by Gradio's HTML component: a
// running view's value only grows (the spans of the new tokens are appended to
// the last value, see RunSession.tokens_html), so each update inserts just
// those spans; any other value (a scrub mark, labels that arrived, a new run)
// is drawn whole. Gradio's own update would parse and compare every token's
// span on every frame, the page's largest cost while a run streams on a phone.
//
// Clicking a token of the generated text sends its position as a select event,
// which rings that token's features in the 3D graph and marks it in the timeline.
const host = element.querySelector(".axon-text-host") || element;
const OPEN = '<div class="axon-text">';
let shown = null;
window.__axonTextCounts = window.__axonTextCounts || { appended: 0, whole: 0 };

function render() {
  const value = props.value == null ? "" : String(props.value);
  if (value === shown) return;
  const box = host.firstElementChild;
  // an unclosed text (a running view's) that the new value extends: append its new spans
  if (shown !== null && box && shown.startsWith(OPEN) && !shown.endsWith("</div>") &&
      value.length > shown.length && value.startsWith(shown)) {
    // a reader at the end keeps following the newest line; one who scrolled up stays put
    const follow = box.scrollTop + box.clientHeight >= box.scrollHeight - 4;
    box.insertAdjacentHTML("beforeend", value.slice(shown.length));
    if (follow) box.scrollTop = box.scrollHeight;
    window.__axonTextCounts.appended += 1;
  } else {
    const top = box ? box.scrollTop : 0;
    host.innerHTML = value;  // the server's HTML: labels escaped there (RunSession._span)
    const now = host.firstElementChild, here = now && now.querySelector(".tok.here");
    if (now) now.scrollTop = top;
    if (here) here.scrollIntoView({ block: "nearest" });
    window.__axonTextCounts.whole += 1;
  }
  shown = value;
}

element.addEventListener("click", (ev) => {
  const tok = ev.target.closest(".tok");
  if (!tok || tok.dataset.pos === undefined) return;
  const pos = Number(tok.dataset.pos);
  trigger("select", { index: pos, value: pos, selected: true });
});
watch("value", render);
render();

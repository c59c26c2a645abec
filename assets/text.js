// Clicking a token of the generated text sends its position as a select event,
// which rings that token's features in the 3D graph and marks it in the timeline.
element.addEventListener("click", (ev) => {
  const tok = ev.target.closest(".tok");
  if (!tok || tok.dataset.pos === undefined) return;
  const pos = Number(tok.dataset.pos);
  trigger("select", { index: pos, value: pos, selected: true });
});

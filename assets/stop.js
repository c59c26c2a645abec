// Stop (app.py: the Stop button's js): the status line still holds the last frame the run sent
// ("running"); mark it stopped in the page. Frames of the run already on their way are marked
// too, until the person acts again (a click elsewhere, a key, or 10 s); the next run's frames
// replace the line.
() => {
  const box = document.getElementById('axon-status');
  if (!box) return;
  const mark = () => {
    for (const b of box.querySelectorAll('.axon-state[data-state="running"]')) {
      b.dataset.state = 'stopped';
      b.insertAdjacentText('afterend', ' \u00b7 stopped');
    }
  };
  mark();
  // frames already on their way still arrive: marked too, until the person acts again
  if (window.__axonStopped) window.__axonStopped();
  const obs = new MutationObserver(mark);
  obs.observe(box, {childList: true, subtree: true, characterData: true});
  const other = (e) => {
    const b = e.target && e.target.closest && e.target.closest('button');
    if (e.type === 'keydown' || !b || b.textContent.trim() !== 'Stop') window.__axonStopped();
  };
  const timer = setTimeout(() => window.__axonStopped(), 10000);
  window.__axonStopped = () => {
    obs.disconnect(); clearTimeout(timer); window.__axonStopped = null;
    document.removeEventListener('click', other, true); document.removeEventListener('keydown', other, true);
  };
  document.addEventListener('click', other, true);
  document.addEventListener('keydown', other, true);
}

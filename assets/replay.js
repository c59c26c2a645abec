/* The replay page: reads the recorded run (JSON in #axon-replay), shows its text token by
 * token at the recorded pace (play / pause / speed), and drives an AxonPlayer with the
 * run's deltas; the slider and clicks on tokens scrub. The pace is the recorded one, by
 * the clock: a page too busy to draw every token skips to the token that is due.
 * window.__axonReplay exposes {player, data, play, pause, seek, playing} for tests and benchmarks.
 * Every piece of text from the run is set with textContent (never parsed as HTML).
 */
(function () {
  "use strict";
  var data = JSON.parse(document.getElementById("axon-replay").textContent);
  var frames = data.frames, meta = data.meta;
  var $ = function (id) { return document.getElementById(id); };
  var text = $("text"), slider = $("slider"), playBtn = $("play"), speed = $("speed"), where = $("where");
  var labelOf = [], nameOf = [];  // per node number, for token hovers
  frames.forEach(function (f) {
    (f.n || []).forEach(function (n) {
      nameOf.push(n[0]);
      labelOf.push(n[1] == null ? "Feature " + String(n[0]).replace(/^.*#/, "") : n[1]);
    });
  });

  $("title").textContent = meta.prompt || "AXON replay";
  var parts = [meta.model, meta.saes && meta.saes.length > 1 ? meta.saes.join(", ") : (meta.release + " / " + meta.sae_id)];
  var s = meta.settings || {};
  parts.push(["temperature", "top_k", "top_p", "seed", "max_new_tokens"].filter(function (k) { return s[k] != null; })
             .map(function (k) { return k + " " + s[k]; }).join(" \u00b7 "));
  if (meta.steer && meta.steer.length) parts.push("steer " + meta.steer.map(function (x) { return x.join(":"); }).join(","));
  parts.push(frames.length + " tokens \u00b7 " + meta.ms_per_token + " ms/token");
  $("meta").textContent = parts.filter(Boolean).join(" \u00b7 ");
  var live = $("live");
  if (/^https?:\/\//.test(meta.link || "")) live.href = meta.link; else live.remove();
  slider.max = String(frames.length - 1);

  function tokenTitle(tok) {
    var f = tok.f, top = [];
    for (var i = 0; i < f.length && top.length < 5; i += 2) {
      top.push((labelOf[f[i]] || nameOf[f[i]]) + " (" + (f[i + 1] / data.qa).toFixed(1) + ")");
    }
    return "pos " + tok.p + (tok.prob != null ? " \u00b7 p=" + tok.prob.toFixed(3) : "") + " \u00b7 " +
      (top.length ? top.join(", ") : "no features");
  }

  // every token's span is made once; those after the shown token are "ahead": hidden
  // until the run has been seen to its end, then dimmed (and still clickable)
  var spans = frames.map(function (f, k) {
    var span = document.createElement("span");
    span.className = "tok ahead " + (f.pr ? "prompt" : "gen") + (f.t ? "" : " part");
    span.textContent = f.t.replace(/\n/g, "\u21b5\n");
    span.title = tokenTitle({p: f.p, prob: f.pb == null ? null : f.pb, f: f.f || []});
    span.dataset.k = String(k);
    return span;
  });
  var fragment = document.createDocumentFragment();
  spans.forEach(function (sp) { fragment.appendChild(sp); });
  text.appendChild(fragment);

  var player = new window.AxonPlayer($("graph"), {  // drawn on a 2D canvas: no plotly.js on this page
    planes: data.planes, decay: data.decay, q: data.q, qa: data.qa, style: data.style, renderer: "canvas"
  });
  player.load(frames);

  var timer = null, playing = false, shown = -1, here = null;
  function show(k) {
    k = player.seek(k);
    var lo = Math.min(shown, k) + 1, hi = Math.max(shown, k);
    for (var i = lo; i <= hi; i++) spans[i].classList.toggle("ahead", i > k);  // only what changed
    shown = k;
    if (k >= frames.length - 1) document.body.classList.add("seen");
    if (here) here.classList.remove("here");
    here = !playing && spans[k] ? spans[k] : null;
    if (here) here.classList.add("here");
    slider.value = String(Math.max(0, k));
    where.textContent = (k + 1) + " / " + frames.length;
    if (here) here.scrollIntoView({block: "nearest"});
    else if (playing && spans[k] && spans[k].offsetTop + spans[k].offsetHeight > text.scrollTop + text.clientHeight) {
      text.scrollTop = spans[k].offsetTop + spans[k].offsetHeight - text.clientHeight;
    }
    return k;
  }
  // the recorded pace: token k is due times[k] ms after the first (at 1×); a busy page
  // skips to the token that is due rather than falling behind
  var times = [], acc = 0;
  frames.forEach(function (f, k) { if (k) acc += f.pr ? meta.prompt_ms : meta.ms_per_token; times.push(acc); });
  var origin = 0;
  function rate() { return Number(speed.value || 1); }
  function now() { return (window.performance && performance.now) ? performance.now() : Date.now(); }
  function tick() {
    var elapsed = (now() - origin) * rate(), k = player.at;
    while (k + 1 < frames.length && times[k + 1] <= elapsed) k++;
    if (k > player.at) show(k);
    if (k >= frames.length - 1) { pause(); return; }
    timer = setTimeout(tick, Math.max(0, (times[k + 1] - elapsed) / rate()));
  }
  function play() {
    if (playing) return;
    if (player.at >= frames.length - 1) show(-1);
    playing = true;
    player.hover(false);
    playBtn.textContent = "Pause";
    document.body.dataset.state = "playing";
    origin = now() - times[player.at + 1] / rate();  // the next token is due now
    tick();
  }
  function pause() {
    playing = false;
    player.hover(true);
    clearTimeout(timer);
    playBtn.textContent = "Play";
    document.body.dataset.state = player.at >= frames.length - 1 ? "done" : "paused";
    show(player.at);
  }
  var lastRate = rate();
  speed.addEventListener("change", function () {  // same place in the run, new pace
    var t = now();
    origin = t - (t - origin) * lastRate / rate();
    lastRate = rate();
    if (playing) { clearTimeout(timer); tick(); }
  });
  playBtn.addEventListener("click", function () { if (playing) pause(); else play(); });
  slider.addEventListener("input", function () { if (playing) pause(); show(Number(slider.value)); });
  text.addEventListener("click", function (ev) {
    var t = ev.target.closest ? ev.target.closest(".tok") : null;
    if (!t) return;
    if (playing) pause();
    show(Number(t.dataset.k));
  });

  // a fork shown beside the run in the app (data.fork, axon_core/replay.py fork_data):
  // both continuations from the fork point, side by side, and a link that reopens it live
  var fork = data.fork, forkBox = $("fork");
  if (fork && forkBox) {
    var el = function (tag, cls, txt) {
      var e = document.createElement(tag);
      if (cls) e.className = cls;
      if (txt != null) e.textContent = txt;
      return e;
    };
    var q = function (t) { return "\u201c" + String(t).replace(/\n/g, "\u21b5") + "\u201d"; };
    var head = el("div", "fork-head");
    head.appendChild(el("strong", null, "Fork"));
    head.appendChild(document.createTextNode(" at token " + fork.p + ": " + q(fork.t) + " instead of " +
                                             q(fork.was) + " "));
    if (/^https?:\/\//.test(fork.link || "")) {
      var a = el("a", null, "open the fork live");
      a.href = fork.link; a.target = "_blank"; a.rel = "noopener";
      head.appendChild(a);
    }
    forkBox.appendChild(head);
    var cols = el("div", "fork-cols");
    [["as run", fork.run], ["forked", fork.fork]].forEach(function (pair) {
      var col = el("div", "fork-col");
      col.appendChild(el("i", null, pair[0]));
      col.appendChild(el("div", "fork-text", pair[1]));
      cols.appendChild(col);
    });
    forkBox.appendChild(cols);
    forkBox.hidden = false;
    if (spans[fork.k]) {
      spans[fork.k].classList.add("forked");
      spans[fork.k].title += " \u00b7 forked here: " + q(fork.t);
    }
    head.addEventListener("click", function (ev) {
      if (ev.target.closest && ev.target.closest("a")) return;
      if (playing) pause();
      show(fork.k);
    });
  }

  window.__axonReplay = {player: player, data: data, play: play, pause: pause, seek: show,
                         playing: function () { return playing; }};
  var auto = !/[?&]autoplay=0\b/.test(location.search);
  if (auto) play(); else show(frames.length - 1);
})();

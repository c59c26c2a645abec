/* The replay page: reads the recorded run (JSON in #axon-replay), shows its text token by
 * token at the recorded pace (play / pause / speed), and drives an AxonPlayer with the
 * run's deltas; the slider and clicks on tokens scrub. window.__axonReplay exposes
 * {player, data, play, pause, seek, playing} for tests and benchmarks.
 * Every piece of text from the run is set with textContent (never parsed as HTML).
 */
(function () {
  "use strict";
  var data = JSON.parse(document.getElementById("axon-replay").textContent);
  var frames = data.frames, meta = data.meta;
  var $ = function (id) { return document.getElementById(id); };
  var text = $("text"), slider = $("slider"), playBtn = $("play"), speed = $("speed"), where = $("where");
  var spans = [];
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

  function onToken(tok, k) {
    var span = document.createElement("span");
    span.className = "tok " + (tok.prompt ? "prompt" : "gen") + (tok.text ? "" : " part");
    span.textContent = tok.text.replace(/\n/g, "\u21b5\n");
    span.title = tokenTitle(tok);
    span.dataset.k = String(k);
    text.appendChild(span);
    spans.push(span);
  }
  function onReset() { text.textContent = ""; spans = []; }

  var player = new window.AxonPlayer($("graph"), {
    planes: data.planes, decay: data.decay, q: data.q, qa: data.qa, style: data.style,
    onToken: onToken, onReset: onReset
  });
  player.load(frames);

  var timer = null, playing = false;
  function show(k) {
    k = player.seek(k);
    slider.value = String(Math.max(0, k));
    spans.forEach(function (sp, i) { sp.classList.toggle("here", i === k && !playing); });
    where.textContent = (k + 1) + " / " + frames.length;
    if (!playing && spans[k]) spans[k].scrollIntoView({block: "nearest"});
    else text.scrollTop = text.scrollHeight;
    return k;
  }
  function delay(k) {
    var f = frames[k];
    return (f && f.pr ? meta.prompt_ms : meta.ms_per_token) / Number(speed.value || 1);
  }
  function tick() {
    var k = player.at + 1;
    if (k >= frames.length) { pause(); return; }
    show(k);
    timer = setTimeout(tick, delay(k + 1));
  }
  function play() {
    if (playing) return;
    if (player.at >= frames.length - 1) show(-1);
    playing = true;
    playBtn.textContent = "Pause";
    document.body.dataset.state = "playing";
    tick();
  }
  function pause() {
    playing = false;
    clearTimeout(timer);
    playBtn.textContent = "Play";
    document.body.dataset.state = player.at >= frames.length - 1 ? "done" : "paused";
    show(player.at);
  }
  playBtn.addEventListener("click", function () { if (playing) pause(); else play(); });
  slider.addEventListener("input", function () { if (playing) pause(); show(Number(slider.value)); });
  text.addEventListener("click", function (ev) {
    var t = ev.target.closest ? ev.target.closest(".tok") : null;
    if (!t) return;
    if (playing) pause();
    show(Number(t.dataset.k));
  });

  window.__axonReplay = {player: player, data: data, play: play, pause: pause, seek: show,
                         playing: function () { return playing; }};
  var auto = !/[?&]autoplay=0\b/.test(location.search);
  if (auto) play(); else show(frames.length - 1);
})();

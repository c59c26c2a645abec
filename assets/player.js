/* AXON graph player: one persistent Plotly 3D scene fed by small deltas.
 *
 * Plain browser JS (needs window.Plotly, nothing else). The replay page feeds it a
 * recorded list of deltas; a live view can feed it deltas from a stream.
 *
 *   var player = new AxonPlayer(element, options);
 *   player.apply(delta);     // apply one delta to the state; draws at the next animation frame
 *   player.reset(full);      // forget everything, then apply(full): a full state is a delta from empty
 *   player.load(deltas);     // keep a recorded list (a replay) ...
 *   player.seek(k);          // ... and show the state after deltas[0..k] (k = -1: empty)
 *   player.drawn();          // what the scene shows now: {names, x, y, z, ring, labels} (for tests)
 *   player.stats;            // {applied, drawn, requested}: deltas applied, frames drawn, draws asked for
 *   player.idle();           // true when the newest state has been drawn
 *
 * options: planes [[z, name], ...] (layers' planes); decay (brightness kept per token,
 * 0.85); q (positions are integers in 1/q, 1000); qa (activations in 1/qa, 100);
 * style {background, colorscale, edges [[name, width, rgba] x3], ring, plane, name,
 * name_chars, eye {x, y, z}}; onToken(token, index) and onReset() for the page's text.
 *
 * A delta (every field optional):
 *   p   the token position the state is at after this delta
 *   t   the token's text (pr: 1 for a prompt token, pb: its probability)
 *   n   new nodes [[name, label, layer, x, y, z], ...], numbered in order of arrival; trailing
 *       nulls may be left out (no x: a node that is never drawn; null label: "Feature N")
 *   f   features firing at p, flat [node, activation*qa, ...]; a node's brightness at p
 *       is its last activation * decay^(p - its last position); its peak and firing count
 *       follow; the nodes firing at p are ringed
 *   m   moved nodes, flat [node, x, y, z, ...]
 *   e   edges added or restyled, flat [a, b, strength 0..2, ...]; r: removed, flat [a, b, ...]
 *   s   the scene names [[node, ax, ay], ...] (replaces the previous ones)
 *   h   the scene's half-width (the cube is [-h, h] on every axis)
 * Several deltas may arrive between two animation frames: only the newest state is drawn.
 * Labels and text are untrusted: Plotly text is escaped here (&, <, >), the page's text
 * is set with textContent.
 */
(function (root) {
  "use strict";

  function inert(label, max) {
    var text = String(label).split(/\s+/).filter(Boolean).join(" ");
    if (text.length > max) text = text.slice(0, max - 1) + "\u2026";
    return text.replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;");
  }

  function AxonPlayer(element, options) {
    this.el = element;
    this.opt = options || {};
    this.style = this.opt.style || {};
    this.decay = this.opt.decay == null ? 0.85 : this.opt.decay;
    this.q = this.opt.q || 1000;
    this.qa = this.opt.qa || 100;
    this.planes = this.opt.planes || [];
    this.deltas = [];
    this.at = -1;
    this.stats = {applied: 0, drawn: 0, requested: 0};
    this._pending = false;
    this._drawing = false;
    this._plotted = false;
    this._clear();
  }

  AxonPlayer.prototype._clear = function () {
    // nodes: columns by node number
    this.nodes = {name: [], label: [], layer: [], x: [], y: [], z: [], lastAct: [], lastPos: [],
                  peak: [], tokens: []};
    this.edges = new Map();  // "a,b" -> [a, b, bucket]
    this.ring = [];
    this.names = [];
    this.half = 1;
    this.p = null;
    this.tokens = [];
  };

  AxonPlayer.prototype.reset = function (full) {
    this._clear();
    if (this.opt.onReset) this.opt.onReset();
    if (full) this.apply(full);
    else this.request();
  };

  AxonPlayer.prototype.apply = function (d) {
    var N = this.nodes, i, k;
    if (d.n) {
      for (i = 0; i < d.n.length; i++) {
        var n = d.n[i];
        N.name.push(n[0]); N.layer.push(n[2] == null ? null : n[2]);
        N.label.push(n[1] == null ? "Feature " + String(n[0]).replace(/^.*#/, "") : n[1]);
        N.x.push(n[3] == null ? null : n[3] / this.q);
        N.y.push(n[4] == null ? null : n[4] / this.q);
        N.z.push(n[5] == null ? null : n[5] / this.q);
        N.lastAct.push(0); N.lastPos.push(null); N.peak.push(0); N.tokens.push(0);
      }
    }
    if (d.p != null) this.p = d.p;
    if (d.f) {
      var fired = new Map();
      for (i = 0; i < d.f.length; i += 2) {  // a feature twice on one token: the stronger counts
        var a = d.f[i + 1] / this.qa;
        if (!fired.has(d.f[i]) || a > fired.get(d.f[i])) fired.set(d.f[i], a);
      }
      this.ring = [];
      var self = this;
      fired.forEach(function (act, node) {
        N.lastAct[node] = act; N.lastPos[node] = self.p;
        N.peak[node] = Math.max(N.peak[node], act); N.tokens[node] += 1;
        if (N.x[node] !== null) self.ring.push(node);
      });
    }
    if (d.m) {
      for (i = 0; i < d.m.length; i += 4) {
        k = d.m[i];
        N.x[k] = d.m[i + 1] / this.q; N.y[k] = d.m[i + 2] / this.q; N.z[k] = d.m[i + 3] / this.q;
      }
    }
    if (d.r) for (i = 0; i < d.r.length; i += 2) this.edges.delete(d.r[i] + "," + d.r[i + 1]);
    if (d.e) for (i = 0; i < d.e.length; i += 3) this.edges.set(d.e[i] + "," + d.e[i + 1], [d.e[i], d.e[i + 1], d.e[i + 2]]);
    if (d.s) this.names = d.s;
    if (d.h != null) this.half = d.h;
    if (d.t != null) {
      var tok = {text: d.t, p: d.p, prompt: !!d.pr, prob: d.pb == null ? null : d.pb, f: d.f || []};
      this.tokens.push(tok);
      if (this.opt.onToken) this.opt.onToken(tok, this.tokens.length - 1);
    }
    this.stats.applied += 1;
    this.request();
  };

  AxonPlayer.prototype.load = function (deltas) {
    this.deltas = deltas || [];
    this.at = -1;
  };

  AxonPlayer.prototype.seek = function (k) {
    k = Math.max(-1, Math.min(this.deltas.length - 1, k | 0));
    if (k < this.at) { this.reset(null); this.at = -1; }
    for (var i = this.at + 1; i <= k; i++) this.apply(this.deltas[i]);
    this.at = k;
    this.request();
    return k;
  };

  AxonPlayer.prototype.activation = function (node) {
    var N = this.nodes;
    if (N.lastPos[node] === null || this.p === null) return 0;
    return Math.max(0, N.lastAct[node] * Math.pow(this.decay, this.p - N.lastPos[node]));
  };

  AxonPlayer.prototype.idle = function () { return this._plotted && !this._pending && !this._drawing; };

  AxonPlayer.prototype.keyName = function (node) { return this.nodes.name[node]; };

  AxonPlayer.prototype.request = function () {
    this.stats.requested += 1;
    if (this._pending) return;
    this._pending = true;
    var self = this;
    (root.requestAnimationFrame || function (f) { return setTimeout(f, 16); })(function () { self._frame(); });
  };

  AxonPlayer.prototype._frame = function () {
    this._pending = false;
    if (this._drawing) { this._again = true; return; }  // a draw in flight: the newest state follows it
    this._drawing = true;
    var self = this, done = function () {
      self._drawing = false;
      self.stats.drawn += 1;
      if (self._again) { self._again = false; self.request(); }
    };
    var fig = this.figure();
    var call = this._plotted ? root.Plotly.react : root.Plotly.newPlot;
    this._plotted = true;
    Promise.resolve(call(this.el, fig.data, fig.layout, fig.config)).then(done, done);
  };

  // The nodes drawn now: placed and seen by p
  AxonPlayer.prototype.visible = function () {
    var N = this.nodes, out = [];
    for (var i = 0; i < N.name.length; i++) if (N.x[i] !== null && N.lastPos[i] !== null) out.push(i);
    return out;
  };

  AxonPlayer.prototype.figure = function () {
    var N = this.nodes, st = this.style, self = this;
    var vis = this.visible(), half = this.half;
    var x = [], y = [], z = [], size = [], color = [], hover = [], peakTop = 0;
    vis.forEach(function (i) {
      var a = self.activation(i);
      x.push(N.x[i]); y.push(N.y[i]); z.push(N.z[i]);
      size.push(Math.round(Math.min(4 + 5 * Math.sqrt(a), 30) * 10) / 10);
      color.push(Math.round(a * 100) / 100);
      peakTop = Math.max(peakTop, N.peak[i]);
      hover.push(inert(N.label[i], 120) + "<br>" + inert(N.name[i], 40) + " \u00b7 now " + a.toFixed(2) +
                 " \u00b7 peak " + N.peak[i].toFixed(2) + " \u00b7 " + N.tokens[i] + " tok");
    });
    var row = new Map();
    vis.forEach(function (i, r) { row.set(i, r); });
    var styles = st.edges || [["edges weak", 1, "rgba(140,160,255,0.12)"], ["edges mid", 2, "rgba(160,180,255,0.30)"],
                               ["edges strong", 3.5, "rgba(200,215,255,0.60)"]];
    var seg = styles.map(function () { return {x: [], y: [], z: []}; });
    this.edges.forEach(function (e) {
      if (!row.has(e[0]) || !row.has(e[1])) return;
      var s = seg[e[2]], a = e[0], b = e[1];
      s.x.push(N.x[a], N.x[b], null); s.y.push(N.y[a], N.y[b], null); s.z.push(N.z[a], N.z[b], null);
    });
    var data = styles.map(function (sty, k) {
      return {type: "scatter3d", mode: "lines", name: sty[0], x: seg[k].x, y: seg[k].y, z: seg[k].z,
              line: {width: sty[1], color: sty[2]}, hoverinfo: "skip", showlegend: false};
    });
    var ring = this.ring.filter(function (i) { return row.has(i); });
    data.push({type: "scatter3d", mode: "markers", name: "features", x: x, y: y, z: z,
               customdata: vis.map(function (i) { return N.name[i]; }), hovertext: hover, hoverinfo: "text",
               marker: {size: size, color: color, colorscale: st.colorscale, cmin: 0,
                        cmax: Math.round((peakTop || 1) * 100) / 100, opacity: 0.95, line: {width: 0}},
               showlegend: false});
    data.push({type: "scatter3d", mode: "markers", name: "active",
               x: ring.map(function (i) { return N.x[i]; }), y: ring.map(function (i) { return N.y[i]; }),
               z: ring.map(function (i) { return N.z[i]; }),
               customdata: ring.map(function (i) { return N.name[i]; }),
               hovertext: ring.map(function (i) { return hover[row.get(i)]; }), hoverinfo: "text",
               marker: {size: ring.map(function (i) { return size[row.get(i)] + 6; }), symbol: "circle-open",
                        color: st.ring, line: {width: 2, color: st.ring}}, showlegend: false});
    var px = [], py = [], pz = [], notes = [];
    this.names.forEach(function (s) {
      var i = s[0];
      if (!row.has(i)) return;
      notes.push({x: N.x[i], y: N.y[i], z: N.z[i], text: inert(N.label[i] || N.name[i], st.name_chars || 28),
                  name: N.name[i], showarrow: true, arrowhead: 0, arrowwidth: 1, arrowcolor: "rgba(255,243,176,0.45)",
                  ax: s[1], ay: s[2], xanchor: s[1] > 0 ? "left" : "right",
                  font: {color: st.name, size: 12}, bgcolor: "rgba(11,15,25,0.7)"});
    });
    this.planes.forEach(function (pl) {
      var c = [[-half, -half], [half, -half], [half, half], [-half, half], [-half, -half]];
      c.forEach(function (v) { px.push(v[0]); py.push(v[1]); pz.push(pl[0]); });
      px.push(null); py.push(null); pz.push(null);
      notes.push({x: half, y: -0.4 * half, z: pl[0], text: inert(pl[1], 40), name: "plane " + pl[1],
                  showarrow: false, xanchor: "left", yshift: 9, font: {color: st.ring, size: 11}});
    });
    data.push({type: "scatter3d", mode: "lines", name: "planes", x: px, y: py, z: pz,
               line: {width: 1.5, color: st.plane}, hoverinfo: "skip", showlegend: false});
    var axis = function () {
      return {visible: false, showbackground: false, showgrid: false, zeroline: false, showticklabels: false,
              title: {text: ""}, range: [-half, half]};
    };
    var layout = {
      paper_bgcolor: st.background, plot_bgcolor: st.background, font: {color: "#d8dcf0"},
      margin: {l: 0, r: 0, t: 0, b: 0}, showlegend: false, uirevision: "axon", hovermode: "closest",
      hoverlabel: {bgcolor: "#1b1f3a", font: {color: "#ffffff"}},
      scene: {xaxis: axis(), yaxis: axis(), zaxis: axis(), aspectmode: "cube", bgcolor: st.background,
              uirevision: "axon", dragmode: "orbit", hovermode: "closest", annotations: notes,
              camera: {eye: st.eye || {x: 0.95, y: 0.95, z: 0.7}}}
    };
    var config = {responsive: true, displaylogo: false, displayModeBar: false,
                  plotGlPixelRatio: Math.min(2, Math.max(1, root.devicePixelRatio || 1))};
    return {data: data, layout: layout, config: config};
  };

  AxonPlayer.prototype.drawn = function () {
    var N = this.nodes, vis = this.visible(), self = this;
    return {
      names: vis.map(function (i) { return N.name[i]; }),
      x: vis.map(function (i) { return N.x[i]; }), y: vis.map(function (i) { return N.y[i]; }),
      z: vis.map(function (i) { return N.z[i]; }),
      ring: this.ring.map(function (i) { return N.name[i]; }),
      labels: this.names.map(function (s) { return N.name[s[0]]; }),
      activation: vis.map(function (i) { return self.activation(i); }),
      p: this.p
    };
  };

  AxonPlayer.inert = inert;
  root.AxonPlayer = AxonPlayer;
})(window);

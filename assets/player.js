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
 *   player.tint(push);       // colour nodes by {key: signed push} (null: by brightness again)
 *   player.hover(on);        // false while states arrive fast (playing, streaming): no hover picking
 *
 * options: planes [[z, name], ...] (layers' planes); decay (brightness kept per token,
 * 0.85); q (positions are integers in 1/q, 1000); qa (activations in 1/qa, 100);
 * style {background, colorscale, edges [[name, width, rgba] x3], ring, plane, name,
 * name_chars, eye {x, y, z}}; onToken(token, index) and onReset() for the page's text; onDrawn(player)
 * after each draw.
 *
 * A delta (every field optional):
 *   p   the token position the state is at after this delta
 *   t   the token's text (pr: 1 for a prompt token, pb: its probability)
 *   n   new nodes [[name, label, layer, x, y, z], ...], numbered in order of arrival; trailing
 *       nulls may be left out (no x: a node that is never drawn; null label: "Feature N")
 *   f   features firing at p, flat [node, activation*qa, ...]; a node's brightness at p
 *       is its last activation * decay^(p - its last position); its peak and firing count
 *       follow; the nodes firing at p are ringed
 *   m   placed (or moved) nodes, flat [node, x, y, z, ...]
 *   d   nodes that moved a little, flat [node, dx, dy, dz, ...] added to their positions
 *   e   edges added or restyled, flat [a, b, strength 0..2, ...]; r: removed, flat [a, b, ...]
 *   s   the scene names [[node, ax, ay], ...] (replaces the previous ones)
 *   h   the scene's half-width (the cube is [-h, h] on every axis)
 *   k   the new nodes' keys, in the order of n (what a click reports; default the name)
 *   u   nodes no longer drawn, flat [node, ...] (a live view's node cap)
 *   l   labels [[node, label], ...] (a live view names nodes as their labels arrive)
 *   w   the watch list's nodes, flat [node, ...] (a wide orange ring; replaces the last list)
 * Edge strengths index style.edges: 0-2 weak to strong, 3-5 the same below zero (signed kinds).
 * player.hold(true) while a person drags the scene: states are applied, drawn when hold(false).
 * player.configure(options) takes new planes/decay/q/qa/style (a new live epoch); then reset().
 * Several deltas may arrive between two animation frames: only the newest state is drawn.
 * Labels and text are untrusted: Plotly text is escaped here (&, <, >), the page's text
 * is set with textContent.
 */
(function (root) {
  "use strict";

  var TINT_SCALE = [[0, "#e4572e"], [0.5, "#4a4f6a"], [1, "#2ec4b6"]];  // against, none, for (tint())

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
    this.renderer = this.opt.renderer === "canvas" ? "canvas" : "plotly";
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
                  peak: [], tokens: [], key: []};
    this._heads = [];
    this.edges = new Map();  // "a,b" -> [a, b, bucket]
    this.ring = [];
    this.watched = [];
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
        N.lastAct.push(0); N.lastPos.push(null); N.peak.push(0); N.tokens.push(0); N.key.push(n[0]);
      }
      if (d.k) for (i = 0; i < d.k.length; i++) N.key[N.key.length - d.k.length + i] = d.k[i];
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
      fired.forEach(function (act, node) {  // ringed where drawn (see figure())
        N.lastAct[node] = act; N.lastPos[node] = self.p;
        N.peak[node] = Math.max(N.peak[node], act); N.tokens[node] += 1;
        self.ring.push(node);
      });
    }
    if (d.m) {
      for (i = 0; i < d.m.length; i += 4) {
        k = d.m[i];
        N.x[k] = d.m[i + 1] / this.q; N.y[k] = d.m[i + 2] / this.q; N.z[k] = d.m[i + 3] / this.q;
      }
    }
    if (d.d) {
      for (i = 0; i < d.d.length; i += 4) {
        k = d.d[i];
        N.x[k] += d.d[i + 1] / this.q; N.y[k] += d.d[i + 2] / this.q; N.z[k] += d.d[i + 3] / this.q;
      }
    }
    if (d.u) for (i = 0; i < d.u.length; i++) { k = d.u[i]; N.x[k] = null; N.y[k] = null; N.z[k] = null; }
    if (d.l) for (i = 0; i < d.l.length; i++) { N.label[d.l[i][0]] = d.l[i][1]; this._heads[d.l[i][0]] = undefined; }
    if (d.r) for (i = 0; i < d.r.length; i += 2) this.edges.delete(d.r[i] + "," + d.r[i + 1]);
    if (d.e) for (i = 0; i < d.e.length; i += 3) this.edges.set(d.e[i] + "," + d.e[i + 1], [d.e[i], d.e[i + 1], d.e[i + 2]]);
    if (d.s) this.names = d.s;
    if (d.w) this.watched = d.w;
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

  // tint({key: push, ...}): colour the nodes by a signed push (for > 0, against < 0, the
  // rest grey) instead of their brightness; tint(null) goes back to brightness
  AxonPlayer.prototype.tint = function (push) {
    var next = push && typeof push === "object" ? push : null;
    if (JSON.stringify(next) === JSON.stringify(this._tint || null)) return;
    this._tint = next;
    this.request();
  };

  AxonPlayer.prototype.idle = function () { return this._plotted && !this._pending && !this._drawing; };

  AxonPlayer.prototype.keyName = function (node) { return this.nodes.name[node]; };

  AxonPlayer.prototype.configure = function (options) {
    var o = options || {};
    if (o.style) { this.style = o.style; this.opt.style = o.style; }
    if (o.decay != null) this.decay = o.decay;
    if (o.q) this.q = o.q;
    if (o.qa) this.qa = o.qa;
    var planes = o.planes || [];
    if (JSON.stringify(planes) !== JSON.stringify(this.planes)) this._plotted = false;  // other traces: plotted anew
    this.planes = planes;
  };

  // hold(true): a gesture is under way; states are applied but not drawn (a Plotly call in
  // mid-drag would cut the gesture off); hold(false) draws the newest one
  AxonPlayer.prototype.hold = function (on) {
    var was = this._held;
    this._held = !!on;
    if (was && !on) this.request();
  };

  AxonPlayer.prototype.request = function () {
    this.stats.requested += 1;
    if (this._pending) return;
    this._pending = true;
    var self = this;
    (root.requestAnimationFrame || function (f) { return setTimeout(f, 16); })(function () { self._frame(); });
  };

  // One draw per animation frame, the newest state. The first draws the scene (newPlot);
  // later ones send Plotly only what changed: the traces whose data differ (restyle) and
  // the cube's range when it grows (relayout), in one Plotly.update; the names are HTML.
  AxonPlayer.prototype._frame = function () {
    this._pending = false;
    if (this._drawing) { this._again = true; return; }
    if (this._held) {  // drawn at hold(false)
      this.stats.held = (this.stats.held || 0) + 1;
      if (this.opt.onHeld) this.opt.onHeld(this);
      return;
    }
    try { if (this.renderer === "canvas") this._drawCanvas(); else this._draw(); } catch (e) {  // a failed draw must not stop the next ones
      this._drawing = false;
      if (root.console) root.console.error("AXON player: draw failed", e);
    }
  };

  AxonPlayer.prototype._draw = function () {
    var P = root.Plotly;
    if (!P) { this._noPlotly(); return; }
    this._drawing = true;
    var self = this, done = function () {
      self._drawing = false;
      self.stats.drawn += 1;
      if (self._hoverOff) self._picking(self.el._fullLayout && self.el._fullLayout.scene && self.el._fullLayout.scene._scene);
      self._placeNames();
      if (self._again) { self._again = false; self.request(); }
      if (self.opt.onDrawn) self.opt.onDrawn(self);
    };
    var fig = this.figure(), call;
    if (!this._plotted) {
      this._plotted = true;
      this._sent = fig.data;
      this._half = this.half;
      call = P.newPlot(this.el, fig.data, fig.layout, fig.config).then(function () { self._hook(); });
    } else {
      var changed = [], upd = {}, lay = {}, keys = {};
      fig.data.forEach(function (t, i) { if (!sameTrace(t, self._sent[i])) changed.push(i); });
      changed.forEach(function (i) { for (var k in flat(fig.data[i])) keys[k] = true; });
      Object.keys(keys).forEach(function (k) {
        upd[k] = changed.map(function (i) { var v = flat(fig.data[i])[k]; return v === undefined ? null : v; });
      });
      if (this.half !== this._half) {
        ["xaxis", "yaxis", "zaxis"].forEach(function (a) { lay["scene." + a + ".range"] = [-self.half, self.half]; });
        this._half = this.half;
      }
      changed.forEach(function (i) { self._sent[i] = fig.data[i]; });
      if (!changed.length && !Object.keys(lay).length) { done(); return; }
      this.stats.sent = (this.stats.sent || 0) + changed.length;
      call = P.update(this.el, changed.length ? upd : {}, lay, changed.length ? changed : undefined);
    }
    Promise.resolve(call).then(done, done);
  };

  // the data attributes of a trace that change from state to state, as restyle paths
  function flat(t) {
    if (t._flat) return t._flat;
    var out = {x: t.x, y: t.y, z: t.z};
    if (t.marker) {
      out["marker.size"] = t.marker.size;
      if (t.marker.color !== undefined) out["marker.color"] = t.marker.color;
      if (t.marker.cmax !== undefined) out["marker.cmax"] = t.marker.cmax;
      if (t.marker.cmin !== undefined) out["marker.cmin"] = t.marker.cmin;
      if (t.marker.colorscale !== undefined) out["marker.colorscale"] = t.marker.colorscale;
      out.customdata = t.customdata; out.hovertext = t.hovertext;
    }
    Object.defineProperty(t, "_flat", {value: out, enumerable: false});
    return out;
  }

  function sameArray(a, b) {
    if (a === b) return true;
    if (!Array.isArray(a) || !Array.isArray(b)) return a === b;
    if (a.length !== b.length) return false;
    for (var i = 0; i < a.length; i++) if (a[i] !== b[i]) return false;
    return true;
  }

  function sameTrace(a, b) {
    var fa = flat(a), fb = flat(b);
    for (var k in fa) if (!sameArray(fa[k], fb[k])) return false;
    return true;
  }

  // The scene's names are HTML over the canvas (Plotly's 3D annotations cost a third of
  // a phone's frame): each is placed where the scene projects its node, at every
  // render of the scene (a token, an orbit, a resize).
  AxonPlayer.prototype._hook = function () {
    var self = this, scene = this.el._fullLayout && this.el._fullLayout.scene && this.el._fullLayout.scene._scene;
    if (scene && !scene.__axonNames) {
      var render = scene.render;
      scene.render = function () { var r = render.apply(this, arguments); self._placeNames(); return r; };
      scene.__axonNames = true;
    }
    if (this.el.on) this.el.on("plotly_relayouting", function () { self._placeNames(); });
    // Hover needs the scene's pick buffer, which Plotly reads back (gl.readPixels, a wait
    // for the GPU) after every change; while playing, those reads are skipped and one
    // fresh pick pass follows when it stops (see hover()).
    var gl = scene && scene.glplot && scene.glplot.gl;
    if (gl && !gl.__axonReads) {
      var read = gl.readPixels;
      gl.readPixels = function () {
        if (self._hoverOff && this.getParameter(this.FRAMEBUFFER_BINDING) !== null) { self._stalePick = true; return; }
        return read.apply(this, arguments);
      };
      gl.__axonReads = true;
    }
  };

  // hover(false) while the state changes fast (a replay playing, a stream arriving): the
  // scene skips the GPU read-back hover needs; hover(true) makes hover exact again
  AxonPlayer.prototype.hover = function (on) {
    this._hoverOff = !on;
    if (this.renderer === "canvas") { if (!on) this._hideTip(); return; }
    var scene = this.el._fullLayout && this.el._fullLayout.scene && this.el._fullLayout.scene._scene;
    this._picking(scene);
    if (on && this._stalePick && scene && scene.glplot) {
      this._stalePick = false;
      (scene.glplot.objects || []).forEach(function (o) { o.dirty = true; });  // the scene redraws its pick pass
      if (scene.glplot.redraw) scene.glplot.redraw();
    }
  };

  // the scene's objects draw their pick pass only while hover is on
  AxonPlayer.prototype._picking = function (scene) {
    var off = !!this._hoverOff;
    ((scene && scene.glplot && scene.glplot.objects) || []).forEach(function (o) {
      if (off && o.drawPick) { o.__axonPick = o.drawPick; o.drawPick = null; }
      else if (!off && o.__axonPick) { o.drawPick = o.__axonPick; o.__axonPick = null; }
    });
  };

  AxonPlayer.prototype._overlay = function () {
    if (this._layer && this._layer.parentNode === this.el) return this._layer;
    var doc = this.el.ownerDocument, layer = doc.createElement("div");
    layer.className = "axon-names";
    layer.style.cssText = "position:absolute;left:0;top:0;right:0;bottom:0;pointer-events:none;overflow:hidden;z-index:2";
    var svg = doc.createElementNS("http://www.w3.org/2000/svg", "svg");
    svg.setAttribute("width", "100%"); svg.setAttribute("height", "100%");
    svg.style.cssText = "position:absolute;left:0;top:0";
    layer.appendChild(svg);
    if (root.getComputedStyle && root.getComputedStyle(this.el).position === "static") this.el.style.position = "relative";
    this.el.appendChild(layer);
    this._layer = layer; this._svg = svg; this._tags = [];
    return layer;
  };

  // what to write where: the newest token's names (with their arrows) and the planes' names
  AxonPlayer.prototype.notes = function () {
    var N = this.nodes, st = this.style, half = this.half, out = [];
    this.names.forEach(function (s) {
      var i = s[0];
      if (N.x[i] === null || N.lastPos[i] === null) return;
      out.push({x: N.x[i], y: N.y[i], z: N.z[i], text: spaced(N.label[i] || N.name[i], st.name_chars || 28),
                name: N.name[i], ax: s[1], ay: s[2], kind: "name"});
    });
    this.planes.forEach(function (pl) {
      out.push({x: half, y: -0.4 * half, z: pl[0], text: spaced(pl[1], 40), name: "plane " + pl[1],
                ax: 0, ay: -9, kind: "plane"});
    });
    return out;
  };

  // at least n name tags in the overlay (a div and its leader line each), made once and reused
  AxonPlayer.prototype._moreTags = function (n) {
    var doc = this.el.ownerDocument, tags = this._tags;
    while (tags.length < n) {
      var div = doc.createElement("div"), line = doc.createElementNS("http://www.w3.org/2000/svg", "line");
      div.style.cssText = "position:absolute;left:0;top:0;white-space:nowrap;font:12px system-ui,sans-serif;" +
        "padding:0 3px;border-radius:3px;will-change:transform";
      line.setAttribute("stroke", "rgba(255,243,176,0.45)"); line.setAttribute("stroke-width", "1");
      this._layer.appendChild(div); this._svg.appendChild(line);
      tags.push({div: div, line: line, text: null});
    }
  };

  AxonPlayer.prototype._placeNames = function () {
    var gd = this.el, full = gd._fullLayout, scene = full && full.scene && full.scene._scene;
    if (!scene || !scene.glplot || !scene.glplot.cameraParams) return;
    this._overlay();
    var notes = this.notes(), tags = this._tags, st = this.style;
    var cam = scene.glplot.cameraParams, ds = scene.dataScale || [1, 1, 1], size = full._size;
    var dom = full.scene.domain || {x: [0, 1], y: [0, 1]};
    var w = size.w * (dom.x[1] - dom.x[0]), h = size.h * (dom.y[1] - dom.y[0]);
    var x0 = size.l + dom.x[0] * size.w, y0 = size.t + (1 - dom.y[1]) * size.h;
    this._moreTags(notes.length);
    for (var i = 0; i < tags.length; i++) {
      var t = tags[i], n = notes[i];
      if (!n) { t.div.style.display = "none"; t.line.style.display = "none"; continue; }
      var p = project(cam, [n.x * ds[0], n.y * ds[1], n.z * ds[2]]);
      var px = x0 + 0.5 * (1 + p[0] / p[3]) * w, py = y0 + 0.5 * (1 - p[1] / p[3]) * h;
      var off = !(p[3] > 0) || !isFinite(px) || !isFinite(py);
      t.div.style.display = off ? "none" : "";
      t.line.style.display = off || n.kind !== "name" ? "none" : "";
      if (off) continue;
      if (t.text !== n.text || t.kind !== n.kind) {
        t.div.textContent = n.text;  // text, never markup
        t.div.style.color = n.kind === "name" ? st.name : st.ring;
        t.div.style.fontSize = n.kind === "name" ? "12px" : "11px";
        t.div.style.background = n.kind === "name" ? "rgba(11,15,25,0.7)" : "transparent";
        t.text = n.text; t.kind = n.kind;
        t.width = null;  // measured once per text (below)
      }
      if (t.width === null || t.width === undefined) t.width = t.div.offsetWidth;
      t.div.dataset.name = n.name; t.div.dataset.kind = n.kind;
      t.div.dataset.x = px.toFixed(1); t.div.dataset.y = py.toFixed(1);
      var tx = px + n.ax, ty = py + n.ay;
      // the tag's left edge, kept inside the canvas (a small embed, a phone, a turned camera):
      // a name never runs off the scene's edge
      var left = n.kind === "plane" || n.ax > 0 ? tx : tx - t.width;
      var right = size.l + size.w + (size.r || 0);
      left = Math.max(2, Math.min(left, right - t.width - 2));
      ty = Math.max(y0 + 8, Math.min(ty, y0 + h - 8));
      t.div.style.transform = "translate(" + left.toFixed(1) + "px," + ty.toFixed(1) + "px) translate(0,-50%)";
      tx = n.ax > 0 ? left : left + t.width;  // where the leader line ends
      if (n.kind === "name") {
        t.line.setAttribute("x1", px.toFixed(1)); t.line.setAttribute("y1", py.toFixed(1));
        t.line.setAttribute("x2", tx.toFixed(1)); t.line.setAttribute("y2", ty.toFixed(1));
      }
    }
    this._shownNotes = notes;
  };

  // a point of the scene → clip space, as Plotly's 3D annotations do (model, view, projection)
  function project(cam, v) {
    var p = [v[0], v[1], v[2], 1];
    [cam.model, cam.view, cam.projection].forEach(function (m) {
      var r = [0, 0, 0, 0];
      for (var i = 0; i < 4; i++) for (var j = 0; j < 4; j++) r[j] += m[4 * i + j] * p[i];
      p = r;
    });
    return p;
  }

  // what a node's hover says after its label and name (both renderers' hovers)
  function nodeNumbers(N, i, a) {
    return " \u00b7 now " + a.toFixed(2) + " \u00b7 peak " + N.peak[i].toFixed(2) + " \u00b7 " + N.tokens[i] + " tok";
  }

  function pushText(v) { return " \u00b7 push " + (v > 0 ? "+" : "") + v.toFixed(2); }

  // a label on one line, cut to max characters (for textContent: nothing to escape)
  function spaced(label, max) {
    var text = String(label).split(/\s+/).filter(Boolean).join(" ");
    return text.length > max ? text.slice(0, max - 1) + "\u2026" : text;
  }

  AxonPlayer.prototype._noPlotly = function () {
    if (this._warned) return;
    this._warned = true;
    var note = this.el.ownerDocument.createElement("div");
    note.className = "axon-no-plotly";
    note.style.cssText = "padding:1rem;color:#8f96b8;font:0.85rem system-ui,sans-serif";
    note.textContent = "The graph needs plotly.js, which did not load. The text still plays.";
    this.el.appendChild(note);
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
    var heads = this._heads;  // each node's escaped label and name, made once (again when its label changes)
    vis.forEach(function (i) {
      var a = self.activation(i);
      x.push(N.x[i]); y.push(N.y[i]); z.push(N.z[i]);
      size.push(Math.round(Math.min(4 + 5 * Math.sqrt(a), 30) * 10) / 10);
      color.push(Math.round(a * 100) / 100);
      peakTop = Math.max(peakTop, N.peak[i]);
      if (heads[i] === undefined) heads[i] = inert(N.label[i], 120) + "<br>" + inert(N.name[i], 40);
      hover.push(heads[i] + nodeNumbers(N, i, a));
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
    var cd = function (i) { return N.key[i]; };
    var marker = {size: size, color: color, colorscale: st.colorscale, cmin: 0,
                  cmax: Math.round((peakTop || 1) * 100) / 100, opacity: 0.95, line: {width: 0}};
    var tint = this._tint;
    if (tint) {  // by push: a diverging scale around 0, symmetric in the largest |push| shown
      var pushes = vis.map(function (i) { var v = tint[String(N.key[i])]; return typeof v === "number" ? v : 0; });
      var top = pushes.reduce(function (m, v) { return Math.max(m, Math.abs(v)); }, 0) || 1;
      marker.color = pushes; marker.cmin = -top; marker.cmax = top;
      marker.colorscale = TINT_SCALE;
      vis.forEach(function (i, r) { if (pushes[r]) hover[r] += pushText(pushes[r]); });
    }
    data.push({type: "scatter3d", mode: "markers", name: "features", x: x, y: y, z: z,
               customdata: vis.map(cd), hovertext: hover, hoverinfo: "text", marker: marker,
               showlegend: false});
    data.push({type: "scatter3d", mode: "markers", name: "active",
               x: ring.map(function (i) { return N.x[i]; }), y: ring.map(function (i) { return N.y[i]; }),
               z: ring.map(function (i) { return N.z[i]; }),
               customdata: ring.map(cd),
               hovertext: ring.map(function (i) { return hover[row.get(i)]; }), hoverinfo: "text",
               marker: {size: ring.map(function (i) { return size[row.get(i)] + 6; }), symbol: "circle-open",
                        color: st.ring, line: {width: 2, color: st.ring}}, showlegend: false});
    var watch = this.watched.filter(function (i) { return row.has(i); });
    data.push({type: "scatter3d", mode: "markers", name: "watched",
               x: watch.map(function (i) { return N.x[i]; }), y: watch.map(function (i) { return N.y[i]; }),
               z: watch.map(function (i) { return N.z[i]; }),
               customdata: watch.map(cd), hovertext: watch.map(function (i) { return "watched: " + hover[row.get(i)]; }),
               hoverinfo: "text",
               marker: {size: watch.map(function (i) { return size[row.get(i)] + 12; }), symbol: "circle-open",
                        color: st.watch || "#ff9f1c", line: {width: 2, color: st.watch || "#ff9f1c"}},
               showlegend: false});
    var px = [], py = [], pz = [];
    this.planes.forEach(function (pl) {
      var c = [[-half, -half], [half, -half], [half, half], [-half, half], [-half, -half]];
      c.forEach(function (v) { px.push(v[0]); py.push(v[1]); pz.push(pl[0]); });
      px.push(null); py.push(null); pz.push(null);
    });
    if (this.planes.length) {  // a run of several layers (one layer: no trace to update)
      data.push({type: "scatter3d", mode: "lines", name: "planes", x: px, y: py, z: pz,
                 line: {width: 1.5, color: st.plane}, hoverinfo: "skip", showlegend: false});
    }
    // An empty trace would leave the scene (Plotly disposes its WebGL object) and come
    // back new (shaders compiled again, GPU waits): an empty one holds one blank point.
    data.forEach(function (t) {
      if (t.x.length) return;
      t.x = [null]; t.y = [null]; t.z = [null];
      if (t.marker) { t.customdata = [null]; t.hovertext = [""]; t.marker.size = [0]; }
      if (t.marker && Array.isArray(t.marker.color)) t.marker.color = [0];
    });
    var axis = function () {
      return {visible: false, showbackground: false, showgrid: false, zeroline: false, showticklabels: false,
              title: {text: ""}, range: [-half, half]};
    };
    var layout = {
      paper_bgcolor: st.background, plot_bgcolor: st.background, font: {color: "#d8dcf0"},
      margin: {l: 0, r: 0, t: 0, b: 0}, showlegend: false, uirevision: "axon", hovermode: "closest",
      hoverlabel: {bgcolor: "#1b1f3a", font: {color: "#ffffff"}},
      scene: {xaxis: axis(), yaxis: axis(), zaxis: axis(), aspectmode: "cube", bgcolor: st.background,
              uirevision: "axon", dragmode: "orbit", hovermode: "closest",
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
      ring: this.ring.filter(function (i) { return N.x[i] !== null; }).map(function (i) { return N.name[i]; }),
      labels: this.names.map(function (s) { return N.name[s[0]]; }),
      activation: vis.map(function (i) { return self.activation(i); }),
      hover: vis.map(function (i) { return self.hoverText(i); }),
      p: this.p
    };
  };


  // ---- The canvas-2D renderer (options.renderer "canvas") ------------------------------
  // The same state drawn without Plotly: a perspective camera like Plotly's scene.camera
  // (eye, center, up in the scene's normalised units: the cube [-half, half]^3 is
  // [-0.5, 0.5]^3, fovy 45°, fitted to the smaller side of the canvas), depth-sorted
  // filled circles over batched edges, HTML names placed from this projection. Sizes
  // come from a ResizeObserver (no layout read while drawing); text widths from
  // measureText, once per text.
  var FOVY = Math.PI / 4, FONT_NAME = "12px system-ui,sans-serif", FONT_PLANE = "11px system-ui,sans-serif";
  var WATCH = "#ff9f1c";

  function parseColour(c) {
    var m = /^#([0-9a-f]{6})$/i.exec(String(c).trim());
    if (m) { var v = parseInt(m[1], 16); return [v >> 16 & 255, v >> 8 & 255, v & 255]; }
    m = /^rgba?\(([^)]*)\)$/i.exec(String(c).trim());
    if (m) { var p = m[1].split(",").map(Number); return [p[0] | 0, p[1] | 0, p[2] | 0]; }
    return [128, 128, 128];
  }

  var LUTS = new Map();
  // a colour scale [[0, c0], ..., [1, cn]] as 256 CSS colours, linear in RGB as Plotly's
  function lut(scale) {
    var id = JSON.stringify(scale || null);
    if (LUTS.has(id)) return LUTS.get(id);
    var stops = (scale && scale.length ? scale : [[0, "#1b1f3a"], [1, "#fff3b0"]])
      .map(function (s) { return [Number(s[0]), parseColour(s[1])]; });
    var out = [];
    for (var i = 0; i < 256; i++) {
      var t = i / 255, k = 0;
      while (k < stops.length - 2 && t > stops[k + 1][0]) k++;
      var a = stops[k], b = stops[Math.min(k + 1, stops.length - 1)];
      var f = b[0] > a[0] ? Math.max(0, Math.min(1, (t - a[0]) / (b[0] - a[0]))) : 0;
      out.push("rgb(" + [0, 1, 2].map(function (j) { return Math.round(a[1][j] + f * (b[1][j] - a[1][j])); }).join(",") + ")");
    }
    LUTS.set(id, out);
    return out;
  }

  function vsub(a, b) { return [a[0] - b[0], a[1] - b[1], a[2] - b[2]]; }
  function vcross(a, b) { return [a[1] * b[2] - a[2] * b[1], a[2] * b[0] - a[0] * b[2], a[0] * b[1] - a[1] * b[0]]; }
  function vnorm(a) { var l = Math.hypot(a[0], a[1], a[2]) || 1; return [a[0] / l, a[1] / l, a[2] / l]; }
  function xyz(v, dflt) {
    if (!v) return dflt.slice();
    if (Array.isArray(v)) return [Number(v[0]), Number(v[1]), Number(v[2])];
    return [Number(v.x), Number(v.y), Number(v.z)];
  }

  AxonPlayer.prototype._canvasSetup = function () {
    if (this._cv) return;
    var el = this.el, doc = el.ownerDocument, self = this;
    if (root.getComputedStyle && root.getComputedStyle(el).position === "static") el.style.position = "relative";
    var cv = doc.createElement("canvas");
    cv.className = "axon-canvas";
    cv.style.cssText = "position:absolute;left:0;top:0;width:100%;height:100%;display:block;touch-action:none;cursor:grab";
    el.appendChild(cv);
    var tip = doc.createElement("div");
    tip.className = "axon-tip";
    tip.style.cssText = "position:absolute;left:0;top:0;display:none;pointer-events:none;z-index:3;white-space:pre-line;" +
      "max-width:18rem;padding:4px 7px;border-radius:4px;background:#1b1f3a;color:#ffffff;border:1px solid #3b3f8f;" +
      "font:12px system-ui,sans-serif";
    el.appendChild(tip);
    this._cv = cv; this._ctx = cv.getContext("2d"); this._tip = tip;
    this._widths = new Map();
    this._w = 0; this._h = 0;
    this._size(el.clientWidth, el.clientHeight);  // once, at set-up; later sizes come from the observer
    if (root.ResizeObserver) {
      this._ro = new root.ResizeObserver(function (entries) {
        var r = entries[entries.length - 1].contentRect;
        self._size(r.width, r.height);
      });
      this._ro.observe(el);
    } else if (root.addEventListener) {
      root.addEventListener("resize", function () { self._size(el.clientWidth, el.clientHeight); });
    }
    this._pointers(cv);
  };

  AxonPlayer.prototype._size = function (w, h) {
    var dpr = Math.min(2, Math.max(1, root.devicePixelRatio || 1));
    if (w === this._w && h === this._h && dpr === this._dpr) return;
    this._w = w; this._h = h; this._dpr = dpr;
    this._cv.width = Math.max(1, Math.round(w * dpr));
    this._cv.height = Math.max(1, Math.round(h * dpr));
    this.request();
  };

  // the camera: eye, center, up, as Plotly's scene.camera (cube side 1 about the center)
  AxonPlayer.prototype._camera = function () {
    if (!this._cam) {
      this._cam = {eye: xyz(this.style.eye, [0.95, 0.95, 0.7]), center: [0, 0, 0], up: [0, 0, 1]};
    }
    return this._cam;
  };

  // camera() → {eye, center, up} ({x, y, z} each); camera(cam) sets any of them and redraws
  AxonPlayer.prototype.camera = function (cam) {
    var c = this._camera();
    if (cam) {
      if (cam.eye) c.eye = xyz(cam.eye, c.eye);
      if (cam.center) c.center = xyz(cam.center, c.center);
      if (cam.up) c.up = xyz(cam.up, c.up);
      this.request();
    }
    var o = function (v) { return {x: v[0], y: v[1], z: v[2]}; };
    return {eye: o(c.eye), center: o(c.center), up: o(c.up)};
  };

  // turntable orbit: drag x turns the eye about the up axis (z), drag y tilts it, clamped
  AxonPlayer.prototype._orbit = function (dx, dy) {
    var c = this._camera(), rel = vsub(c.eye, c.center), r = Math.hypot(rel[0], rel[1], rel[2]) || 1;
    var az = Math.atan2(rel[1], rel[0]), el = Math.asin(Math.max(-1, Math.min(1, rel[2] / r)));
    az -= dx * 0.008;
    el = Math.max(-1.5, Math.min(1.5, el + dy * 0.008));
    c.eye = [c.center[0] + r * Math.cos(el) * Math.cos(az), c.center[1] + r * Math.cos(el) * Math.sin(az),
             c.center[2] + r * Math.sin(el)];
    this.request();
  };

  AxonPlayer.prototype._zoom = function (factor) {
    var c = this._camera(), rel = vsub(c.eye, c.center), r = Math.hypot(rel[0], rel[1], rel[2]) || 1;
    var k = Math.max(0.3, Math.min(8, r * factor)) / r;
    c.eye = [c.center[0] + rel[0] * k, c.center[1] + rel[1] * k, c.center[2] + rel[2] * k];
    this.request();
  };

  AxonPlayer.prototype._view = function () {
    var c = this._camera(), f = vnorm(vsub(c.center, c.eye)), r = vcross(f, vnorm(c.up));
    if (Math.hypot(r[0], r[1], r[2]) < 1e-9) r = vcross(f, [0, 1, 0]);
    r = vnorm(r);
    var u = vcross(r, f), w = this._w, h = this._h;
    return {e: c.eye, f: f, r: r, u: u, s: 0.5 / (this.half || 1), cx: w / 2, cy: h / 2,
            F: Math.min(w, h) / 2 / Math.tan(FOVY / 2)};
  };

  // a point of the scene (data units) → [px, py, depth] in CSS px of the canvas; depth ≤ 0: behind
  function toScreen(V, x, y, z, out) {
    var qx = x * V.s - V.e[0], qy = y * V.s - V.e[1], qz = z * V.s - V.e[2];
    var d = qx * V.f[0] + qy * V.f[1] + qz * V.f[2];
    out[2] = d;
    if (!(d > 1e-6)) { out[0] = NaN; out[1] = NaN; return out; }
    out[0] = V.cx + V.F * (qx * V.r[0] + qy * V.r[1] + qz * V.r[2]) / d;
    out[1] = V.cy - V.F * (qx * V.u[0] + qy * V.u[1] + qz * V.u[2]) / d;
    return out;
  }

  AxonPlayer.prototype._drawCanvas = function () {
    this._canvasSetup();
    this._drawing = true;
    var g = this._ctx, w = this._w, h = this._h, dpr = this._dpr, st = this.style, N = this.nodes, self = this;
    g.setTransform(dpr, 0, 0, dpr, 0, 0);
    g.globalAlpha = 1;
    g.fillStyle = st.background || "#0b0f19";
    g.fillRect(0, 0, w, h);
    var V = this._view(), pt = [0, 0, 0], half = this.half;
    // the layers' planes: outlined squares at their z
    if (this.planes.length) {
      g.beginPath();
      this.planes.forEach(function (pl) {
        var c = [[-half, -half], [half, -half], [half, half], [-half, half]], ok = true, pts = [];
        c.forEach(function (v) { toScreen(V, v[0], v[1], pl[0], pt); ok = ok && pt[2] > 0; pts.push([pt[0], pt[1]]); });
        if (!ok) return;
        g.moveTo(pts[0][0], pts[0][1]);
        for (var i = 1; i < 4; i++) g.lineTo(pts[i][0], pts[i][1]);
        g.closePath();
      });
      g.lineWidth = 1.5; g.strokeStyle = st.plane || "rgba(125,249,255,0.18)"; g.stroke();
    }
    // the nodes drawn: placed and seen by p, projected once
    var vis = this.visible(), n = vis.length, row = new Int32Array(N.name.length).fill(-1);
    var sx = new Float64Array(n), sy = new Float64Array(n), sd = new Float64Array(n), rad = new Float64Array(n);
    var act = new Float64Array(n), peakTop = 0, i, k;
    for (k = 0; k < n; k++) {
      i = vis[k]; row[i] = k;
      toScreen(V, N.x[i], N.y[i], N.z[i], pt);
      sx[k] = pt[0]; sy[k] = pt[1]; sd[k] = pt[2];
      act[k] = this.activation(i);
      rad[k] = Math.round(Math.min(4 + 5 * Math.sqrt(act[k]), 30) * 10) / 20;  // Plotly's marker size is a diameter
      peakTop = Math.max(peakTop, N.peak[i]);
    }
    // edges: one path per style bucket
    var styles = st.edges || [["edges weak", 1, "rgba(140,160,255,0.12)"], ["edges mid", 2, "rgba(160,180,255,0.30)"],
                               ["edges strong", 3.5, "rgba(200,215,255,0.60)"]];
    var paths = styles.map(function () { return []; });
    this.edges.forEach(function (e) {
      var a = row[e[0]], b = row[e[1]], s = paths[e[2]];
      if (a < 0 || b < 0 || !s || !(sd[a] > 0) || !(sd[b] > 0)) return;
      s.push(a, b);
    });
    g.lineCap = "round";
    paths.forEach(function (s, j) {
      if (!s.length) return;
      g.beginPath();
      for (var q = 0; q < s.length; q += 2) { g.moveTo(sx[s[q]], sy[s[q]]); g.lineTo(sx[s[q + 1]], sy[s[q + 1]]); }
      g.lineWidth = styles[j][1]; g.strokeStyle = styles[j][2]; g.stroke();
    });
    // colour: brightness over [0, peak], or the push when tinted
    var colours = new Array(n), tint = this._tint, scale, lo, span;
    if (tint) {
      var pushes = new Float64Array(n), top = 0;
      for (k = 0; k < n; k++) {
        var v = tint[String(N.key[vis[k]])];
        pushes[k] = typeof v === "number" ? v : 0;
        top = Math.max(top, Math.abs(pushes[k]));
      }
      top = top || 1; scale = lut(TINT_SCALE);
      for (k = 0; k < n; k++) colours[k] = scale[Math.round((pushes[k] + top) / (2 * top) * 255)];
    } else {
      scale = lut(st.colorscale); lo = 0; span = Math.round((peakTop || 1) * 100) / 100;
      for (k = 0; k < n; k++) {
        var c = Math.round(act[k] * 100) / 100;
        colours[k] = scale[Math.max(0, Math.min(255, Math.round((c - lo) / span * 255)))];
      }
    }
    var ringed = new Uint8Array(n), watched = new Uint8Array(n);
    this.ring.forEach(function (j) { if (j < row.length && row[j] >= 0) ringed[row[j]] = 1; });
    this.watched.forEach(function (j) { if (j < row.length && row[j] >= 0) watched[row[j]] = 1; });
    // far to near
    var order = Array.from({length: n}, function (_, q) { return q; })
      .filter(function (q) { return sd[q] > 0; })
      .sort(function (a, b) { return sd[b] - sd[a]; });
    var TAU = 2 * Math.PI, ringColour = st.ring || "#7df9ff", watchColour = st.watch || WATCH;
    order.forEach(function (q) {
      g.globalAlpha = 0.95;
      g.fillStyle = colours[q];
      g.beginPath(); g.arc(sx[q], sy[q], rad[q], 0, TAU); g.fill();
      g.globalAlpha = 1;
      if (ringed[q]) {
        g.lineWidth = 2; g.strokeStyle = ringColour;
        g.beginPath(); g.arc(sx[q], sy[q], rad[q] + 3, 0, TAU); g.stroke();
      }
      if (watched[q]) {
        g.lineWidth = 2.5; g.strokeStyle = watchColour;
        g.beginPath(); g.arc(sx[q], sy[q], rad[q] + 6, 0, TAU); g.stroke();
      }
    });
    g.globalAlpha = 1;
    this._shot = {vis: vis, x: sx, y: sy, r: rad, d: sd, act: act, order: order};
    this._placeNamesCanvas(V);
    this._drawing = false;
    this._plotted = true;
    this.stats.drawn += 1;
    if (this._tipAt) this._hoverAt(this._tipAt[0], this._tipAt[1]);
    if (this._again) { this._again = false; this.request(); }
    if (this.opt.onDrawn) this.opt.onDrawn(this);
    return self;
  };

  // the names over the canvas, from this renderer's projection (no layout read: widths by measureText)
  AxonPlayer.prototype._textWidth = function (text, font) {
    var id = font + "\u0000" + text, got = this._widths.get(id);
    if (got === undefined) {
      if (this._widths.size > 2000) this._widths.clear();
      this._ctx.save(); this._ctx.font = font;
      got = Math.ceil(this._ctx.measureText(text).width) + 6;  // + the tag's padding (0 3px)
      this._ctx.restore();
      this._widths.set(id, got);
    }
    return got;
  };

  AxonPlayer.prototype._placeNamesCanvas = function (V) {
    this._overlay();
    var notes = this.notes(), tags = this._tags, st = this.style;
    var w = this._w, h = this._h, pt = [0, 0, 0];
    this._moreTags(notes.length);
    for (var i = 0; i < tags.length; i++) {
      var t = tags[i], n = notes[i];
      if (!n) {
        if (t.shown !== false) { t.div.style.display = "none"; t.line.style.display = "none"; t.shown = false; }
        continue;
      }
      toScreen(V, n.x, n.y, n.z, pt);
      var px = pt[0], py = pt[1], off = !(pt[2] > 0) || !isFinite(px) || !isFinite(py);
      t.div.style.display = off ? "none" : "";
      t.line.style.display = off || n.kind !== "name" ? "none" : "";
      t.shown = !off;
      if (off) continue;
      if (t.text !== n.text || t.kind !== n.kind) {
        t.div.textContent = n.text;  // text, never markup
        t.div.style.color = n.kind === "name" ? st.name : st.ring;
        t.div.style.font = n.kind === "name" ? FONT_NAME : FONT_PLANE;
        t.div.style.background = n.kind === "name" ? "rgba(11,15,25,0.7)" : "transparent";
        t.text = n.text; t.kind = n.kind;
        t.width = this._textWidth(n.text, n.kind === "name" ? FONT_NAME : FONT_PLANE);
      }
      t.div.dataset.name = n.name; t.div.dataset.kind = n.kind;
      t.div.dataset.x = px.toFixed(1); t.div.dataset.y = py.toFixed(1);
      var tx = px + n.ax, ty = py + n.ay;
      var left = n.kind === "plane" || n.ax > 0 ? tx : tx - t.width;
      left = Math.max(2, Math.min(left, w - t.width - 2));  // never off the canvas's edge
      ty = Math.max(8, Math.min(ty, h - 8));
      t.div.dataset.left = left.toFixed(1); t.div.dataset.width = String(t.width); t.div.dataset.top = ty.toFixed(1);
      t.div.style.transform = "translate(" + left.toFixed(1) + "px," + ty.toFixed(1) + "px) translate(0,-50%)";
      tx = n.ax > 0 ? left : left + t.width;
      if (n.kind === "name") {
        t.line.setAttribute("x1", px.toFixed(1)); t.line.setAttribute("y1", py.toFixed(1));
        t.line.setAttribute("x2", tx.toFixed(1)); t.line.setAttribute("y2", ty.toFixed(1));
      }
    }
    this._shownNotes = notes;
  };

  // the nearest drawn node to (x, y) (CSS px in the canvas) within its radius + 4 px, or -1
  AxonPlayer.prototype.pick = function (x, y) {
    var S = this._shot, best = -1, bestD = Infinity;
    if (!S) return -1;
    for (var q = 0; q < S.vis.length; q++) {
      if (!(S.d[q] > 0)) continue;
      var d = Math.hypot(S.x[q] - x, S.y[q] - y);
      if (d <= S.r[q] + 4 && (d < bestD || (d === bestD && S.d[q] < S.d[best]))) { best = q; bestD = d; }
    }
    return best < 0 ? -1 : S.vis[best];
  };

  // what a node's hover says (plain text: set with textContent)
  AxonPlayer.prototype.hoverText = function (i) {
    var N = this.nodes, a = this.activation(i);
    var text = spaced(N.label[i], 120) + "\n" + spaced(N.name[i], 40) + nodeNumbers(N, i, a);
    var tint = this._tint, v = tint ? tint[String(N.key[i])] : null;
    if (typeof v === "number" && v) text += pushText(v);
    if (this.watched.indexOf(i) >= 0) text = "watched: " + text;
    return text;
  };

  AxonPlayer.prototype._hoverAt = function (x, y) {
    var tip = this._tip;
    if (!tip) return;
    if (this._hoverOff || this._dragging) { this._hideTip(); return; }
    this._tipAt = [x, y];
    var i = this.pick(x, y);
    if (i < 0) { tip.style.display = "none"; tip.dataset.name = ""; this._cv.style.cursor = "grab"; return; }
    var text = this.hoverText(i);
    if (tip.textContent !== text) tip.textContent = text;  // text, never markup
    tip.dataset.name = this.nodes.name[i];
    tip.style.display = "block";
    this._cv.style.cursor = "pointer";
    var left = Math.min(x + 12, Math.max(2, this._w - 260)), top = y + 14 > this._h - 40 ? y - 48 : y + 14;
    tip.style.transform = "translate(" + Math.max(2, left).toFixed(0) + "px," + Math.max(2, top).toFixed(0) + "px)";
  };

  AxonPlayer.prototype._hideTip = function () {
    this._tipAt = null;
    if (this._tip) { this._tip.style.display = "none"; this._tip.dataset.name = ""; }
  };

  // pointer events: drag to orbit, wheel or two fingers to zoom, hover, click
  AxonPlayer.prototype._pointers = function (cv) {
    var self = this, down = new Map(), moved = 0, pinch = 0;
    var spread = function () {
      var p = Array.from(down.values());
      return p.length < 2 ? 0 : Math.hypot(p[0][0] - p[1][0], p[0][1] - p[1][1]);
    };
    cv.addEventListener("pointerdown", function (ev) {
      if (ev.button !== undefined && ev.button > 0) return;
      if (cv.setPointerCapture) { try { cv.setPointerCapture(ev.pointerId); } catch (e) { /* a synthetic pointer */ } }
      down.set(ev.pointerId, [ev.clientX, ev.clientY]);
      if (down.size === 1) moved = 0;
      pinch = spread();
      self._dragging = true;
      self._hideTip();
      cv.style.cursor = "grabbing";
      ev.preventDefault();
    });
    cv.addEventListener("pointermove", function (ev) {
      var p = down.get(ev.pointerId);
      if (!p) { self._hoverAt(ev.offsetX, ev.offsetY); return; }
      var dx = ev.clientX - p[0], dy = ev.clientY - p[1];
      down.set(ev.pointerId, [ev.clientX, ev.clientY]);
      moved += Math.abs(dx) + Math.abs(dy);
      if (down.size >= 2) {
        var s = spread();
        if (pinch > 0 && s > 0) self._zoom(pinch / s);
        pinch = s;
        return;
      }
      self._orbit(dx, dy);
    });
    var end = function (ev) {
      if (!down.has(ev.pointerId)) return;
      down.delete(ev.pointerId);
      pinch = spread();
      if (down.size) return;
      self._dragging = false;
      cv.style.cursor = "grab";
      if (ev.type === "pointerup" && moved < 5) {
        var i = self.pick(ev.offsetX, ev.offsetY);
        if (i >= 0 && self.opt.onClick) self.opt.onClick(self.nodes.key[i], i);
        self._hoverAt(ev.offsetX, ev.offsetY);
      }
    };
    cv.addEventListener("pointerup", end);
    cv.addEventListener("pointercancel", end);
    cv.addEventListener("pointerleave", function () { if (!down.size) self._hideTip(); });
    cv.addEventListener("wheel", function (ev) {
      ev.preventDefault();
      var dy = ev.deltaMode === 1 ? ev.deltaY * 30 : ev.deltaY;
      self._zoom(Math.exp(Math.max(-300, Math.min(300, dy)) * 0.0015));
    }, {passive: false});
  };

  // where each drawn node was drawn (CSS px in the canvas), as of the last draw (tests)
  AxonPlayer.prototype.projected = function () {
    var S = this._shot, N = this.nodes;
    if (!S) return {names: [], x: [], y: [], r: [], w: this._w || 0, h: this._h || 0};
    return {names: S.vis.map(function (i) { return N.name[i]; }), x: Array.from(S.x), y: Array.from(S.y),
            r: Array.from(S.r), w: this._w, h: this._h};
  };

  AxonPlayer.inert = inert;
  root.AxonPlayer = AxonPlayer;
})(window);

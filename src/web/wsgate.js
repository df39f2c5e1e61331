// wsgate.js: a browser (and node) client for wsgate's wsgate.v1 protocol. No dependencies.
//
//   const client = new WsGate("ws://127.0.0.1:8080/room/123/");
//   client.on("publication", (p) => console.log(p.group, p.data));
//   client.on("state", (s) => console.log(s.state));
//   client.subscribe("room:123");
//   await client.publish("room:123", { hello: "world" });
//
// It reconnects on its own (exponential backoff with jitter) and resubscribes every group from
// the last position it saw, so publications missed while it was away arrive once, in order
// (`recovered: true` on the "subscribed" event), or it says plainly that they cannot
// (`recovered: false` with a reason). The protocol is in PROTOCOL.md.
(function (root) {
  "use strict";

  var PROTOCOL = "wsgate.v1";
  var EVENTS = ["publication", "join", "leave", "state", "subscribed", "error"];

  function WsGateError(message, code) {
    var e = new Error(message);
    e.name = "WsGateError";
    e.code = code;
    return e;
  }

  function toBase64(bytes) {
    var s = "";
    for (var i = 0; i < bytes.length; i++) s += String.fromCharCode(bytes[i]);
    return (typeof btoa === "function") ? btoa(s) : Buffer.from(bytes).toString("base64");
  }

  function fromBase64(text) {
    if (typeof atob !== "function") return new Uint8Array(Buffer.from(text, "base64"));
    var s = atob(text);
    var out = new Uint8Array(s.length);
    for (var i = 0; i < s.length; i++) out[i] = s.charCodeAt(i);
    return out;
  }

  /**
   * A connection to one wsgate URL.
   * @param {string} url ws:// or wss:// URL of a hub route (e.g. /room/123/).
   * @param {object} [opts] minDelay (ms, 250), maxDelay (ms, 10000), timeout (ms per command,
   *   10000), WebSocket (a constructor, for node versions without a global one).
   */
  function WsGate(url, opts) {
    opts = opts || {};
    this.url = url;
    this.minDelay = opts.minDelay || 250;
    this.maxDelay = opts.maxDelay || 10000;
    this.timeout = opts.timeout || 10000;
    this.WebSocket = opts.WebSocket || root.WebSocket;
    if (!this.WebSocket) throw WsGateError("no WebSocket here: pass opts.WebSocket", 0);
    this.state = "connecting";
    this.ws = null;
    this.nextId = 1;
    this.waiting = {};          // id -> { resolve, reject, timer, onReply }
    this.subs = {};             // group -> { position, events, info }
    this.early = {};            // group -> [{ resolve, reject, timer }]: subscribed before open
    this.listeners = {};
    for (var i = 0; i < EVENTS.length; i++) this.listeners[EVENTS[i]] = [];
    this.attempt = 0;
    this.retryTimer = null;
    this.closed = false;
    this._connect();
  }

  /** Listens to "publication", "join", "leave", "state", "subscribed" or "error". */
  WsGate.prototype.on = function (event, fn) {
    if (!this.listeners[event]) throw WsGateError("unknown event " + event + "; the events are " + EVENTS.join(", "), 0);
    this.listeners[event].push(fn);
    return this;
  };

  WsGate.prototype._emit = function (event, arg) {
    var list = this.listeners[event].slice();
    for (var i = 0; i < list.length; i++) {
      try { list[i](arg); } catch (e) { if (root.console) root.console.error(e); }
    }
  };

  WsGate.prototype._setState = function (state, detail) {
    this.state = state;
    var ev = { state: state };
    for (var k in detail || {}) ev[k] = detail[k];
    this._emit("state", ev);
  };

  WsGate.prototype._connect = function () {
    var self = this;
    var ws;
    try {
      ws = new this.WebSocket(this.url, PROTOCOL);
    } catch (e) {
      this._emit("error", WsGateError("cannot open " + this.url + ": " + e.message, 0));
      this._retry({ code: 0, reason: e.message });
      return;
    }
    this.ws = ws;
    this._setState(this.attempt === 0 ? "connecting" : "reconnecting");
    ws.onopen = function () {
      if (self.ws !== ws) return;
      if (ws.protocol !== PROTOCOL) {
        self._emit("error", WsGateError("the server did not accept the " + PROTOCOL +
          " protocol on " + self.url + "; is this a wsgate hub route?", 0));
        ws.close(1000, "protocol not accepted");
        return;
      }
      self.attempt = 0;
      self._setState("connected");
      for (var group in self.subs) self._subscribe(group);
    };
    ws.onmessage = function (ev) {
      if (self.ws === ws) self._onMessage(ev.data);
    };
    ws.onclose = function (ev) {
      if (self.ws !== ws) return;
      self.ws = null;
      for (var id in self.waiting) {
        var w = self.waiting[id];
        clearTimeout(w.timer);
        w.reject(WsGateError("the connection closed before the reply (code " + ev.code + ")", ev.code));
      }
      self.waiting = {};
      if (self.closed) {
        self._setState("closed", { code: ev.code, reason: ev.reason });
      } else {
        self._retry({ code: ev.code, reason: ev.reason });
      }
    };
  };

  // Exponential backoff with jitter: minDelay * 2^attempt, capped, then 50-100 % of it.
  WsGate.prototype._retry = function (why) {
    var self = this;
    var base = Math.min(this.maxDelay, this.minDelay * Math.pow(2, this.attempt));
    var delay = base / 2 + Math.random() * base / 2;
    this.attempt++;
    this._setState("disconnected", { code: why.code, reason: why.reason, retryIn: Math.round(delay) });
    clearTimeout(this.retryTimer);
    this.retryTimer = setTimeout(function () { if (!self.closed) self._connect(); }, delay);
  };

  WsGate.prototype._onMessage = function (text) {
    var m;
    try { m = JSON.parse(text); } catch (e) {
      this._emit("error", WsGateError("the server sent something that is not JSON", 0));
      return;
    }
    if (m.type === "pub") {
      var s = this.subs[m.group];
      if (s && m.epoch !== undefined) s.position = { epoch: m.epoch, offset: m.offset };
      var p = { group: m.group, epoch: m.epoch, offset: m.offset };
      if (m.b64data !== undefined) p.data = fromBase64(m.b64data); else p.data = m.data;
      this._emit("publication", p);
      return;
    }
    if (m.type === "join" || m.type === "leave") {
      this._emit(m.type, { group: m.group, connection: m.connection });
      return;
    }
    var w = this.waiting[m.id];
    if (!w) return;
    delete this.waiting[m.id];
    clearTimeout(w.timer);
    if (m.type === "error") w.reject(WsGateError(m.message, m.code));
    else w.resolve(w.onReply ? w.onReply(m) : m);
  };

  // Sends a command; resolves with its reply, rejects with its error (or a timeout).
  WsGate.prototype._send = function (cmd, onReply) {
    var self = this;
    return new Promise(function (resolve, reject) {
      if (!self.ws || self.ws.readyState !== 1) {
        reject(WsGateError("not connected (" + self.state + ")", 0));
        return;
      }
      var id = self.nextId++;
      cmd.id = id;
      var timer = setTimeout(function () {
        delete self.waiting[id];
        reject(WsGateError("no reply to " + cmd.type + " within " + self.timeout + " ms", 0));
      }, self.timeout);
      self.waiting[id] = { resolve: resolve, reject: reject, timer: timer, onReply: onReply };
      self.ws.send(JSON.stringify(cmd));
    });
  };

  WsGate.prototype._subscribe = function (group) {
    var self = this;
    var s = this.subs[group];
    var cmd = { type: "subscribe", group: group };
    if (s.position) cmd.since = s.position;
    if (s.events) cmd.events = true;
    if (s.info !== undefined) cmd.info = s.info;
    var asked = !!s.position;
    return this._send(cmd, function (reply) {
      // Recovered: the missed publications follow and move the position on. Otherwise (or
      // on a first subscribe) the stream's current position is where to go on from.
      if (reply.epoch !== undefined && (!asked || reply.recovered === false)) {
        s.position = { epoch: reply.epoch, offset: reply.offset };
      }
      var ev = { group: group, recovered: asked ? reply.recovered === true : undefined };
      if (reply.reason) ev.reason = reply.reason;
      self._emit("subscribed", ev);
      self._settle(group, null, reply);
      return reply;
    }).catch(function (e) {
      self._settle(group, e);
      self._emit("error", e);
      throw e;
    });
  };

  // Settles the subscribe() calls made for `group` before the connection opened.
  WsGate.prototype._settle = function (group, err, reply) {
    var list = this.early[group];
    if (!list) return;
    delete this.early[group];
    for (var i = 0; i < list.length; i++) {
      clearTimeout(list[i].timer);
      if (err) list[i].reject(err); else list[i].resolve(reply);
    }
  };

  /**
   * Subscribes to a group, now and after every reconnect (recovering what was missed).
   * opts: since ({epoch, offset}), events (join/leave events), info (presence info).
   * Resolves with the server's reply once connected and subscribed, also when called before
   * the connection opened: whoever awaits it gets every publication made from then on.
   */
  WsGate.prototype.subscribe = function (group, opts) {
    opts = opts || {};
    this.subs[group] = { position: opts.since || null, events: !!opts.events, info: opts.info };
    if (this.state === "connected") return this._subscribe(group);
    // The subscribe goes out when the socket opens (see _connect); answering before that would
    // let the caller publish, or tell another client to, while nothing is subscribed yet.
    var self = this;
    return new Promise(function (resolve, reject) {
      var w = { resolve: resolve, reject: reject };
      w.timer = setTimeout(function () {
        var list = self.early[group] || [];
        var i = list.indexOf(w);
        if (i >= 0) list.splice(i, 1);
        reject(WsGateError("not connected within " + self.timeout + " ms; the client keeps trying and subscribes to " +
          group + " once connected (the \"subscribed\" event says when)", 0));
      }, self.timeout);
      (self.early[group] = self.early[group] || []).push(w);
    });
  };

  WsGate.prototype.unsubscribe = function (group) {
    delete this.subs[group];
    this._settle(group, WsGateError("unsubscribed from " + group + " before the connection opened", 0));
    return this._send({ type: "unsubscribe", group: group });
  };

  /** Publishes `data` (any JSON value, or a Uint8Array/ArrayBuffer as binary) to a group. */
  WsGate.prototype.publish = function (group, data) {
    var cmd = { type: "publish", group: group };
    if (data instanceof ArrayBuffer) data = new Uint8Array(data);
    if (data instanceof Uint8Array) cmd.b64data = toBase64(data); else cmd.data = data;
    return this._send(cmd);
  };

  /** The group's kept publications: opts.limit, opts.since ({epoch, offset}). */
  WsGate.prototype.history = function (group, opts) {
    opts = opts || {};
    var cmd = { type: "history", group: group };
    if (opts.limit) cmd.limit = opts.limit;
    if (opts.since) cmd.since = opts.since;
    return this._send(cmd, function (reply) {
      reply.publications = reply.publications.map(function (m) {
        var p = { group: m.group, epoch: m.epoch, offset: m.offset };
        if (m.b64data !== undefined) p.data = fromBase64(m.b64data); else p.data = m.data;
        return p;
      });
      return reply;
    });
  };

  /** Who is in the group: { count, connections: [{ id, user, info }] }. */
  WsGate.prototype.presence = function (group) {
    return this._send({ type: "presence", group: group });
  };

  /** The last position seen in a group ({epoch, offset}), to resume from elsewhere. */
  WsGate.prototype.position = function (group) {
    var s = this.subs[group];
    return s ? s.position : null;
  };

  /** Closes for good (no reconnect). */
  WsGate.prototype.close = function () {
    this.closed = true;
    clearTimeout(this.retryTimer);
    for (var group in this.early) this._settle(group, WsGateError("closed before the connection opened", 0));
    if (this.ws) this.ws.close(1000, "client closed");
    else this._setState("closed", { code: 1000, reason: "client closed" });
  };

  WsGate.PROTOCOL = PROTOCOL;
  if (typeof module === "object" && module.exports) module.exports = WsGate;
  else root.WsGate = WsGate;
})(typeof globalThis !== "undefined" ? globalThis : this);

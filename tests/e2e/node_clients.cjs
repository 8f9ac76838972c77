// Runs one npm SSE client over one URL and prints what it saw as JSON:
// {"events": [[type, data], ...], "note": why it stopped}.
// Usage: node node_clients.cjs (eventsource|fetch-event-source) URL
// Modules come from NODE_PATH (the test setup's npm cache).
"use strict";
globalThis.window = globalThis; // fetch-event-source is written for browsers: window.setTimeout, window.fetch
const [client, url] = process.argv.slice(2);
const TERMINAL = ["done", "error", "end"];
const seen = [];
const finish = (note) => { process.stdout.write(JSON.stringify({events: seen, note})); process.exit(0); };
setTimeout(() => finish("timeout"), 8000);

if (client === "eventsource") {
  const {EventSource} = require("eventsource");
  const es = new EventSource(url);
  for (const type of ["message", "token", "done", "end", "keepalive"]) {
    es.addEventListener(type, (e) => {
      seen.push([type, e.data]);
      if (TERMINAL.includes(type)) { es.close(); finish("terminal"); }
    });
  }
  es.addEventListener("error", (e) => {
    if (e.data !== undefined) { seen.push(["error", e.data]); es.close(); finish("terminal"); }
    else if (e.code && e.code !== 200) { es.close(); finish("status " + e.code); }
    else { es.close(); finish("dropped"); } // a network error: it would reconnect by itself
  });
} else {
  const {fetchEventSource} = require("@microsoft/fetch-event-source");
  const ctrl = new AbortController();
  fetchEventSource(url, {
    signal: ctrl.signal,
    openWhenHidden: true,
    async onopen(resp) { if (!resp.ok) { finish("status " + resp.status); } },
    onmessage(ev) {
      seen.push([ev.event || "message", ev.data]);
      if (TERMINAL.includes(ev.event)) { ctrl.abort(); finish("terminal"); }
    },
    onclose() { finish("closed"); },
    onerror(err) { finish("broken"); throw err; },
  }).catch(() => finish("broken"));
}

// Runs gateway/static/app.js in Node with a stub DOM and a scripted fetch: does the page follow a job's
// event stream, resume it with Last-Event-ID after a drop, and poll when the stream is refused?
// Usage: node page_harness.js <app.js> <scenario: stream|refused>; prints a JSON report on stdout.
"use strict";
const fs = require("fs");
const vm = require("vm");

const [appPath, scenario] = process.argv.slice(2);
const elements = {};
function element(id) {
  if (!elements[id]) {
    elements[id] = {
      id, value: "", textContent: "", hidden: false, disabled: false, dataset: {}, className: "", title: "",
      append() {}, replaceChildren() {}, addEventListener() {}, scrollIntoView() {},
    };
  }
  return elements[id];
}
const document = {
  body: { dataset: {} },
  getElementById: element,
  querySelector: () => ({ value: "diffusion", checked: true }),
  querySelectorAll: () => [],
  createElement: () => element("x" + Math.random()),
};
const storage = {};
const localStorage = {
  getItem: (k) => (k in storage ? storage[k] : null),
  setItem: (k, v) => { storage[k] = String(v); },
  removeItem: (k) => { delete storage[k]; },
};

const JOB = "44444444-4444-4444-8444-444444444444";
const doc = (status, step) => ({
  job_id: JOB, model: "diffusion", status, parameters: { seed: 1, num_images: 1, steps: 10 }, previews: [],
  progress: step === undefined ? null : { step, total: 10, fraction: step / 10 }, queue_position: null,
});
const frame = (event, body, id) => `id: ${id}\r\nevent: ${event}\r\ndata: ${JSON.stringify(body)}\r\n\r\n`;
const requests = [];
const rendered = [];

function streamOf(text) {
  const bytes = new TextEncoder().encode(text);
  return new ReadableStream({ start(c) { c.enqueue(bytes.slice(0, 7)); c.enqueue(bytes.slice(7)); c.close(); } });
}

async function fetchStub(path, init) {
  const h = (init && init.headers) || {};
  requests.push({ path, lastEventId: h["Last-Event-ID"] || null });
  if (path === "models/info") return new Response(JSON.stringify({ models: {}, queues: {} }));
  if (path.endsWith("/events")) {
    if (scenario === "refused") return new Response('{"detail": "busy"}', { status: 429 });
    const streams = requests.filter((r) => r.path.endsWith("/events")).length;
    if (streams === 1) return new Response(streamOf(": hi\n\n" + frame("status", doc("started", 3), "5-0")));
    return new Response(streamOf(frame("end", doc("finished", 10), "9-0")));
  }
  if (path === `jobs/${JOB}`) {
    const polls = requests.filter((r) => r.path === path).length;
    return new Response(JSON.stringify(polls < 2 ? doc("started", 6) : doc("finished", 10)));
  }
  throw new Error("unexpected " + path);
}

const context = {
  document, localStorage, fetch: fetchStub, console, JSON, URL, Response, ReadableStream, TextDecoderStream,
  TextEncoder, AbortController, Option: function () {}, Image: function () { return element("img"); },
  location: { href: "http://gw/" }, setInterval: () => 0, clearTimeout, setTimeout,
};
vm.createContext(context);
vm.runInContext(fs.readFileSync(appPath, "utf8") + "\n;globalThis.__openJob = openJob;", context);
const seen = [];
const originalRender = vm.runInContext("render", context);
context.render = (status) => { seen.push(status.status); return originalRender(status); };
vm.runInContext("render = globalThis.render;", context);
context.__openJob(JOB, "diffusion");
setTimeout(() => {
  process.stdout.write(JSON.stringify({ requests, seen, status: element("job-status").textContent }));
}, 1500);

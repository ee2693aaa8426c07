// An agent on Node, as OpenClaw and most JavaScript agents run: built-in fetch (undici)
// and the http module (what axios uses in Node), each calling through blindkey.
// Usage: node node_agent.js PROXY_URL AGENT_TOKEN TARGET_URL; prints one JSON line per call.
"use strict";
const http = require("node:http");

const [proxy, token, target] = process.argv.slice(2);
const headers = {
  "X-AS-Target-URL": target,
  "X-AS-Agent-Token": token,
  "X-AS-Inject-Bearer": "GITHUB_TOKEN",
};
const body = JSON.stringify({ question: "who am I?" });

function report(client, method, status, got) {
  const line = {
    client,
    method,
    status,
    authorization_sha256: got("x-echo-authorization-sha256"),
    body_sha256: got("x-echo-body-sha256"),
  };
  process.stdout.write(JSON.stringify(line) + "\n");
}

async function viaFetch(method) {
  const init = { method, headers: { ...headers } };
  if (method === "POST") {
    init.headers["Content-Type"] = "application/json";
    init.body = body;
  }
  const response = await fetch(proxy, init);
  await response.arrayBuffer();
  report("fetch", method, response.status, (name) => response.headers.get(name));
}

function viaHttp(method) {
  return new Promise((resolve, reject) => {
    const options = { method, headers: { ...headers } };
    if (method === "POST") {
      options.headers["Content-Type"] = "application/json";
      options.headers["Content-Length"] = Buffer.byteLength(body);
    }
    const request = http.request(proxy, options, (response) => {
      response.resume();
      response.on("end", () => {
        report("http", method, response.statusCode, (name) => response.headers[name] || null);
        resolve();
      });
      response.on("error", reject);
    });
    request.on("error", reject);
    request.end(method === "POST" ? body : undefined);
  });
}

(async () => {
  for (const method of ["GET", "POST"]) {
    await viaFetch(method);
    await viaHttp(method);
  }
})().catch((error) => {
  process.stderr.write(String(error && error.stack ? error.stack : error) + "\n");
  process.exit(1);
});

// A Node program that knows nothing of blindkey: it reads its key from GITHUB_TOKEN and
// calls URL, the way `blindkey run` starts it (HTTPS_PROXY with the agent's token,
// NODE_EXTRA_CA_CERTS with blindkey's CA). Node 20's fetch ignores HTTPS_PROXY by itself;
// each mode is one way that a Node program does use it. Prints the answer's body.
// Usage: node node_proxy_client.js fetch|https
"use strict";
const http = require("node:http");
const https = require("node:https");
const net = require("node:net");
const tls = require("node:tls");

const url = new URL(process.env.URL);
const headers = { Authorization: `Bearer ${process.env.GITHUB_TOKEN}` };

// undici's EnvHttpProxyAgent (npm `undici`) as the global dispatcher: the built-in fetch
// then honours HTTPS_PROXY, NO_PROXY and the credentials in the proxy URL.
async function viaFetch() {
  const { EnvHttpProxyAgent, setGlobalDispatcher } = require("undici");
  setGlobalDispatcher(new EnvHttpProxyAgent());
  const response = await fetch(url, { headers });
  return response.text();
}

// The https module with a CONNECT tunnel, as https-proxy-agent and global-agent do it:
// CONNECT to the proxy (credentials from the proxy URL), then TLS inside the tunnel.
function tunnel() {
  const proxy = new URL(process.env.HTTPS_PROXY);
  const credentials = `${decodeURIComponent(proxy.username)}:${decodeURIComponent(proxy.password)}`;
  const authority = `${url.hostname}:${url.port || 443}`;
  return new Promise((resolve, reject) => {
    const request = http.request({
      host: proxy.hostname,
      port: proxy.port,
      method: "CONNECT",
      path: authority,
      headers: {
        Host: authority,
        "Proxy-Authorization": `Basic ${Buffer.from(credentials).toString("base64")}`,
      },
    });
    request.on("connect", (answer, socket) => {
      if (answer.statusCode !== 200) {
        reject(new Error(`CONNECT answered ${answer.statusCode}`));
        return;
      }
      resolve(socket);
    });
    request.on("error", reject);
    request.end();
  });
}

async function viaHttps() {
  const socket = await tunnel();
  return new Promise((resolve, reject) => {
    const request = https.request(url, {
      headers,
      // host names the certificate's subject; SNI only for a name (RFC 6066: no IPs).
      createConnection: () =>
        tls.connect({
          socket,
          host: url.hostname,
          servername: net.isIP(url.hostname) ? undefined : url.hostname,
        }),
    });
    request.on("response", (answer) => {
      let body = "";
      answer.setEncoding("utf8");
      answer.on("data", (chunk) => (body += chunk));
      answer.on("end", () => resolve(body));
    });
    request.on("error", reject);
    request.end();
  });
}

const modes = { fetch: viaFetch, https: viaHttps };
modes[process.argv[2]]().then(
  (body) => process.stdout.write(body),
  (error) => {
    process.stderr.write(`${error.stack}\n${error.cause ? error.cause.stack : ""}\n`);
    process.exit(1);
  },
);

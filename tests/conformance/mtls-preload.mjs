// Preloaded with `node --import ./mtls-preload.mjs ...` so that every HTTP
// request of an unmodified Node program (here: the MCP conformance suite)
// presents a client certificate: the gateway requires mTLS.
//
// Node's built-in fetch and the `undici` package both send their requests
// through the dispatcher installed with undici's setGlobalDispatcher, so one
// Agent with TLS options covers both.
//
// The server certificate is verified against the host of the request URL, as
// curl or a browser would. (undici on its own takes the TLS server name from
// a Host header the caller sets: a request to https://localhost:PORT with
// `Host: evil.example.com` would then fail in the client's own certificate
// check and never reach the server, which hides what the server does.)
//
//   MTLS_CERT  PEM certificate chain to present (the agent's X.509-SVID)
//   MTLS_KEY   PEM private key of that certificate
//   MTLS_CA    PEM trust bundle that verifies the gateway's certificate
//
// With none of the three set this module does nothing (plain runs stay
// plain); with only some of them it refuses to start.

import { readFileSync } from "node:fs";
import { Agent, buildConnector, setGlobalDispatcher } from "undici";

const names = ["MTLS_CERT", "MTLS_KEY", "MTLS_CA"];
const set = names.filter((n) => process.env[n]);

if (set.length === names.length) {
  const read = (n) => readFileSync(process.env[n]);
  const connect = buildConnector({ cert: read("MTLS_CERT"), key: read("MTLS_KEY"), ca: read("MTLS_CA") });
  // Without a servername from the request, the connector uses the URL's host.
  setGlobalDispatcher(new Agent({ connect: (opts, cb) => connect({ ...opts, servername: undefined }, cb) }));
} else if (set.length > 0) {
  const missing = names.filter((n) => !process.env[n]);
  throw new Error(`mtls-preload: ${set.join(", ")} set but ${missing.join(", ")} missing`);
}

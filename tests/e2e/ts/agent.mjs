#!/usr/bin/env node
// MCP agent built on the TypeScript SDK 1.x client (Client + StreamableHTTPClientTransport),
// speaking Streamable HTTP over mutual TLS through an undici Agent dispatcher.
//
//   node agent.mjs --url https://localhost:PORT/mcp --cert chain.pem --key key.pem --ca bundle.pem \
//       list 'echo:{"text":"hi"}' 'delete_repository:{"repo":"x"}'
//
// Same CLI and output as py_agent.py: one JSON object per line on stdout:
//   {"negotiated": {"protocol_version": ..., "server_info": ..., "session_id": ...}}
//   {"call": "list", "ok": true, "result": {...}}
//   {"call": "...", "ok": false, "error": {"code": ..., "message": ..., "data": ..., "http_status": ...}}
// A failed connect prints {"connect": false, "error": {...}} and exits 2.
// Rotation mode: --loop N and/or --repeat-until FILE, --interval-ms M; every iteration uses a
// new Client, a new undici Agent and so a new TLS connection (unless --loop-same-client).
// --no-keepalive: every HTTP request on a new connection (a load balancer in TCP mode then
// spreads requests, not connections); --number-calls: `{i}` in a call becomes the iteration
// number, so each call can be told apart in the upstream's log. The loop summary names the
// session ids the agent held (`session_ids`, in order; one for a session kept throughout).
//
// Needs Node >= 20.18.1 (undici 7).

import { readFileSync, existsSync } from 'node:fs';
import { parseArgs } from 'node:util';
import { X509Certificate, createPrivateKey } from 'node:crypto';
import { Agent, buildConnector, fetch as undiciFetch } from 'undici';
import { Client } from '@modelcontextprotocol/sdk/client/index.js';
import { StreamableHTTPClientTransport, StreamableHTTPError } from '@modelcontextprotocol/sdk/client/streamableHttp.js';
import { McpError, ListRootsRequestSchema, ElicitRequestSchema } from '@modelcontextprotocol/sdk/types.js';

const { values: opts, positionals } = parseArgs({
  allowPositionals: true,
  options: {
    url: { type: 'string' },
    cert: { type: 'string' },
    key: { type: 'string' },
    ca: { type: 'string' },
    'no-check-hostname': { type: 'boolean', default: false },
    header: { type: 'string', multiple: true, default: [] },
    timeout: { type: 'string', default: '30' },
    'terminate-session': { type: 'boolean', default: false },
    loop: { type: 'string', default: '0' },
    'repeat-until': { type: 'string' },
    'interval-ms': { type: 'string', default: '200' },
    'loop-same-client': { type: 'boolean', default: false },
    'quiet-iterations': { type: 'boolean', default: false },
    'reload-cert': { type: 'boolean', default: false },
    'no-keepalive': { type: 'boolean', default: false },
    'number-calls': { type: 'boolean', default: false },
    help: { type: 'boolean', default: false },
  },
});

if (opts.help || !opts.url) {
  process.stderr.write(
    'usage: agent.mjs --url URL [--cert PEM --key PEM] [--ca PEM] [--no-check-hostname] [--header "K: V"]... ' +
      '[--terminate-session] [--loop N] [--repeat-until FILE] [--interval-ms M] [--loop-same-client] [--reload-cert] ' +
      '[--no-keepalive] [--number-calls] ' +
      "[--] CALLS... (CALL: list | read:URI | tool | 'tool:{json}')\n",
  );
  process.exit(opts.help ? 0 : 64);
}

const timeoutMs = Number(opts.timeout) * 1000;

function emit(obj) {
  process.stdout.write(JSON.stringify(obj) + '\n');
}

function parseCall(spec) {
  if (spec === 'list') return ['list', null];
  if (spec.startsWith('read:')) return ['read', spec.slice(5)];
  if (spec === 'prompts') return ['prompts', null];
  if (spec === 'resources') return ['resources', null];
  if (spec.startsWith('prompt:')) {
    const [name, args] = parseCall(spec.slice(7));
    return ['prompt', { name, arguments: args }];
  }
  const i = spec.indexOf(':');
  const name = i < 0 ? spec : spec.slice(0, i);
  const rest = i < 0 ? '' : spec.slice(i + 1).trim();
  const args = rest ? JSON.parse(rest) : {};
  if (args === null || typeof args !== 'object' || Array.isArray(args)) {
    throw new Error(`arguments of ${spec} must be a JSON object`);
  }
  return [name, args];
}

const tls = {};
if (opts.ca) tls.ca = readFileSync(opts.ca);
if (opts.cert) tls.cert = readFileSync(opts.cert);
if (opts.key) tls.key = readFileSync(opts.key);
tls.rejectUnauthorized = true;
if (opts['no-check-hostname']) tls.checkServerIdentity = () => undefined;

const extraHeaders = {};
for (const h of opts.header) {
  const i = h.indexOf(':');
  extraHeaders[h.slice(0, i).trim()] = h.slice(i + 1).trim();
}

// --reload-cert: every new TLS connection presents the certificate the
// files hold now (a rotated SVID), as a client that follows its SVID does;
// a pair caught mid-replacement (new certificate, old key) is skipped and
// the last whole pair kept.
let pair = { cert: tls.cert, key: tls.key };
function currentPair() {
  try {
    const cert = readFileSync(opts.cert);
    const key = readFileSync(opts.key);
    if (new X509Certificate(cert).checkPrivateKey(createPrivateKey(key))) pair = { cert, key };
  } catch {
    // a file replaced under us: keep the last whole pair
  }
  return pair;
}

function connectOption() {
  if (!opts['reload-cert']) return tls;
  return (options, callback) => buildConnector({ ...tls, ...currentPair() })(options, callback);
}

// One undici Agent = one connection pool; a new Agent means new TLS handshakes.
// `pipelining: 0` turns keep-alive off: one connection per request.
function makeConnection() {
  const dispatcher = new Agent({ connect: connectOption(), ...(opts['no-keepalive'] ? { pipelining: 0 } : {}) });
  const rec = { lastStatus: null, sessionId: null, requests: [] };
  const fetchFn = async (url, init) => {
    const res = await undiciFetch(url, { ...init, dispatcher });
    rec.lastStatus = res.status;
    rec.requests.push([init?.method ?? 'GET', res.status, res.headers.get('content-type')]);
    const sid = res.headers.get('mcp-session-id');
    if (sid) rec.sessionId = sid;
    return res;
  };
  const transport = new StreamableHTTPClientTransport(new URL(opts.url), {
    fetch: fetchFn,
    requestInit: Object.keys(extraHeaders).length ? { headers: extraHeaders } : undefined,
  });
  const client = new Client(
    { name: 'e2e-ts-agent', version: '1.0.0' },
    { capabilities: { roots: { listChanged: false }, elicitation: { form: {} } } },
  );
  // Server-to-client requests: record that the agent saw them (a gateway
  // that denies one must keep it from ever arriving here), then answer.
  client.setRequestHandler(ListRootsRequestSchema, async () => {
    console.log(JSON.stringify({ server_request: 'roots/list' }));
    return { roots: [{ uri: 'file:///workspace', name: 'workspace' }] };
  });
  client.setRequestHandler(ElicitRequestSchema, async () => {
    console.log(JSON.stringify({ server_request: 'elicitation/create' }));
    return { action: 'accept', content: { ok: true } };
  });
  return { dispatcher, transport, client, rec };
}

function errorDict(err, rec) {
  let out;
  if (err instanceof McpError) {
    const prefix = `MCP error ${err.code}: `;
    const message = err.message.startsWith(prefix) ? err.message.slice(prefix.length) : err.message;
    out = { code: err.code, message, data: err.data ?? null };
  } else if (err instanceof StreamableHTTPError) {
    // Non-2xx HTTP answer: the SDK keeps only the status and the body text.
    // If the body is a JSON-RPC error, report its code/message/data.
    out = { code: null, message: err.message, data: null, http_status: err.code };
    const m = /^Error POSTing to endpoint: ([\s\S]*)$/.exec(err.message);
    const prefix = `Streamable HTTP error: `;
    const text = m ? m[1] : err.message.startsWith(prefix) ? err.message.slice(prefix.length) : null;
    if (text !== null) {
      const body = /(\{[\s\S]*\})\s*$/.exec(text);
      if (body) {
        try {
          const parsed = JSON.parse(body[1]);
          if (parsed && parsed.error && typeof parsed.error.code === 'number') {
            out = {
              code: parsed.error.code,
              message: parsed.error.message,
              data: parsed.error.data ?? null,
              http_status: err.code,
            };
          }
        } catch {
          /* not JSON */
        }
      }
    }
  } else {
    let e = err;
    const causes = [];
    while (e && e.cause && causes.length < 4) {
      e = e.cause;
      causes.push(`${e.name ?? 'Error'}: ${e.code ? e.code + ' ' : ''}${e.message}`);
    }
    out = {
      code: null,
      message: `${err?.name ?? 'Error'}: ${err?.message ?? String(err)}${causes.length ? ' <- ' + causes.join(' <- ') : ''}`,
      data: null,
    };
  }
  if (rec && rec.lastStatus !== null && out.http_status === undefined) out.http_status = rec.lastStatus;
  return out;
}

async function runCall(client, spec, rec) {
  // Each call is reported with how long it took to be answered (`seconds`).
  const started = performance.now();
  const out = await runCallOnce(client, spec, rec);
  out.seconds = Math.round(performance.now() - started) / 1000;
  return out;
}

async function runCallOnce(client, spec, rec) {
  try {
    const [name, args] = parseCall(spec);
    const result =
      name === 'list'
        ? await client.listTools(undefined, { timeout: timeoutMs })
        : name === 'read'
          ? await client.readResource({ uri: args }, { timeout: timeoutMs })
          : name === 'resources'
            ? await client.listResources(undefined, { timeout: timeoutMs })
            : name === 'prompts'
            ? await client.listPrompts(undefined, { timeout: timeoutMs })
            : name === 'prompt'
              ? await client.getPrompt(args, { timeout: timeoutMs })
              : await client.callTool({ name, arguments: args }, undefined, { timeout: timeoutMs });
    return { call: spec, ok: true, result };
  } catch (err) {
    return { call: spec, ok: false, error: errorDict(err, rec) };
  }
}

async function connect(conn) {
  await conn.client.connect(conn.transport, { timeout: timeoutMs });
}

async function close(conn) {
  try {
    if (opts['terminate-session'] && conn.transport.sessionId) await conn.transport.terminateSession();
  } catch {
    /* reported by the caller's counts, not here */
  }
  try {
    await conn.client.close();
  } catch {
    /* ignore */
  }
  await conn.dispatcher.close().catch(() => {});
}

function negotiated(conn) {
  return {
    negotiated: {
      protocol_version: conn.transport.protocolVersion ?? null,
      server_info: conn.client.getServerVersion() ?? null,
      session_id: conn.transport.sessionId ?? conn.rec.sessionId ?? null,
      sdk: 'typescript-mcp',
    },
  };
}

async function runOnce(calls) {
  const conn = makeConnection();
  // Errors on the background GET stream go to onerror; keep them off stdout.
  conn.transport.onerror = undefined;
  try {
    await connect(conn);
  } catch (err) {
    emit({ connect: false, error: errorDict(err, conn.rec) });
    await close(conn);
    return 2;
  }
  emit(negotiated(conn));
  for (const spec of calls) emit(await runCall(conn.client, spec, conn.rec));
  await close(conn);
  emit({ http_methods: conn.rec.requests });
  return 0;
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

async function runLoop(calls) {
  const n = Number(opts.loop);
  const until = opts['repeat-until'];
  const interval = Number(opts['interval-ms']);
  let ok = 0;
  let failed = 0;
  let i = 0;
  let firstFail = null;
  let lastFail = null;
  const errors = [];
  const sessionIds = [];
  const start = Date.now();
  let shared = null;
  while (true) {
    if (n && i >= n) break;
    if (until && existsSync(until)) break;
    i += 1;
    const line = { iteration: i, t: (Date.now() - start) / 1000 };
    let conn = null;
    try {
      if (opts['loop-same-client']) {
        if (!shared) {
          shared = makeConnection();
          await connect(shared);
        }
        conn = shared;
      } else {
        conn = makeConnection();
        await connect(conn);
      }
      const results = [];
      for (const spec of calls) {
        const numbered = opts['number-calls'] ? spec.replaceAll('{i}', String(i)) : spec;
        results.push(await runCall(conn.client, numbered, conn.rec));
      }
      const sid = conn.rec.sessionId;
      if (sid && sessionIds[sessionIds.length - 1] !== sid) sessionIds.push(sid);
      const bad = results.filter((r) => !r.ok);
      line.ok = bad.length === 0;
      if (bad.length) line.error = bad[0].error;
    } catch (err) {
      line.ok = false;
      line.error = errorDict(err, conn?.rec);
      if (opts['loop-same-client'] && shared) {
        await close(shared);
        shared = null;
      }
    } finally {
      if (!opts['loop-same-client'] && conn) await close(conn);
    }
    if (line.ok) ok += 1;
    else {
      failed += 1;
      lastFail = i;
      firstFail = firstFail ?? i;
      if (errors.length < 10) errors.push(line.error);
    }
    if (!opts['quiet-iterations']) emit(line);
    await sleep(interval);
  }
  if (shared) await close(shared);
  emit({
    loop: {
      iterations: i,
      ok,
      failed,
      first_failed_iteration: firstFail,
      last_failed_iteration: lastFail,
      errors,
      session_ids: sessionIds,
      seconds: (Date.now() - start) / 1000,
    },
  });
  return 0;
}

const looping = Number(opts.loop) > 0 || Boolean(opts['repeat-until']);
const calls = looping && positionals.length === 0 ? ['echo:{"text":"ping"}'] : positionals;
const code = await (looping ? runLoop(calls) : runOnce(calls));
process.exit(code);

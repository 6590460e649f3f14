// The MCP server that tests/e2e/test_conformance.py runs the conformance
// suite (`@modelcontextprotocol/conformance`, server scenarios) against,
// directly and through the gateway.
//
// It implements what the suite's server scenarios require, from their
// descriptions: the `test_*` tools, resources and prompts, logging levels,
// progress, completion, subscriptions, sampling and elicitation requests to
// the client, SSE resumption (`test_reconnection` closes its stream before
// the result; the client gets the result by reconnecting with Last-Event-ID)
// and DNS-rebinding protection (a non-loopback Host or Origin is refused).
//
// Built on the TypeScript SDK's low-level `Server` and its Streamable HTTP
// transport, stateful: one Server and transport per session, each with an
// in-memory event store so that streams can be resumed.
//
//   node server.mjs    listens on 127.0.0.1, a free port, path /mcp;
//                      prints "READY <port>" once it listens.

import http from "node:http";
import { randomUUID } from "node:crypto";
import { Server } from "@modelcontextprotocol/sdk/server/index.js";
import { StreamableHTTPServerTransport } from "@modelcontextprotocol/sdk/server/streamableHttp.js";
import {
  CallToolRequestSchema,
  CompleteRequestSchema,
  CreateMessageResultSchema,
  ElicitResultSchema,
  ErrorCode,
  GetPromptRequestSchema,
  ListPromptsRequestSchema,
  ListResourceTemplatesRequestSchema,
  ListResourcesRequestSchema,
  ListToolsRequestSchema,
  McpError,
  ReadResourceRequestSchema,
  SubscribeRequestSchema,
  UnsubscribeRequestSchema,
} from "@modelcontextprotocol/sdk/types.js";

const MCP_PATH = "/mcp";
// The `retry` a resumable stream's priming event tells the client to wait
// before it reconnects, in milliseconds.
const RETRY_MS = 500;
// JSON-RPC error code for an unknown resource (MCP resources, error handling).
const RESOURCE_NOT_FOUND = -32002;

// ---------------------------------------------------------------- fixtures

// A 1x1 red PNG.
const PNG = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAIAAACQd1PeAAAADElEQVR4nGP4z8AAAAMBAQDJ/pLvAAAAAElFTkSuQmCC";
const WAV = silentWav(8000, 80);

/** A mono 8-bit PCM WAV file of `samples` samples of silence, base64. */
function silentWav(rate, samples) {
  const header = Buffer.alloc(44);
  header.write("RIFF", 0);
  header.writeUInt32LE(36 + samples, 4);
  header.write("WAVEfmt ", 8);
  header.writeUInt32LE(16, 16); // fmt chunk size
  header.writeUInt16LE(1, 20); // PCM
  header.writeUInt16LE(1, 22); // channels
  header.writeUInt32LE(rate, 24);
  header.writeUInt32LE(rate, 28); // bytes per second
  header.writeUInt16LE(1, 32); // block align
  header.writeUInt16LE(8, 34); // bits per sample
  header.write("data", 36);
  header.writeUInt32LE(samples, 40);
  return Buffer.concat([header, Buffer.alloc(samples, 0x80)]).toString("base64");
}

const text = (t) => ({ type: "text", text: t });
const image = () => ({ type: "image", data: PNG, mimeType: "image/png" });
const embedded = (uri, mimeType, body) => ({ type: "resource", resource: { uri, mimeType, text: body } });
const result = (...content) => ({ content });
const delay = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

const NO_ARGS = { type: "object", properties: {} };
const stringArgs = (described) => ({
  type: "object",
  properties: Object.fromEntries(Object.entries(described).map(([k, d]) => [k, { type: "string", description: d }])),
  required: Object.keys(described),
});

// ------------------------------------------------------------------- tools
//
// Each tool: name, description, inputSchema, and run(args, ctx) where ctx is
// { server, transport, extra, log } for the session and the call.

const TOOLS = [
  {
    name: "test_simple_text",
    description: "Returns one text item",
    inputSchema: NO_ARGS,
    run: async () => result(text("This is a simple text response for testing.")),
  },
  {
    name: "test_image_content",
    description: "Returns a 1x1 PNG image",
    inputSchema: NO_ARGS,
    run: async () => result(image()),
  },
  {
    name: "test_audio_content",
    description: "Returns a short silent WAV",
    inputSchema: NO_ARGS,
    run: async () => result({ type: "audio", data: WAV, mimeType: "audio/wav" }),
  },
  {
    name: "test_embedded_resource",
    description: "Returns an embedded text resource",
    inputSchema: NO_ARGS,
    run: async () =>
      result(embedded("test://embedded-resource", "text/plain", "This is an embedded resource content.")),
  },
  {
    name: "test_multiple_content_types",
    description: "Returns text, an image and an embedded resource",
    inputSchema: NO_ARGS,
    run: async () =>
      result(
        text("Multiple content types test:"),
        image(),
        embedded("test://mixed-content-resource", "application/json", JSON.stringify({ test: "data", value: 123 })),
      ),
  },
  {
    name: "test_tool_with_logging",
    description: "Sends three info log messages, 50 ms apart, while it runs",
    inputSchema: NO_ARGS,
    run: async (_args, { log }) => {
      await log("info", "Tool execution started");
      await delay(50);
      await log("info", "Tool processing data");
      await delay(50);
      await log("info", "Tool execution completed");
      return result(text("Tool with logging executed"));
    },
  },
  {
    name: "test_tool_with_progress",
    description: "Reports progress 0, 50 and 100 of 100, 50 ms apart, when given a progress token",
    inputSchema: NO_ARGS,
    run: async (_args, { extra }) => {
      const token = extra._meta?.progressToken;
      for (const progress of [0, 50, 100]) {
        if (progress > 0) await delay(50);
        if (token !== undefined) {
          await extra.sendNotification({
            method: "notifications/progress",
            params: { progressToken: token, progress, total: 100 },
          });
        }
      }
      return result(text("Tool with progress executed"));
    },
  },
  {
    name: "test_error_handling",
    description: "Always fails, as a tool error (isError)",
    inputSchema: NO_ARGS,
    run: async () => ({ isError: true, content: [text("This tool intentionally returns an error for testing")] }),
  },
  {
    name: "test_sampling",
    description: "Asks the client's LLM (sampling/createMessage) and returns its answer",
    inputSchema: stringArgs({ prompt: "The prompt to send to the LLM" }),
    run: sampling,
  },
  {
    name: "test_elicitation",
    description: "Asks the user (elicitation/create) for a username and an email address",
    inputSchema: stringArgs({ message: "The message to show the user" }),
    run: async ({ message }, ctx) => {
      const answer = await elicit(ctx, message, {
        type: "object",
        properties: {
          username: { type: "string", description: "User's response" },
          email: { type: "string", description: "User's email address" },
        },
        required: ["username", "email"],
      });
      return result(text(`User response: action=${answer.action}, content=${JSON.stringify(answer.content ?? {})}`));
    },
  },
  {
    name: "test_elicitation_sep1034_defaults",
    description: "Elicitation whose schema has a default for every primitive type (SEP-1034)",
    inputSchema: NO_ARGS,
    run: async (_args, ctx) =>
      elicitationCompleted(
        await elicit(ctx, "Please review these details", {
          type: "object",
          properties: {
            name: { type: "string", description: "Name", default: "John Doe" },
            age: { type: "integer", description: "Age", default: 30 },
            score: { type: "number", description: "Score", default: 95.5 },
            status: {
              type: "string",
              description: "Status",
              enum: ["active", "inactive", "pending"],
              default: "active",
            },
            verified: { type: "boolean", description: "Verified", default: true },
          },
        }),
      ),
  },
  {
    name: "test_elicitation_sep1330_enums",
    description: "Elicitation whose schema has each of the five enum forms (SEP-1330)",
    inputSchema: NO_ARGS,
    run: async (_args, ctx) => elicitationCompleted(await elicit(ctx, "Please choose", ENUM_FORMS)),
  },
  {
    name: "json_schema_2020_12_tool",
    description: "Tool with JSON Schema 2020-12 features",
    inputSchema: {
      $schema: "https://json-schema.org/draft/2020-12/schema",
      type: "object",
      $defs: {
        address: { type: "object", properties: { street: { type: "string" }, city: { type: "string" } } },
      },
      properties: { name: { type: "string" }, address: { $ref: "#/$defs/address" } },
      additionalProperties: false,
    },
    run: async (args) => result(text(`Received: ${JSON.stringify(args)}`)),
  },
  {
    name: "test_reconnection",
    description: "Closes its SSE stream before answering; the answer comes on the resumed stream (SEP-1699)",
    inputSchema: NO_ARGS,
    run: reconnection,
  },
];

// The five enum forms of SEP-1330, as an elicitation schema.
const ENUM_FORMS = {
  type: "object",
  properties: {
    untitledSingle: { type: "string", title: "Untitled single-select", enum: ["option1", "option2", "option3"] },
    titledSingle: {
      type: "string",
      title: "Titled single-select",
      oneOf: [
        { const: "value1", title: "First Option" },
        { const: "value2", title: "Second Option" },
        { const: "value3", title: "Third Option" },
      ],
    },
    legacyEnum: {
      type: "string",
      title: "Legacy titled single-select",
      enum: ["opt1", "opt2", "opt3"],
      enumNames: ["Option One", "Option Two", "Option Three"],
    },
    untitledMulti: {
      type: "array",
      title: "Untitled multi-select",
      items: { type: "string", enum: ["option1", "option2", "option3"] },
    },
    titledMulti: {
      type: "array",
      title: "Titled multi-select",
      items: {
        anyOf: [
          { const: "value1", title: "First Choice" },
          { const: "value2", title: "Second Choice" },
          { const: "value3", title: "Third Choice" },
        ],
      },
    },
  },
};

async function sampling({ prompt }, { server, extra }) {
  if (!server.getClientCapabilities()?.sampling) {
    throw new McpError(ErrorCode.InvalidRequest, "The client does not support sampling");
  }
  const answer = await extra.sendRequest(
    {
      method: "sampling/createMessage",
      params: { messages: [{ role: "user", content: text(prompt) }], maxTokens: 100 },
    },
    CreateMessageResultSchema,
  );
  const said = answer.content.type === "text" ? answer.content.text : JSON.stringify(answer.content);
  return result(text(`LLM response: ${said}`));
}

/** Asks the client for input (elicitation/create) on the call's stream. */
async function elicit({ server, extra }, message, requestedSchema) {
  if (!server.getClientCapabilities()?.elicitation) {
    throw new McpError(ErrorCode.InvalidRequest, "The client does not support elicitation");
  }
  return extra.sendRequest({ method: "elicitation/create", params: { message, requestedSchema } }, ElicitResultSchema);
}

const elicitationCompleted = (answer) =>
  result(text(`Elicitation completed: action=${answer.action}, content=${JSON.stringify(answer.content ?? {})}`));

/**
 * Sends one event (which gives the client an event id to resume from, when
 * the stream had no priming event), closes the call's SSE stream, then
 * answers: the transport stores the answer in the event store, and the client
 * receives it on a GET with Last-Event-ID.
 */
async function reconnection(_args, { transport, extra, log }) {
  const told = await log("info", "Closing this stream; reconnect with Last-Event-ID for the result");
  // Only a client that holds an event id of this stream can resume it.
  if (told || extra.closeSSEStream) transport.closeSSEStream(extra.requestId);
  return result(text("Reconnection test completed: this result was sent after the stream closed"));
}

// --------------------------------------------------------------- resources

const RESOURCES = {
  "test://static-text": {
    name: "Static Text Resource",
    description: "A static text resource for testing",
    mimeType: "text/plain",
    contents: { text: "This is the content of the static text resource." },
  },
  "test://static-binary": {
    name: "Static Binary Resource",
    description: "A static binary resource (image) for testing",
    mimeType: "image/png",
    contents: { blob: PNG },
  },
  "test://watched-resource": {
    name: "Watched Resource",
    description: "A resource that can be subscribed to (it never changes)",
    mimeType: "text/plain",
    contents: { text: "Watched resource content" },
  },
};

const TEMPLATE = {
  uriTemplate: "test://template/{id}/data",
  name: "Resource Template",
  description: "A resource template with parameter substitution",
  mimeType: "application/json",
};
const TEMPLATE_URI = /^test:\/\/template\/([^/]+)\/data$/;

function readResource(uri) {
  const fixed = RESOURCES[uri];
  if (fixed) return { contents: [{ uri, mimeType: fixed.mimeType, ...fixed.contents }] };
  const id = TEMPLATE_URI.exec(uri)?.[1];
  if (id !== undefined) {
    const data = JSON.stringify({ id, templateTest: true, data: `Data for ID: ${id}` });
    return { contents: [{ uri, mimeType: TEMPLATE.mimeType, text: data }] };
  }
  throw new McpError(RESOURCE_NOT_FOUND, `Resource not found: ${uri}`);
}

// ----------------------------------------------------------------- prompts

const PROMPTS = [
  {
    name: "test_simple_prompt",
    description: "A prompt without arguments",
    arguments: [],
    get: () => [{ role: "user", content: text("This is a simple prompt for testing.") }],
  },
  {
    name: "test_prompt_with_arguments",
    description: "A prompt with required arguments",
    arguments: [
      { name: "arg1", description: "First test argument", required: true },
      { name: "arg2", description: "Second test argument", required: true },
    ],
    get: ({ arg1, arg2 }) => [{ role: "user", content: text(`Prompt with arguments: arg1='${arg1}', arg2='${arg2}'`) }],
  },
  {
    name: "test_prompt_with_embedded_resource",
    description: "A prompt that embeds the resource it is given",
    arguments: [{ name: "resourceUri", description: "URI of the resource to embed", required: true }],
    get: ({ resourceUri }) => [
      { role: "user", content: embedded(resourceUri, "text/plain", "Embedded resource content for testing.") },
      { role: "user", content: text("Please process the embedded resource above.") },
    ],
  },
  {
    name: "test_prompt_with_image",
    description: "A prompt with an image",
    arguments: [],
    get: () => [
      { role: "user", content: image() },
      { role: "user", content: text("Please analyze the image above.") },
    ],
  },
];

function getPrompt(name, args = {}) {
  const prompt = PROMPTS.find((p) => p.name === name);
  if (!prompt) throw new McpError(ErrorCode.InvalidParams, `Unknown prompt: ${name}`);
  const missing = prompt.arguments.filter((a) => a.required && typeof args[a.name] !== "string").map((a) => a.name);
  if (missing.length) throw new McpError(ErrorCode.InvalidParams, `Missing arguments: ${missing.join(", ")}`);
  return { description: prompt.description, messages: prompt.get(args) };
}

// -------------------------------------------------------------- completion

// Candidate values per completable argument, keyed "<ref>#<argument>".
const COMPLETIONS = {
  "ref/prompt:test_prompt_with_arguments#arg1": ["paris", "park", "party", "test", "testing"],
  "ref/prompt:test_prompt_with_arguments#arg2": ["world", "word", "work"],
  "ref/resource:test://template/{id}/data#id": ["1", "2", "3", "123"],
};

function complete({ ref, argument }) {
  const key = `${ref.type}:${ref.name ?? ref.uri}#${argument.name}`;
  const values = (COMPLETIONS[key] ?? []).filter((v) => v.startsWith(argument.value));
  return { completion: { values, total: values.length, hasMore: false } };
}

// ----------------------------------------------------------------- session

/** One session's MCP server, talking through `transport`. */
function conformanceServer(transport) {
  const server = new Server(
    { name: "spiffe-mcp-gateway-conformance-server", version: "1.0.0" },
    {
      capabilities: {
        tools: {},
        resources: { subscribe: true },
        prompts: {},
        logging: {},
        completions: {},
      },
    },
  );
  const subscriptions = new Set();

  server.setRequestHandler(ListToolsRequestSchema, async () => ({
    tools: TOOLS.map(({ name, description, inputSchema }) => ({ name, description, inputSchema })),
  }));
  server.setRequestHandler(CallToolRequestSchema, async (request, extra) => {
    const { name, arguments: args = {} } = request.params;
    const tool = TOOLS.find((t) => t.name === name);
    if (!tool) throw new McpError(ErrorCode.InvalidParams, `Unknown tool: ${name}`);
    const missing = (tool.inputSchema.required ?? []).filter((k) => typeof args[k] !== "string");
    if (missing.length) throw new McpError(ErrorCode.InvalidParams, `Missing arguments: ${missing.join(", ")}`);
    // Sends a log message on the call's stream unless the session's level
    // filters it out; tells whether it was sent.
    const log = async (level, data) => {
      if (server.isMessageIgnored(level, extra.sessionId)) return false;
      await extra.sendNotification({ method: "notifications/message", params: { level, logger: "conformance", data } });
      return true;
    };
    return tool.run(args, { server, transport, extra, log });
  });

  server.setRequestHandler(ListResourcesRequestSchema, async () => ({
    resources: Object.entries(RESOURCES).map(([uri, { name, description, mimeType }]) => ({
      uri,
      name,
      description,
      mimeType,
    })),
  }));
  server.setRequestHandler(ListResourceTemplatesRequestSchema, async () => ({ resourceTemplates: [TEMPLATE] }));
  server.setRequestHandler(ReadResourceRequestSchema, async (request) => readResource(request.params.uri));
  server.setRequestHandler(SubscribeRequestSchema, async (request) => {
    readResource(request.params.uri); // refuses an unknown resource
    subscriptions.add(request.params.uri);
    return {};
  });
  server.setRequestHandler(UnsubscribeRequestSchema, async (request) => {
    subscriptions.delete(request.params.uri);
    return {};
  });

  server.setRequestHandler(ListPromptsRequestSchema, async () => ({
    prompts: PROMPTS.map(({ name, description, arguments: args }) => ({ name, description, arguments: args })),
  }));
  server.setRequestHandler(GetPromptRequestSchema, async (request) =>
    getPrompt(request.params.name, request.params.arguments),
  );
  server.setRequestHandler(CompleteRequestSchema, async (request) => complete(request.params));
  return server;
}

/**
 * Events of one session's streams, in the order stored, so that a client
 * can resume a stream after any of its events. Kept for the session's life.
 * An event id is "<stream id>:<number of the event in its stream>".
 */
class MemoryEventStore {
  #events = new Map(); // event id -> { streamId, message }
  #counts = new Map(); // stream id -> events stored

  async storeEvent(streamId, message) {
    const n = (this.#counts.get(streamId) ?? 0) + 1;
    this.#counts.set(streamId, n);
    const id = `${streamId}:${n}`;
    this.#events.set(id, { streamId, message });
    return id;
  }

  async getStreamIdForEventId(eventId) {
    return this.#events.get(eventId)?.streamId;
  }

  async replayEventsAfter(lastEventId, { send }) {
    const last = this.#events.get(lastEventId);
    if (!last) throw new Error(`unknown event id ${lastEventId}`);
    let after = false;
    for (const [id, { streamId, message }] of this.#events) {
      // A priming event (stored as {}) carries no message to replay.
      if (after && streamId === last.streamId && "jsonrpc" in message) await send(id, message);
      after ||= id === lastEventId;
    }
    return last.streamId;
  }
}

const sessions = new Map(); // session id -> transport

/** A transport with its server, registered once its initialize succeeds. */
async function newSession() {
  const transport = new StreamableHTTPServerTransport({
    sessionIdGenerator: randomUUID,
    eventStore: new MemoryEventStore(),
    retryInterval: RETRY_MS,
    onsessioninitialized: (id) => sessions.set(id, transport),
    onsessionclosed: (id) => sessions.delete(id),
  });
  await conformanceServer(transport).connect(transport);
  return transport;
}

// -------------------------------------------------------------------- HTTP

const LOOPBACK_NAMES = new Set(["localhost", "127.0.0.1", "[::1]"]);

/** Is `authority` (host[:port]) a loopback name? */
function isLoopbackAuthority(authority) {
  try {
    return LOOPBACK_NAMES.has(new URL(`http://${authority}`).hostname);
  } catch {
    return false;
  }
}

/** Is `origin` an http(s) origin on a loopback name? */
function isLoopbackOrigin(origin) {
  try {
    const url = new URL(origin);
    return (url.protocol === "http:" || url.protocol === "https:") && LOOPBACK_NAMES.has(url.hostname);
  } catch {
    return false;
  }
}

function refuse(res, status, message) {
  res.writeHead(status, { "Content-Type": "application/json" });
  res.end(JSON.stringify({ jsonrpc: "2.0", error: { code: -32000, message }, id: null }));
}

async function handle(req, res) {
  // DNS rebinding: a browser tricked into calling this server sends the
  // attacker's name in Host, and its origin in Origin.
  if (!isLoopbackAuthority(req.headers.host ?? "")) return refuse(res, 403, "Forbidden: Host is not a loopback name");
  if (req.headers.origin !== undefined && !isLoopbackOrigin(req.headers.origin)) {
    return refuse(res, 403, "Forbidden: Origin is not a loopback origin");
  }
  if (new URL(req.url, "http://localhost").pathname !== MCP_PATH) return refuse(res, 404, "Not Found");

  const sessionId = req.headers["mcp-session-id"];
  if (sessionId !== undefined) {
    const transport = sessions.get(sessionId);
    if (!transport) return refuse(res, 404, "Session not found");
    return transport.handleRequest(req, res);
  }
  // Without a session only an initialize can start one; the new transport
  // refuses anything else, and is then dropped.
  const transport = await newSession();
  await transport.handleRequest(req, res);
  if (transport.sessionId === undefined) await transport.close();
}

const httpServer = http.createServer((req, res) => {
  handle(req, res).catch((err) => {
    console.error(err);
    if (!res.headersSent) refuse(res, 500, "Internal error");
    else res.destroy();
  });
});
httpServer.listen(0, "127.0.0.1", () => console.log(`READY ${httpServer.address().port}`));

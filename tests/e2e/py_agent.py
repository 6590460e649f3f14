#!/usr/bin/env python3
"""MCP agent built on the Python `mcp` SDK 2.x client, speaking Streamable HTTP over mutual TLS.

    py_agent.py --url https://localhost:PORT/mcp --cert chain.pem --key key.pem --ca bundle.pem \
        list 'echo:{"text":"hi"}' 'delete_repository:{"repo":"x"}'

Connects once (the SDK's `mode="auto"`: a `server/discover` probe at
2026-07-28, falling back to `initialize` on a 2025-era server), then runs each
call on the same client. Output, one JSON object per line on stdout:

    {"negotiated": {"protocol_version": ..., "server_info": ..., "session_id": ...}}
    {"call": "list", "ok": true, "result": {...}}
    {"call": "echo:{...}", "ok": false, "error": {"code": ..., "message": ..., "data": ..., "http_status": ...}}

A failed connect prints `{"connect": false, "error": {...}}` and exits 2.

Rotation mode (`--loop N` and/or `--repeat-until FILE`, with `--interval-ms`):
runs the calls (default `echo`) repeatedly, each iteration on a NEW client and
a NEW TLS connection (unless `--loop-same-client`), printing one line per
iteration and a final `{"loop": {"ok": .., "failed": .., ...}}` summary.
`--no-keepalive`: every HTTP request on a new connection (a load balancer in
TCP mode then spreads requests, not connections); `--number-calls`: `{i}` in a
call becomes the iteration number, so each call can be told apart in the
upstream's log. The summary names the session ids the agent held
(`session_ids`, in order; none at 2026-07-28).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import ssl
import sys
import tempfile
import time
from typing import Any

import httpx2
from mcp import Client, types
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError


def emit(obj: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(obj, ensure_ascii=False, default=str) + "\n")
    sys.stdout.flush()


def parse_call(spec: str) -> tuple[str, dict[str, Any] | None]:
    """`list` -> tools/list; `read:URI` -> resources/read; `prompts` -> prompts/list;
    `prompt:name:{json}` -> prompts/get; `resources` -> resources/list; `name` or `name:{json}` -> tools/call."""
    if spec in ("list", "prompts", "resources"):
        return spec, None
    if spec.startswith("read:"):
        return "read", None
    if spec.startswith("prompt:"):
        name, args = parse_call(spec[len("prompt:") :])
        return "prompt", {"name": name, "arguments": args}
    name, sep, rest = spec.partition(":")
    args = json.loads(rest) if sep and rest.strip() else {}
    if not isinstance(args, dict):
        raise ValueError(f"arguments of {spec!r} must be a JSON object")
    return name, args


def build_ssl_context(args: argparse.Namespace) -> ssl.SSLContext | bool:
    if not args.url.startswith("https:"):
        return False
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=args.ca)
    ctx.check_hostname = not args.no_check_hostname
    if args.cert:
        ctx.load_cert_chain(args.cert, args.key)
    return ctx


def reload_cert(ctx: ssl.SSLContext | bool, args: argparse.Namespace) -> None:
    """--reload-cert: new TLS connections present the certificate the files
    hold now (a rotated SVID). The pair is read once and tried on a scratch
    context first, so one caught mid-replacement (new certificate, old key)
    leaves the last whole pair in place."""
    if not isinstance(ctx, ssl.SSLContext) or not args.cert:
        return
    with open(args.cert, "rb") as f:
        cert = f.read()
    with open(args.key, "rb") as f:
        key = f.read()
    with tempfile.NamedTemporaryFile(suffix=".pem") as both:
        both.write(key + b"\n" + cert)
        both.flush()
        try:
            ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_cert_chain(both.name)
        except ssl.SSLError:
            return
        ctx.load_cert_chain(both.name)


class HttpRecorder:
    """httpx response hook: (method, status, content-type) of each response, the last status and Mcp-Session-Id."""

    def __init__(self) -> None:
        self.last_status: int | None = None
        self.session_id: str | None = None
        self.requests: list[list[Any]] = []

    async def on_response(self, response: httpx2.Response) -> None:
        self.last_status = response.status_code
        self.requests.append([response.request.method, response.status_code, response.headers.get("content-type")])
        sid = response.headers.get("mcp-session-id")
        if sid:
            self.session_id = sid


def make_http_client(args: argparse.Namespace, verify: ssl.SSLContext | bool, rec: HttpRecorder) -> httpx2.AsyncClient:
    headers = {}
    for h in args.header:
        k, _, v = h.partition(":")
        headers[k.strip()] = v.strip()
    # max_keepalive_connections=0: each connection is closed after its response.
    limits = {"limits": httpx2.Limits(max_keepalive_connections=0)} if args.no_keepalive else {}
    return httpx2.AsyncClient(
        verify=verify,
        **limits,
        headers=headers or None,
        timeout=httpx2.Timeout(args.timeout, read=args.timeout),
        event_hooks={"response": [rec.on_response]},
    )


def make_client(args: argparse.Namespace, http: httpx2.AsyncClient) -> Client:
    transport = streamable_http_client(args.url, http_client=http, terminate_on_close=not args.no_terminate)
    # cache=None: every call goes to the wire (the tests count requests).
    return Client(
        transport,
        mode=args.mode,
        cache=None,
        read_timeout_seconds=args.timeout,
        list_roots_callback=on_list_roots,
        elicitation_callback=on_elicitation,
    )


# Server-to-client requests: record that the agent saw them (a gateway that
# denies one must keep it from ever arriving here), then answer.
async def on_list_roots(context: Any) -> types.ListRootsResult:
    emit({"server_request": "roots/list"})
    return types.ListRootsResult(roots=[types.Root(uri="file:///workspace", name="workspace")])


async def on_elicitation(context: Any, params: Any) -> types.ElicitResult:
    emit({"server_request": "elicitation/create"})
    return types.ElicitResult(action="accept", content={"ok": True})


def error_dict(exc: BaseException, rec: HttpRecorder | None) -> dict[str, Any]:
    if isinstance(exc, MCPError):
        err: dict[str, Any] = {"code": exc.code, "message": exc.message, "data": exc.data}
    else:
        # Unwrap exception groups from anyio task groups to the first real cause.
        while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
            exc = exc.exceptions[0]
            if isinstance(exc, MCPError):
                return error_dict(exc, rec)
        text = f"{type(exc).__name__}: {exc}"
        cause, seen = exc.__cause__ or exc.__context__, 0
        while cause is not None and seen < 4:
            text += f" <- {type(cause).__name__}: {cause}"
            cause, seen = cause.__cause__ or cause.__context__, seen + 1
        err = {"code": None, "message": text, "data": None}
    if rec is not None and rec.last_status is not None:
        err["http_status"] = rec.last_status
    return err


async def run_call(client: Client, spec: str, rec: HttpRecorder) -> dict[str, Any]:
    """One call, reported with how long it took to be answered (`seconds`)."""
    started = time.monotonic()
    out = await _run_call(client, spec, rec)
    out["seconds"] = round(time.monotonic() - started, 3)
    return out


async def _run_call(client: Client, spec: str, rec: HttpRecorder) -> dict[str, Any]:
    try:
        name, arguments = parse_call(spec)
        if name == "list":
            result = await client.list_tools()
        elif name == "read":
            result = await client.read_resource(spec.partition(":")[2])
        elif name == "prompts":
            result = await client.list_prompts()
        elif name == "resources":
            result = await client.list_resources()
        elif name == "prompt":
            assert arguments is not None
            result = await client.get_prompt(arguments["name"], arguments["arguments"])
        else:
            result = await client.call_tool(name, arguments)
        return {"call": spec, "ok": True, "result": result.model_dump(mode="json", by_alias=True, exclude_none=True)}
    except Exception as exc:  # noqa: BLE001 - every failure is reported, not raised
        return {"call": spec, "ok": False, "error": error_dict(exc, rec)}


async def negotiated(client: Client, rec: HttpRecorder) -> dict[str, Any]:
    info = client.server_info
    return {
        "negotiated": {
            "protocol_version": client.protocol_version,
            "server_info": info.model_dump(mode="json", by_alias=True, exclude_none=True) if info else None,
            "session_id": rec.session_id,
            "sdk": "python-mcp",
        }
    }


async def run_once(args: argparse.Namespace, calls: list[str]) -> int:
    verify = build_ssl_context(args)
    rec = HttpRecorder()
    async with make_http_client(args, verify, rec) as http:
        try:
            client = make_client(args, http)
            await client.__aenter__()
        except BaseException as exc:  # noqa: BLE001
            if isinstance(exc, (KeyboardInterrupt, SystemExit)):
                raise
            emit({"connect": False, "error": error_dict(exc, rec)})
            return 2
        try:
            emit(await negotiated(client, rec))
            for spec in calls:
                emit(await run_call(client, spec, rec))
        finally:
            try:
                await client.__aexit__(None, None, None)
            except Exception:  # noqa: BLE001 - a failed DELETE must not hide the results
                pass
    emit({"http_methods": rec.requests})
    return 0


async def run_loop(args: argparse.Namespace, calls: list[str]) -> int:
    verify = build_ssl_context(args)
    ok = failed = 0
    errors: list[dict[str, Any]] = []
    session_ids: list[str] = []
    first_error_at = last_error_at = None
    i = 0
    start = time.monotonic()
    shared: tuple[httpx2.AsyncClient, Client, HttpRecorder] | None = None

    async def fresh() -> tuple[httpx2.AsyncClient, Client, HttpRecorder]:
        rec = HttpRecorder()
        http = make_http_client(args, verify, rec)
        await http.__aenter__()
        client = make_client(args, http)
        try:
            await client.__aenter__()
        except BaseException:
            await http.__aexit__(None, None, None)
            raise
        return http, client, rec

    async def close(pair: tuple[httpx2.AsyncClient, Client, HttpRecorder]) -> None:
        http, client, _ = pair
        try:
            await client.__aexit__(None, None, None)
        except Exception:  # noqa: BLE001
            pass
        await http.__aexit__(None, None, None)

    try:
        while True:
            if args.loop and i >= args.loop:
                break
            if args.repeat_until and os.path.exists(args.repeat_until):
                break
            i += 1
            if args.reload_cert:
                reload_cert(verify, args)
            line: dict[str, Any] = {"iteration": i, "t": round(time.monotonic() - start, 3)}
            rec: HttpRecorder | None = None
            try:
                if args.loop_same_client:
                    if shared is None:
                        shared = await fresh()
                    pair = shared
                else:
                    pair = await fresh()
                rec = pair[2]
                try:
                    numbered = [spec.replace("{i}", str(i)) if args.number_calls else spec for spec in calls]
                    results = [await run_call(pair[1], spec, rec) for spec in numbered]
                finally:
                    if not args.loop_same_client:
                        await close(pair)
                if rec.session_id and (not session_ids or session_ids[-1] != rec.session_id):
                    session_ids.append(rec.session_id)
                bad = [r for r in results if not r["ok"]]
                line["ok"] = not bad
                if bad:
                    line["error"] = bad[0]["error"]
            except Exception as exc:  # noqa: BLE001 - connect failure counts as a failed iteration
                line["ok"] = False
                line["error"] = error_dict(exc, rec)
                if args.loop_same_client and shared is not None:
                    await close(shared)
                    shared = None
            if line["ok"]:
                ok += 1
            else:
                failed += 1
                last_error_at = i
                first_error_at = first_error_at or i
                if len(errors) < 10:
                    errors.append(line["error"])
            if not args.quiet_iterations:
                emit(line)
            await asyncio.sleep(args.interval_ms / 1000.0)
    finally:
        if shared is not None:
            await close(shared)
    emit(
        {
            "loop": {
                "iterations": i,
                "ok": ok,
                "failed": failed,
                "first_failed_iteration": first_error_at,
                "last_failed_iteration": last_error_at,
                "errors": errors,
                "session_ids": session_ids,
                "seconds": round(time.monotonic() - start, 3),
            }
        }
    )
    return 0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--url", required=True, help="e.g. https://localhost:8443/mcp")
    p.add_argument("--cert", help="client certificate chain (PEM)")
    p.add_argument("--key", help="client private key (PEM)")
    p.add_argument("--ca", help="CA bundle (PEM) to verify the server certificate")
    p.add_argument(
        "--no-check-hostname",
        action="store_true",
        help="verify the server chain but not its DNS name (e.g. an X509-SVID without DNS SANs)",
    )
    p.add_argument(
        "--mode",
        default="auto",
        help="SDK connect mode: auto (discover, fall back to initialize), legacy (initialize), or 2026-07-28",
    )
    p.add_argument("--header", action="append", default=[], help="extra HTTP header 'Name: value' (repeatable)")
    p.add_argument("--timeout", type=float, default=30.0, help="seconds")
    p.add_argument("--no-terminate", action="store_true", help="do not DELETE the session on exit (2025 era)")
    p.add_argument("--loop", type=int, default=0, help="rotation mode: run the calls N times (0: until --repeat-until)")
    p.add_argument("--repeat-until", help="rotation mode: stop once this file exists")
    p.add_argument("--interval-ms", type=int, default=200)
    p.add_argument("--loop-same-client", action="store_true", help="rotation mode: keep one client/connection")
    p.add_argument("--quiet-iterations", action="store_true", help="rotation mode: print only the summary")
    p.add_argument(
        "--reload-cert",
        action="store_true",
        help="rotation mode: re-read --cert/--key before each iteration; new connections present them",
    )
    p.add_argument("--no-keepalive", action="store_true", help="a new connection for every HTTP request")
    p.add_argument("--number-calls", action="store_true", help="rotation mode: `{i}` in a call becomes the iteration number")
    p.add_argument("calls", nargs="*", help="'list', 'read:URI', 'prompts', 'resources', 'prompt:name:{json args}' or 'tool:{json args}'")
    args = p.parse_args(argv)
    if bool(args.cert) != bool(args.key):
        p.error("--cert and --key go together")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.loop or args.repeat_until:
        calls = args.calls or ['echo:{"text":"ping"}']
        return asyncio.run(run_loop(args, calls))
    return asyncio.run(run_once(args, args.calls))


if __name__ == "__main__":
    sys.exit(main())

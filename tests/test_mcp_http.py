"""`python -m pyapptron mcp --http PORT`: MCP's Streamable HTTP transport.

The first tests need no browser: the transport's own promises (the key, the Host and
Origin checks, sessions, which stream a message goes on, the stateless 2026-07-28 form)
are checked against a hand-made page on the bridge's WebSocket. The browser tests serve a
real VM and hold it to software nobody here wrote: the official conformance suite, the
MCP Inspector's CLI and Gemini CLI (tests/mcp_clients.py), over HTTP and over stdio.
"""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import sys
import time

import aiohttp
import pytest
from mcp_clients import CONFORMANCE, GEMINI, INSPECTOR, REPO, McpHttpServer, gemini_home, node
from test_mcp_bridge import FakePage, _ws_and_token
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

INIT = {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "test", "version": "1"}}
ACCEPT = {"Accept": "application/json, text/event-stream"}


def rpc(request_id, method, params=None) -> dict:
    message = {"jsonrpc": "2.0", "method": method, "params": params or {}}
    if request_id is not None:
        message["id"] = request_id
    return message


async def sse_messages(response: aiohttp.ClientResponse):
    """The JSON-RPC messages of an SSE body, as they come."""
    async for line in response.content:
        if line.startswith(b"data: "):
            yield json.loads(line[6:])


@pytest.fixture
def pageless():
    """A server with no page yet (the URL a page would open is printed); one per test, as a
    page that connects is brought every earlier session's handshake."""
    server = McpHttpServer("--connect-timeout", "60")
    server.page = _ws_and_token(server.page_url())
    yield server
    server.close()


def test_every_request_needs_the_key_a_local_host_and_a_local_origin(pageless):
    async def probe():
        async with aiohttp.ClientSession() as http:
            body = rpc(1, "initialize", INIT)
            async with http.post(pageless.url, json=body, headers=ACCEPT) as r:
                assert r.status == 401 and "Bearer" in r.headers["WWW-Authenticate"]
                assert "Authorization: Bearer KEY" in (await r.json())["error"]["message"]
            async with http.post(pageless.url + "?key=wrong", json=body, headers=ACCEPT) as r:
                assert r.status == 401
            async with http.post(pageless.url, json=body,
                                 headers={**ACCEPT, "Authorization": "Bearer wrong"}) as r:
                assert r.status == 401
            async with http.post(pageless.url_with_key, json=body,
                                 headers={**ACCEPT, "Origin": "http://evil.example"}) as r:
                assert r.status == 403 and "--http-allow-origin" in (await r.json())["error"]["message"]
            async with http.post(pageless.url_with_key, json=body,
                                 headers={**ACCEPT, "Host": "evil.example:80"}) as r:
                assert r.status == 403  # DNS rebinding: a name that resolved to the loopback
            # The key as a header or in the query; answered at once, before any page is there.
            for url, headers in ((pageless.url, {"Authorization": f"Bearer {pageless.key}"}),
                                 (pageless.url_with_key, {"Origin": pageless.base})):
                started = time.monotonic()
                async with http.post(url, json=body, headers={**ACCEPT, **headers}) as r:
                    assert r.status == 200, await r.text()
                    assert time.monotonic() - started < 1
                    assert r.headers["Mcp-Session-Id"]
                    result = (await r.json())["result"]
                    assert result["protocolVersion"] == "2025-11-25" and "logging" in result["capabilities"]

    asyncio.run(probe())


def test_sessions_are_kept_as_the_specification_says(pageless):
    async def probe():
        async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {pageless.key}"}, timeout=aiohttp.ClientTimeout(total=20)) as http:
            url = pageless.url
            async with http.post(url, json=rpc(1, "tools/list"), headers=ACCEPT) as r:
                assert r.status == 400 and "Mcp-Session-Id" in (await r.json())["error"]["message"]
            async with http.post(url, json=rpc(1, "tools/list"), headers={**ACCEPT, "Mcp-Session-Id": "nope"}) as r:
                assert r.status == 404
            async with http.post(url, json=rpc(1, "initialize", INIT), headers=ACCEPT) as r:
                session = {"Mcp-Session-Id": r.headers["Mcp-Session-Id"], "MCP-Protocol-Version": "2025-11-25"}
            async with http.post(url, json=rpc(None, "notifications/initialized"), headers={**ACCEPT, **session}) as r:
                assert r.status == 202
            async with http.post(url, json=rpc(2, "ping"), headers={**ACCEPT, **session}) as r:
                assert r.status == 200 and (await r.json())["result"] == {}
            async with http.post(url, data="{", headers={**ACCEPT, **session, "Content-Type": "application/json"}) as r:
                assert r.status == 400 and (await r.json())["error"]["code"] == -32700
            async with http.post(url, json=[rpc(3, "ping")], headers={**ACCEPT, **session}) as r:
                assert r.status == 400 and "batches" in (await r.json())["error"]["message"]
            async with http.post(url, data=json.dumps(rpc(3, "ping")), headers={**ACCEPT, **session}) as r:
                assert r.status == 415  # not sent as application/json
            async with http.post(url, json=rpc(3, "ping"), headers={**session, "Accept": "text/html"}) as r:
                assert r.status == 406
            async with http.post(url, json=rpc(3, "ping"), headers={**ACCEPT, **session,
                                                                    "MCP-Protocol-Version": "1999-01-01"}) as r:
                assert r.status == 400 and "1999-01-01" in (await r.json())["error"]["message"]
            async with http.get(url, headers={**session, "Accept": "application/json"}) as r:
                assert r.status == 406
            async with http.delete(url, headers=session) as r:
                assert r.status == 200
            async with http.post(url, json=rpc(4, "ping"), headers={**ACCEPT, **session}) as r:
                assert r.status == 404  # the session ended: the client starts a new one
            async with http.delete(url, headers=session) as r:
                assert r.status == 404
            async with http.put(url, json={}, headers=session) as r:
                assert r.status == 405

    asyncio.run(probe())


def test_each_session_is_its_own_connection_and_each_message_takes_its_own_stream(pageless):
    """Two sessions reach the page on two channels; an answer goes to the POST that asked,
    progress to that POST's SSE stream, a log message to the session's GET stream; a
    stateless (2026-07-28) request gets a channel of its own, closed when it is answered
    or when the client hangs up (which cancels it)."""

    async def probe():
        async with FakePage(*pageless.page) as page, \
                aiohttp.ClientSession(headers={"Authorization": f"Bearer {pageless.key}"}, timeout=aiohttp.ClientTimeout(total=20)) as http:
            url = pageless.url
            sessions, channels = [], set()
            for _ in range(2):  # with a page there, the page's connection answers the handshake
                call = asyncio.ensure_future(http.post(url, json=rpc(1, "initialize", INIT), headers=ACCEPT))
                handshake = await page.recv()
                assert handshake["method"] == "initialize"
                channels.add(page.channel_of[json.dumps(1)])
                await page.answer(handshake, {"protocolVersion": "2025-11-25", "serverInfo": {"name": "page"}})
                response = await call
                assert (await response.json())["result"]["serverInfo"] == {"name": "page"}
                sessions.append({"Mcp-Session-Id": response.headers["Mcp-Session-Id"]})
            assert len(channels) == 2
            first, second = sessions

            get_stream = await http.get(url, headers={**first, "Accept": "text/event-stream"})
            assert get_stream.status == 200
            call = asyncio.ensure_future(http.post(url, headers={**ACCEPT, **first}, json=rpc(
                7, "tools/call", {"name": "exec", "arguments": {"command": "sleep 1"}, "_meta": {"progressToken": "p"}})))
            request = await page.recv()
            channel = page.channel_of[json.dumps(7)]
            progress = {"jsonrpc": "2.0", "method": "notifications/progress", "params": {"progressToken": "p", "progress": 1}}
            log = {"jsonrpc": "2.0", "method": "notifications/message",
                   "params": {"level": "info", "logger": "console", "data": "hello"}}
            await page.ws.send(f"{channel}\n{json.dumps(progress)}")
            await page.ws.send(f"{channel}\n{json.dumps(log)}")
            await page.answer(request, {"content": [], "isError": False})
            response = await call
            assert response.headers["Content-Type"].startswith("text/event-stream")
            assert [m async for m in sse_messages(response)] == [
                progress, {"jsonrpc": "2.0", "id": 7, "result": {"content": [], "isError": False}}]
            assert await anext(sse_messages(get_stream)) == log
            get_stream.close()

            # The other session's request comes on its own channel, its answer only to its POST.
            call = asyncio.ensure_future(http.post(url, json=rpc(7, "tools/list"), headers={**ACCEPT, **second}))
            request = await page.recv()
            assert page.channel_of[json.dumps(7)] in channels - {channel}
            await page.answer(request, {"tools": []})
            response = await call
            assert await response.json() == {"jsonrpc": "2.0", "id": 7, "result": {"tools": []}}

            # 2026-07-28: no session; a channel per request, closed once it is answered.
            modern = {**ACCEPT, "MCP-Protocol-Version": "2026-07-28", "Mcp-Method": "tools/list"}
            meta = {"_meta": {"io.modelcontextprotocol/protocolVersion": "2026-07-28"}}
            call = asyncio.ensure_future(http.post(url, json=rpc(1, "tools/list", meta), headers=modern))
            request = await page.recv()
            stateless = page.channel_of[json.dumps(1)]
            await page.answer(request, {"tools": [], "resultType": "complete"})
            assert (await (await call).json())["result"]["tools"] == []
            assert await asyncio.wait_for(page.ws.recv(), 10) == f"{stateless}\n"  # closed
            assert stateless not in channels
            async with http.post(url, json=rpc(1, "tools/call", meta), headers=modern) as r:
                assert r.status == 400 and (await r.json())["error"]["code"] == -32020  # Mcp-Method disagrees
            # Hanging up on a stateless call cancels it: the page's connection for it closes.
            call = asyncio.ensure_future(http.post(url, json=rpc(2, "tools/call", meta),
                                                   headers={**modern, "Mcp-Method": "tools/call"}))
            await page.recv()
            hung_up = page.channel_of[json.dumps(2)]
            (await call).close()  # a call streams: its headers came; the client drops the stream
            assert await asyncio.wait_for(page.ws.recv(), 10) == f"{hung_up}\n"

    asyncio.run(probe())


def test_a_bad_id_a_cancelled_call_and_a_streamed_handshake_leave_no_client_waiting(pageless):
    """What the review found hanging: a request id that cannot be answered, a request the
    client cancels (no answer comes), a handshake asked for as a stream."""

    async def probe():
        async with FakePage(*pageless.page) as page, \
                aiohttp.ClientSession(headers={"Authorization": f"Bearer {pageless.key}"},
                                      timeout=aiohttp.ClientTimeout(total=20)) as http:
            url = pageless.url
            for bad in (1.5, True, {"a": 1}, None):
                async with http.post(url, json={"jsonrpc": "2.0", "id": bad, "method": "ping"}, headers=ACCEPT) as r:
                    assert r.status == 400 and "string or an integer" in (await r.json())["error"]["message"]
            # A handshake with a progress token, from a client that takes only SSE: still JSON + session id.
            call = asyncio.ensure_future(http.post(url, json=rpc(1, "initialize", {**INIT, "_meta": {"progressToken": 1}}),
                                                   headers={"Accept": "text/event-stream"}))
            handshake = await page.recv()
            await page.answer(handshake, {"protocolVersion": "2025-11-25"})
            response = await call
            assert response.headers["Content-Type"].startswith("application/json") and response.headers["Mcp-Session-Id"]
            session = {**ACCEPT, "Mcp-Session-Id": response.headers["Mcp-Session-Id"]}
            for accept in ("application/json", "application/json, text/event-stream"):
                call = asyncio.ensure_future(http.post(url, json=rpc(5, "tools/list"), headers={**session, "Accept": accept}))
                await page.recv()
                async with http.post(url, json=rpc(None, "notifications/cancelled", {"requestId": 5}), headers=session) as r:
                    assert r.status == 202
                assert (await page.recv())["method"] == "notifications/cancelled"
                response = await call
                assert response.status in (200, 204)  # ended: a stream with no message, or no content
                assert [m async for m in sse_messages(response)] == []

    asyncio.run(probe())


def test_a_second_page_cannot_take_the_clients_from_the_first():
    server = McpHttpServer("--connect-timeout", "60")
    try:
        page_args = _ws_and_token(server.page_url())

        async def probe():
            ws_url, token, origin = page_args
            async with connect(ws_url, origin=origin) as second, FakePage(*page_args) as first:
                await second.send(json.dumps({"pyapptron": "hello", "token": token}))
                await second.send(json.dumps({"pyapptron": "ready"}))  # ready after the first: refused
                with pytest.raises(ConnectionClosed) as closed:
                    await asyncio.wait_for(second.recv(), 10)
                assert closed.value.rcvd.code == 4009
                async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {server.key}"}) as http:
                    call = asyncio.ensure_future(http.post(server.url, json=rpc(1, "initialize", INIT), headers=ACCEPT))
                    handshake = await first.recv()  # the first page still serves
                    await first.answer(handshake, {"protocolVersion": "2025-11-25"})
                    assert (await call).status == 200

        asyncio.run(probe())
    finally:
        server.close()


def test_each_request_waits_for_a_page_its_own_connect_timeout():
    server = McpHttpServer("--connect-timeout", "2")
    try:
        async def probe():
            async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {server.key}"}) as http:
                async with http.post(server.url, json=rpc(1, "initialize", INIT), headers=ACCEPT) as r:
                    session = {**ACCEPT, "Mcp-Session-Id": r.headers["Mcp-Session-Id"], "MCP-Protocol-Version": "2025-11-25"}

                async def timed(request_id, delay):
                    await asyncio.sleep(delay)
                    started = time.monotonic()
                    async with http.post(server.url, json=rpc(request_id, "tools/list"), headers=session) as r:
                        answer = await r.json()
                    return time.monotonic() - started, answer

                (early, first), (late, second) = await asyncio.gather(timed(2, 0), timed(3, 1.5))
                for answer in (first, second):
                    assert answer["error"]["code"] == -32000 and "waited 2 s" in answer["error"]["message"]
                assert early >= 1.9 and late >= 1.9  # the later one got its whole wait, not the rest of the first's

        asyncio.run(probe())
    finally:
        server.close()


# -- a real VM, and clients nobody here wrote ---------------------------------------------

#: Every server scenario of @modelcontextprotocol/conformance 0.1.16 (the README's table):
#: None = must pass; otherwise why it does not apply to a VM sandbox, and what its failure says.
SCENARIOS = {
    "server-initialize": None,
    "ping": None,
    "tools-list": None,
    "resources-list": None,
    "logging-set-level": None,
    "dns-rebinding-protection": None,
    "server-sse-multiple-streams": None,
    "completion-complete": ("no argument completion: no prompts or resource templates take completable arguments",
                            "method 'completion/complete' not found"),
    "tools-call-simple-text": ("calls the suite's test tool `test_simple_text`", "unknown tool 'test_simple_text'"),
    "tools-call-image": ("calls the suite's test tool `test_image_content`", "unknown tool 'test_image_content'"),
    "tools-call-audio": ("calls the suite's test tool `test_audio_content`", "unknown tool 'test_audio_content'"),
    "tools-call-embedded-resource": ("calls the suite's test tool `test_embedded_resource`",
                                     "unknown tool 'test_embedded_resource'"),
    "tools-call-mixed-content": ("calls the suite's test tool `test_multiple_content_types`",
                                 "unknown tool 'test_multiple_content_types'"),
    "tools-call-with-logging": ("calls the suite's test tool `test_tool_with_logging`",
                                "unknown tool 'test_tool_with_logging'"),
    "tools-call-error": ("calls the suite's test tool `test_error_handling`", "unknown tool 'test_error_handling'"),
    "tools-call-with-progress": ("calls the suite's test tool `test_tool_with_progress`",
                                 "unknown tool 'test_tool_with_progress'"),
    "tools-call-sampling": ("calls the suite's test tool `test_sampling` (the server asking the client's model)",
                            "unknown tool 'test_sampling'"),
    "tools-call-elicitation": ("calls the suite's test tool `test_elicitation`", "unknown tool 'test_elicitation'"),
    "json-schema-2020-12": ("looks for the suite's test tool `json_schema_2020_12_tool`",
                            "Tool 'json_schema_2020_12_tool' not found"),
    "elicitation-sep1034-defaults": ("calls the suite's test tool `test_elicitation_sep1034_defaults`",
                                     "unknown tool 'test_elicitation_sep1034_defaults'"),
    "elicitation-sep1330-enums": ("calls the suite's test tool `test_elicitation_sep1330_enums`",
                                  "unknown tool 'test_elicitation_sep1330_enums'"),
    "server-sse-polling": ("calls the suite's test tool `test_reconnection`; stream resumption "
                           "(Last-Event-ID) is not offered", None),
    "resources-read-text": ("reads the suite's resource test://static-text", "unknown resource URI 'test://static-text'"),
    "resources-read-binary": ("reads the suite's resource test://static-binary",
                              "unknown resource URI 'test://static-binary'"),
    "resources-templates-read": ("reads the suite's template test://template/{id}/data",
                                 "unknown resource URI 'test://template/123/data'"),
    "resources-subscribe": ("no resource subscriptions (capability `resources.subscribe` is false)",
                            "method 'resources/subscribe' not found"),
    "resources-unsubscribe": ("no resource subscriptions (capability `resources.subscribe` is false)",
                              "method 'resources/subscribe' not found"),
    "prompts-list": ("no prompts (no `prompts` capability)", "method 'prompts/list' not found"),
    "prompts-get-simple": ("no prompts (no `prompts` capability)", "method 'prompts/get' not found"),
    "prompts-get-with-args": ("no prompts (no `prompts` capability)", "method 'prompts/get' not found"),
    "prompts-get-embedded-resource": ("no prompts (no `prompts` capability)", "method 'prompts/get' not found"),
    "prompts-get-with-image": ("no prompts (no `prompts` capability)", "method 'prompts/get' not found"),
}


@pytest.fixture(scope="module")
def served():
    """`pyapptron mcp --headless --http 0 --key K` with a booted VM (the default image)."""
    server = McpHttpServer("--headless")
    server.wait_for_vm()
    yield server
    server.close()


def conformance(server: McpHttpServer, scenario: str, tmp_path) -> list[dict]:
    tmp_path.mkdir(parents=True, exist_ok=True)
    r = node(CONFORMANCE, "server", "--url", server.url_with_key, "--scenario", scenario,
             "--output-dir", str(tmp_path), timeout=180, cwd=tmp_path)
    found = list(tmp_path.glob(f"server-{scenario}-*/checks.json"))
    assert found, f"the suite wrote no checks for {scenario}:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    return json.loads(found[0].read_text())


def test_the_conformance_suite_lists_exactly_the_scenarios_the_readme_accounts_for():
    listed = node(CONFORMANCE, "list", "--server").stdout
    assert set(SCENARIOS) == set(re.findall(r"^\s+- (\S+)", listed, re.M))


@pytest.mark.browser
@pytest.mark.parametrize("scenario", [name for name, why in SCENARIOS.items() if why is None])
def test_the_official_conformance_suite_passes(served, scenario, tmp_path):
    checks = conformance(served, scenario, tmp_path)
    bad = [c for c in checks if c["status"] in ("FAILURE", "WARNING")]
    assert checks and not bad, json.dumps(bad, indent=1)


@pytest.mark.browser
def test_the_conformance_scenarios_that_do_not_apply_fail_only_for_the_reason_the_readme_gives(served, tmp_path):
    for scenario, (why, says) in ((n, w) for n, w in SCENARIOS.items() if w is not None):
        checks = conformance(served, scenario, tmp_path / scenario)
        failures = [c for c in checks if c["status"] == "FAILURE"]
        if says is None:  # nothing the suite can check without its tool: no failure either
            assert not failures, (scenario, failures)
            continue
        assert failures and all(says in (c.get("errorMessage") or "") for c in failures), (scenario, why, failures)


def inspector(*args: str, cwd=None) -> dict:
    r = node(INSPECTOR, "--cli", *args, timeout=300, cwd=cwd)
    assert r.returncode == 0, f"the Inspector failed:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    return json.loads(r.stdout)


@pytest.mark.browser
@pytest.mark.parametrize("transport", ["http", "stdio"])
def test_the_mcp_inspector_cli_runs_exec_and_reads_a_file(served, transport, tmp_path):
    if transport == "http":
        target = [served.url, "--header", f"Authorization: Bearer {served.key}"]
    else:  # the Inspector starts the server itself, as a desktop client does
        target = ["--cwd", str(REPO), "python3", "-m", "pyapptron", "mcp", "--headless"]
    result = inspector(*target, "--method", "tools/call", "--tool-name", "exec",
                       "--tool-arg", "command=echo out; echo err >&2; exit 3")
    assert result["structuredContent"] | {"seconds": 0} == {
        "stdout": "out\n", "stderr": "err\n", "exit_code": 3, "timed_out": False, "truncated": False, "seconds": 0}
    result = inspector(*target, "--method", "tools/call", "--tool-name", "read_file", "--tool-arg", "path=/etc/hostname")
    assert result["structuredContent"]["content"] == "pyapptron\n"


@pytest.mark.browser
def test_gemini_cli_configured_from_the_example_reports_the_server_connected_over_http_and_stdio(served, tmp_path):
    """examples/gemini_settings.json, as the README gives it: only the port differs."""
    servers = json.loads((REPO / "examples" / "gemini_settings.json").read_text())["mcpServers"]
    servers["pyapptron-http"]["httpUrl"] = served.url
    env, work = gemini_home(tmp_path, servers)
    env["PYAPPTRON_MCP_KEY"] = served.key  # the settings name the key as $PYAPPTRON_MCP_KEY
    r = node(GEMINI, "mcp", "list", env=env, cwd=work, timeout=300)
    listing = r.stdout + r.stderr
    states = dict(re.findall(r"^\S+ (pyapptron\S*): .* - (\w+)\s*$", listing, re.M))
    assert states == {"pyapptron": "Connected", "pyapptron-http": "Connected"}, listing


@pytest.mark.browser
def test_the_remote_agent_example_runs_against_the_server(served):
    r = subprocess.run([sys.executable, str(REPO / "examples" / "mcp_http_agent.py"), served.url, served.key],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.startswith("Linux ") and r.stdout.endswith("built\nfrom a remote agent\n"), r.stdout
    assert "... running for" in r.stderr  # progress came while the command ran


async def _session(http: aiohttp.ClientSession, server: McpHttpServer) -> dict:
    async with http.post(server.url, json=rpc(0, "initialize", INIT), headers=ACCEPT) as r:
        headers = {**ACCEPT, "Mcp-Session-Id": r.headers["Mcp-Session-Id"], "MCP-Protocol-Version": "2025-11-25"}
    async with http.post(server.url, json=rpc(None, "notifications/initialized"), headers=headers):
        pass
    return headers


async def _exec(http, server, headers, command: str, request_id=1, **meta) -> list[dict]:
    """An exec call: every message its POST brought (a call streams), its answer last."""
    params = {"name": "exec", "arguments": {"command": command}}
    if meta:
        params["_meta"] = meta
    async with http.post(server.url, json=rpc(request_id, "tools/call", params), headers=headers) as r:
        assert r.headers["Content-Type"].startswith("text/event-stream")
        return [m async for m in sse_messages(r)]


@pytest.mark.browser
def test_several_clients_share_one_vm_and_their_calls_run_side_by_side(served):
    async def probe():
        async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {served.key}"}) as http:
            sessions = [await _session(http, served) for _ in range(4)]
            done = []

            # Client 0 waits for a file that client 3 writes: only calls running at once can finish.
            commands = ["while [ ! -e /tmp/side-by-side ]; do sleep 0.1; done; rm /tmp/side-by-side; echo 0",
                        "echo 1", "echo 2", "touch /tmp/side-by-side; echo 3"]

            async def client(headers, command):
                answer = (await _exec(http, served, headers, command))[-1]
                done.append(answer["result"]["structuredContent"]["stdout"].strip())

            await asyncio.wait_for(asyncio.gather(*map(client, sessions, commands)), 120)
            assert sorted(done) == ["0", "1", "2", "3"] and done[-1] == "0"

    asyncio.run(probe())


@pytest.mark.browser
def test_a_long_exec_reports_progress_on_its_stream_and_console_output_reaches_the_log(served):
    async def probe():
        async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {served.key}"}) as http:
            headers = await _session(http, served)
            messages = await _exec(http, served, headers, "sleep 2.5; echo done", progressToken="long")
            assert messages[-1]["result"]["structuredContent"]["stdout"] == "done\n"
            progress = [m for m in messages[:-1] if m["method"] == "notifications/progress"]
            assert progress and all(m["params"]["progressToken"] == "long" for m in progress)

            async with http.post(served.url, json=rpc(2, "logging/setLevel", {"level": "info"}), headers=headers) as r:
                assert (await r.json())["result"] == {}
            stream = await http.get(served.url, headers={**headers, "Accept": "text/event-stream"})
            await _exec(http, served, headers, "echo console-line-$((6*7)) > /dev/ttyS0", request_id=3)
            async for message in sse_messages(stream):
                if message["method"] == "notifications/message" and "console-line-42" in message["params"]["data"]:
                    assert message["params"]["level"] == "info" and message["params"]["logger"] == "console"
                    break
            stream.close()

    asyncio.run(asyncio.wait_for(probe(), 120))

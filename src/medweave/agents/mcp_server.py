"""``medweave mcp``: the tools of ``medweave.agents.tools`` as a Model Context Protocol server (the
official ``mcp`` SDK's low-level server), over stdio or streamable HTTP on loopback.

Tools carry the JSON schemas of their pydantic argument models; a call that cannot be answered
returns ``isError: true`` with ``{"error": {"kind", "argument", "message"}}`` as structured content
(and as its text), so a client or a model reads which argument was wrong. Resources:
``medweave://model-card`` (what is loaded: store counts, the fusion model's modalities, heads,
cohort and metrics, the VQA model), ``medweave://cases/{case_id}`` (what ``show_case`` returns) and
``medweave://runs/{run_id}/metrics`` (a run of ``run_evaluation``).
"""

from __future__ import annotations

import json
import sys
from typing import Any

from .tools import RUNS_DIR, TOOLS, ToolError, Toolbox

INSTRUCTIONS = ("medweave: a local multimodal medical AI engine. Cases are de-identified pseudonyms: list them "
                "with find_cases, look inside with show_case, then predict, answer_question, similar_cases, "
                "draft_report, summarize_cohort or run_evaluation. Errors name the argument at fault.")
CARD_URI = "medweave://model-card"


def build_server(tb: Toolbox):
    """The low-level MCP server over a toolbox (SDK 2: handlers given to the constructor)."""
    import anyio
    import mcp_types as types
    from mcp.server.lowlevel import Server
    from mcp.shared.exceptions import MCPError

    async def list_tools(ctx, params) -> types.ListToolsResult:
        return types.ListToolsResult(tools=[types.Tool(name=t.name, description=t.description,
                                                       input_schema=t.input_schema()) for t in TOOLS.values()])

    async def call_tool(ctx, params: types.CallToolRequestParams) -> types.CallToolResult:
        res = await anyio.to_thread.run_sync(tb.call_safe, params.name, params.arguments, "mcp")
        body = res.get("result", res)
        structured = body if isinstance(body, dict) else {"result": body}
        return types.CallToolResult(content=[types.TextContent(type="text", text=json.dumps(body))],
                                    structured_content=structured, is_error="error" in res)

    async def list_resources(ctx, params) -> types.ListResourcesResult:
        out = [types.Resource(uri=CARD_URI, name="model-card", mime_type="application/json",
                              description="What this server holds: store counts, the fusion model (modalities, "
                              "heads, cohort, metrics) and the VQA model.")]
        runs = tb.store_dir / RUNS_DIR
        for d in sorted(runs.iterdir()) if runs.is_dir() else []:
            if (d / "metrics.json").is_file():
                out.append(types.Resource(uri=f"medweave://runs/{d.name}/metrics", name=f"run {d.name}",
                                          mime_type="application/json", description="Metrics of an evaluation run."))
        return types.ListResourcesResult(resources=out)

    async def list_templates(ctx, params) -> types.ListResourceTemplatesResult:
        return types.ListResourceTemplatesResult(resource_templates=[
            types.ResourceTemplate(uri_template="medweave://cases/{case_id}", name="case", mime_type="application/json",
                                   description="One case: presence by modality, de-identified reports, labs."),
            types.ResourceTemplate(uri_template="medweave://runs/{run_id}/metrics", name="run-metrics",
                                   mime_type="application/json", description="Metrics of an evaluation run.")])

    async def read_resource(ctx, params: types.ReadResourceRequestParams) -> types.ReadResourceResult:
        uri = str(params.uri)
        try:
            data = await anyio.to_thread.run_sync(read_uri, tb, uri)
        except ToolError as exc:
            raise MCPError(types.INVALID_PARAMS, exc.message, exc.to_dict()["error"]) from None
        return types.ReadResourceResult(contents=[types.TextResourceContents(uri=uri, mime_type="application/json",
                                                                              text=json.dumps(data))])

    return Server("medweave", version="0.1", instructions=INSTRUCTIONS, on_list_tools=list_tools,
                  on_call_tool=call_tool, on_list_resources=list_resources,
                  on_list_resource_templates=list_templates, on_read_resource=read_resource)


def read_uri(tb: Toolbox, uri: str) -> Any:
    """The JSON behind a ``medweave://`` resource URI; a ``ToolError`` for any other."""
    prefix = "medweave://"
    path = uri[len(prefix):] if uri.startswith(prefix) else None
    parts = path.strip("/").split("/") if path else []
    if parts == ["model-card"]:
        return tb.model_card()
    if len(parts) == 2 and parts[0] == "cases":
        return tb.case_resource(parts[1])
    if len(parts) == 3 and parts[0] == "runs" and parts[2] == "metrics":
        return tb.run_metrics(parts[1])
    raise ToolError(f"unknown resource {uri!r}; resources: {CARD_URI}, medweave://cases/{{case_id}}, "
                    "medweave://runs/{run_id}/metrics", "not_found", "uri")


def run_stdio(tb: Toolbox) -> None:
    """Serve on stdin/stdout until the client closes them."""
    import anyio
    from mcp.server.stdio import stdio_server

    server = build_server(tb)

    async def main() -> None:
        async with stdio_server() as (read, write):
            await server.run(read, write, server.create_initialization_options())

    anyio.run(main)


def http_app(tb: Toolbox, host: str = "127.0.0.1"):
    """A Starlette app serving the MCP streamable HTTP transport at ``/mcp`` (the SDK's, with its
    DNS-rebinding protection for loopback hosts)."""
    return build_server(tb).streamable_http_app(streamable_http_path="/mcp", host=host)


def run_http(tb: Toolbox, host: str, port: int) -> None:
    import uvicorn

    from ..settings import is_loopback

    if not is_loopback(host):  # the command checks first; this guards other callers
        raise ValueError(f"refusing to listen on {host}: loopback only")
    print(f"medweave MCP server on http://{host}:{port}/mcp", file=sys.stderr, flush=True)
    uvicorn.run(http_app(tb, host), host=host, port=port, log_level="warning")

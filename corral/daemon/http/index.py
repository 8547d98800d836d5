"""Where a newcomer lands: `/` goes to the dashboard, `/api/v1/` lists the API's resources
(JSON), `/api/v1/reference` shows them as a page. No token needed: it says what the API
is, never what the fleet holds."""

from __future__ import annotations

import html

import msgspec
from aiohttp import web

from ...methods import REGISTRY
from .resources import PREFIX, RESOURCES

DASHBOARD = "/ui/"


def listing() -> list[dict[str, str]]:
    return [{"method": r.verb, "path": PREFIX + r.path, "call": r.method,
             "scope": REGISTRY[r.method].scope, "summary": r.summary} for r in RESOURCES]


def page() -> str:
    rows = "\n".join(
        f"<tr><td>{html.escape(r['method'])}</td><td><code>{html.escape(r['path'])}"
        f"</code></td><td>{html.escape(r['scope'])}</td><td>{html.escape(r['summary'])}"
        f"</td></tr>" for r in listing())
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>corral API reference</title>
<style>body{{font:14px system-ui,sans-serif;margin:2em}}td{{padding:2px 10px;
vertical-align:top}}tr:nth-child(even){{background:#f4f4f4}}</style></head>
<body><h1>corral API <small>v1</small></h1>
<p>Every call takes a bearer token (<code>corral token create NAME --scope SCOPE</code>)
holding its scope. The machine-readable description is
<a href="{PREFIX}/openapi.json">{PREFIX}/openapi.json</a>; the dashboard is at
<a href="{DASHBOARD}">{DASHBOARD}</a>.</p>
<table><tr><th>method</th><th>path</th><th>scope</th><th>what</th></tr>
{rows}
</table></body></html>
"""


def routes() -> list[web.RouteDef]:
    index = msgspec.json.encode({"openapi": PREFIX + "/openapi.json",
                                 "reference": PREFIX + "/reference",
                                 "dashboard": DASHBOARD, "resources": listing()})
    reference = page()

    async def root(request: web.Request) -> web.Response:
        raise web.HTTPFound(DASHBOARD)

    async def api_index(request: web.Request) -> web.Response:
        return web.Response(body=index, content_type="application/json")

    async def api_reference(request: web.Request) -> web.Response:
        return web.Response(text=reference, content_type="text/html")

    return [web.get("/", root), web.get(PREFIX, api_index), web.get(PREFIX + "/", api_index),
            web.get(PREFIX + "/reference", api_reference)]

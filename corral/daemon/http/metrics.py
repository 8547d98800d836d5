"""(issue 21: being built)"""

from __future__ import annotations

from aiohttp import web

from .context import HttpContext


def setup(app: web.Application, ctx: HttpContext) -> None:
    pass

"""The REST API's resources: the routes each control method declares (corral.methods),
each a row saying which method an HTTP method and path call and where its params come
from. rest.py serves the rows, openapi.py describes them."""

from __future__ import annotations

from ...methods import REGISTRY, Resource

PREFIX = "/api/v1"

RESOURCES: list[Resource] = [r for spec in REGISTRY.values() for r in spec.routes]

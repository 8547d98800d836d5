"""The OpenAPI 3.1 document of the REST API, made from what serves it: the rows of
rest.RESOURCES and the methods' params and result Structs (corral.methods), through
msgspec's JSON Schema. Never written by hand, so it cannot drift from the API."""

from __future__ import annotations

import copy
import functools
import signal
from typing import Any

import msgspec
from aiohttp import web

from ... import __version__
from ... import methods as m
from ...methods import REGISTRY, SCOPES
from ...supervisor.config import AgentSpec, TenantSpec
from ...supervisor.names import NAME_RE
from ...supervisor.tasks import ids
from ...supervisor.tasks.admission import MAX_INPUT_BYTES
from ...supervisor.tasks.output import EVENT_ID
from ...supervisor.teams import TeamSpec
from ...supervisor.workflows import WorkflowSpec
from ...supervisor.workflows.plan import STEP_NAME
from ...supervisor.workflows.refs import NAME as REF_NAME
from ...supervisor.workflows.refs import PART as REF_PART
from ...taskoptions import MAX_TAG_LENGTH, MAX_TAGS, TAG_PATTERN
from ..tasks.front import STATUSES
from ..workflows.runstore import RUN_STATUSES
from . import route, sse
from .resources import PREFIX, RESOURCES

REF = "#/components/schemas/{name}"

PROBLEM_SCHEMA: dict[str, Any] = {
    "type": "object",
    "description": "RFC 9457 problem details; `code` is the JSON-RPC error code",
    "properties": {"type": {"type": "string"}, "title": {"type": "string"},
                   "status": {"type": "integer"}, "detail": {"type": "string"},
                   "code": {"type": "integer"}},
    "required": ["type", "title", "status", "detail"],
}
ERRORS = {
    "400": "Malformed JSON, params of the wrong shape, unknown fields, or a value a rule "
           "beyond the schema refuses (one of the host, such as an agent's command not "
           "found on it; `detail` names the rule)",
    "401": "No valid bearer token",
    "403": "The token lacks the scope the method needs (named), or its agent glob",
    "404": "No such agent, task, token, server or tool (a workflow or team naming an "
           "agent or workflow there is not too)",
    "409": "A conflict with the current state (an Idempotency-Key already sent with "
           "another request, or its first request still being answered; a scale past "
           "the agent's autoscale bounds)",
    "413": "The body is over the size limit",
    "415": "The body is not JSON",
    "429": "Over the token's rate, or refused for now (Retry-After)",
    "500": "The operation failed",
    "503": "Not available now (Retry-After)",
}


NAME = f"^{NAME_RE.pattern}$"
# an agent where the method takes targets: NAME or NAME#N (one replica)
TARGET = f"^{NAME_RE.pattern}(#[0-9]+)?$"
# a task's input, as the REST body and the control method take it (tasks/admission.py)
INPUT = f"any JSON, at most {MAX_INPUT_BYTES} bytes of it"
# a page's cursor: a task's or a run's id
BEFORE = {"anyOf": [{"type": "string", "pattern": f"^({ids.ANY.pattern})$"}, {"type": "null"}]}
# What the command layer checks with messages of its own, beyond the params' types: said
# in the document too (from the same constants), so a value it shows as valid is one the
# API accepts. Keyed by (method's params, param); merged into that param's schema.
RULES: dict[tuple[type[m.Params], str], dict[str, Any]] = {
    (m.LogsTail, "names"): {"items": {"type": "string", "pattern": TARGET}},
    (m.LogsFollow, "names"): {"items": {"type": "string", "pattern": TARGET}},
    (m.TasksList, "status"): {"anyOf": [{"enum": sorted(STATUSES)}, {"type": "null"}]},
    (m.TasksList, "before"): BEFORE,
    (m.RunsList, "status"): {"anyOf": [{"enum": sorted(RUN_STATUSES)}, {"type": "null"}]},
    (m.RunsList, "before"): BEFORE,
    (m.EventsPublish, "topic"): {"minLength": 1},
    (m.TokensCreate, "name"): {"pattern": NAME},
    (m.TokensCreate, "scopes"): {"minItems": 1, "items": {"enum": sorted(SCOPES)}},
    (m.TokensCreate, "expires_in"): {"anyOf": [{"type": "number", "exclusiveMinimum": 0},
                                                {"type": "null"}]},
    # a glob of no characters matches no agent: refused (tokens.py)
    (m.TokensCreate, "agents"): {"anyOf": [{"type": "string", "minLength": 1},
                                            {"type": "null"}]},
    # a task's own timeout is positive (supervisor/tasks/admission.py)
    (m.TasksSubmit, "timeout"): {"anyOf": [{"type": "number", "exclusiveMinimum": 0},
                                            {"type": "null"}]},
    # (taskoptions.TaskOptions.__post_init__)
    (m.TasksSubmit, "tags"): {"maxItems": MAX_TAGS, "items": {
        "type": "string", "maxLength": MAX_TAG_LENGTH, "pattern": TAG_PATTERN}},
    # a name (HUP, SIGUSR1; any case is taken) or a number
    (m.AgentsSignal, "signal"): {"pattern": "^([0-9]+|(SIG)?(" + "|".join(
        s.name[3:] for s in signal.Signals) + "))$"},
    # each table is an agent's config ([agents.NAME]), as the config's Structs say it
    (m.AgentsAdd, "agents"): {"minProperties": 1, "propertyNames": {"pattern": NAME},
                               "additionalProperties": {"$ref": REF.format(
                                   name="AgentTable")}},
    (m.AgentsUpdate, "set"): {"$ref": REF.format(name="AgentPatch")},
    (m.TenantsAdd, "tenants"): {"minProperties": 1, "propertyNames": {"pattern": NAME},
                                 "additionalProperties": {"$ref": REF.format(
                                     name="TenantTable")}},
    (m.TenantsSet, "set"): {"$ref": REF.format(name="TenantPatch")},
    # each table a workflow's ([workflows.NAME]: supervisor/workflows/definition.py)
    (m.WorkflowsAdd, "workflows"): {"minProperties": 1, "propertyNames": {"pattern": NAME},
                                     "additionalProperties": {"$ref": REF.format(
                                         name="WorkflowTable")}},
    (m.WorkflowsUpdate, "set"): {"$ref": REF.format(name="WorkflowPatch")},
    # each table a team's ([teams.NAME]: supervisor/teams/definition.py)
    # ("__" separates team and member in a leader's tool TEAM__MEMBER: teams/check.py)
    (m.TeamsAdd, "teams"): {"minProperties": 1, "propertyNames": {"pattern": NAME,
                                                                  "not": {"pattern": "__"}},
                             "additionalProperties": {"$ref": REF.format(name="TeamTable")}},
    (m.TeamsUpdate, "set"): {"$ref": REF.format(name="TeamPatch")},
}
# The event ids a stream resumes after, where it refuses others (Last-Event-ID and its
# query twin alike); any string for the other streams.
EVENT_IDS: dict[type[m.Params], dict[str, Any]] = {
    m.TasksStream: {"type": "string", "pattern": f"^{EVENT_ID.pattern}$"},
}
# Params of which a request gives one at most (a value, not null): said in the body's
# schema as `not` both.
ONE_OF_THESE = (("delay", "not_before"),)
IDEMPOTENCY_HEADER = {"name": "Idempotency-Key", "in": "header", "required": False,
                      "schema": {"type": "string", "minLength": 1, "maxLength": 255},
                      "description": "Repeat the request with the same key: the first "
                                     "answer is replayed, nothing is done twice"}


def _tables() -> dict[str, Any]:
    """The agent and tenant tables, closed, from the config's Structs, and a patch of
    each: any of its keys, null taking one away (a tenant's 0 too), at least one."""
    _, found = msgspec.json.schema_components(
        [AgentSpec, TenantSpec, WorkflowSpec, TeamSpec],
        ref_template=REF.format(name="Config{name}"))
    tables = {f"Config{k}": v for k, v in found.items()}
    agent, tenant, workflow, team = (tables.pop(f"Config{kind}Spec")
                                     for kind in ("Agent", "Tenant", "Workflow", "Team"))
    agent["properties"].pop("name")  # the table's key is its name
    # what the tables' own checks refuse, beyond their types (config.py)
    agent["properties"]["command"] = {"anyOf": [
        {"type": "array", "items": {"type": "string"}, "minItems": 1},
        {"type": "string", "pattern": "\\S", "description": "split as a shell would"}]}
    tenant["properties"]["dir"] = {"anyOf": [{"type": "string", "pattern": "^/",
                                              "description": "an absolute path"},
                                             {"type": "null"}], "default": None}
    tables.update(AgentTable=agent, TenantTable=tenant, WorkflowTable=workflow, TeamTable=team)
    # a step's name is a reference's ($steps.NAME.output: workflows/plan.py), one a step
    tables["ConfigStepSpec"]["properties"]["name"] = {
        "type": "string", "pattern": f"^{STEP_NAME.pattern}$",
        "description": "unique among the workflow's steps"}
    _step_rules(tables["ConfigStepSpec"], tables["ConfigCondition"])
    _policy_rules(tables["ConfigPolicyRule"], tables["ConfigPolicyTest"])
    _team_rules(team, tables["ConfigRule"])
    for name, whole in (("AgentPatch", agent), ("TenantPatch", tenant),
                        ("WorkflowPatch", workflow), ("TeamPatch", team)):
        tables[name] = {
            "type": "object", "minProperties": 1, "additionalProperties": False,
            "description": f"A patch of a {name.removesuffix('Patch').lower()}'s table: "
                           "the keys to set, null to take one away",
            "properties": {k: {"anyOf": [v, {"type": "null"}]}
                           for k, v in whole["properties"].items()}}
    return tables


def _step_rules(step: dict[str, Any], condition: dict[str, Any]) -> None:
    """What compile_workflow refuses of a step by itself, said in its schema (what
    depends on the other steps or on the agents there are no schema can say)."""
    null = {"type": "null"}
    name = {"type": "string", "pattern": f"^{STEP_NAME.pattern}$"}
    ref = {"type": "string", "pattern": rf"^\$(input|steps\.{REF_NAME}\.output)({REF_PART})*$",
           "description": "a reference: $input or $steps.NAME.output, then .key or [N] parts"}
    props = step["properties"]
    props["signal"] = {"anyOf": [name, null], "default": None}
    props["join"] = {"anyOf": [name, null], "default": None}
    props["map"] = {"anyOf": [ref, null], "default": None}
    condition["properties"]["ref"] = ref
    step["oneOf"] = [
        {"required": ["agent"], "properties": {"agent": {"type": "string"},
                                               "workflow": null, "signal": null,
                                               "on_timeout": null}},
        {"required": ["workflow"], "properties": {"workflow": {"type": "string"},
                                                  "agent": null, "signal": null,
                                                  "on_timeout": null}},
        {"required": ["signal"], "properties": {"signal": {"type": "string"},
                                                "agent": null, "workflow": null,
                                                "map": null, "retries": null}}]
    step["not"] = {"required": ["map", "join"], "properties": {
        "map": {"type": "string"}, "join": {"type": "string"}}}


def _policy_rules(rule: dict[str, Any], test: dict[str, Any]) -> None:
    """What a [[policy]] rule's own check refuses (config.PolicyRule.check), said in its
    schema."""
    rule["properties"]["when"]["propertyNames"] = {"pattern": r"^(max_tokens|arguments\..+)$"}
    null = {"type": "null"}
    # a path is placed under an absolute prefix only (PolicyTest.check)
    test["properties"]["under"]["anyOf"][0] = {"type": "string", "pattern": "^/",
                                               "description": "an absolute path"}
    kinds = list(test["properties"])
    test["oneOf"] = [{"required": [k], "properties": {
        o: test["properties"][k]["anyOf"][0] if o == k else null for o in kinds}}
        for k in kinds]


def _team_rules(team: dict[str, Any], rule: dict[str, Any]) -> None:
    """What check_team refuses of a team by itself, said in its schema (what depends on
    the agents there are, or compares two values, no schema can say)."""
    null = {"type": "null"}
    none = {"type": "array", "maxItems": 0}
    some = {"type": "array", "minItems": 1}
    team["properties"]["members"]["uniqueItems"] = True
    team["oneOf"] = [
        {"properties": {"mode": {"const": "broadcast"}, "rules": none, "default": null,
                        "router": null, "leader": null}},
        {"required": ["leader"], "properties": {
            "mode": {"const": "coordinate"}, "rules": none, "default": null, "router": null,
            "leader": {"type": "string"}}},
        {"required": ["router"], "properties": {
            "mode": {"const": "route"}, "rules": none, "default": null,
            "router": {"type": "string"}, "leader": null}},
        {"required": ["rules"], "properties": {
            "mode": {"const": "route"}, "rules": some, "router": null, "leader": null}}]
    rule["properties"]["ref"] = {"type": "string", "default": "$input",
                                 "pattern": rf"^\$input({REF_PART})*$"}
    given = {"not": null}
    rule["not"] = {"required": ["equals", "contains"],
                   "properties": {"equals": given, "contains": given}}


def document() -> dict[str, Any]:
    types: list[Any] = [t for res in RESOURCES for t in (REGISTRY[res.method].params,
                                                         REGISTRY[res.method].result)
                        if t is not None]
    schemas, components = msgspec.json.schema_components(types, ref_template=REF)
    # msgspec.Raw reads as the empty schema (any value); say what it is
    components["TasksSubmit"]["properties"]["input"] = {"description": INPUT}
    by_type = dict(zip(types, schemas, strict=True))
    components["Problem"] = PROBLEM_SCHEMA
    tables = _tables()
    assert not set(tables) & set(components), "a config table's name is a method type's"
    components.update(tables)
    paths: dict[str, dict[str, Any]] = {}
    problems = {code: {"description": why, "content": {
        route.PROBLEM: {"schema": {"$ref": REF.format(name="Problem")}}}}
        for code, why in ERRORS.items()}

    for res in RESOURCES:
        spec = REGISTRY[res.method]
        whole = copy.deepcopy(components[spec.params.__name__])
        props: dict[str, Any] = whole.get("properties", {})
        for (declared, name), rule in RULES.items():
            if declared is spec.params:
                props[name] = {k: v for k, v in props[name].items()
                               if k not in ("anyOf", "type") or "anyOf" not in rule
                               } | rule
        required = set(whole.get("required", []))
        op: dict[str, Any] = {
            "operationId": f"{res.verb.lower()}{res.path.replace('/', '_')}".replace(
                "{", "").replace("}", ""),
            "summary": res.summary, "description": spec.doc, "tags": [res.tag],
            "x-corral-method": res.method, "x-corral-scope": spec.scope,
            "security": [{"bearer": []}],
        }
        parameters: list[dict[str, Any]] = [
            {"name": var, "in": "path", "required": True,
             "schema": {"type": "string", "minLength": 1}
             | ({"pattern": TARGET} if param == "names" else {})
             | ({"pattern": "^(0|[1-9][0-9]{0,8})$"} if param == "replica" else {})}
            for var, param in res.path_params.items()]
        for name in res.query:
            schema = props[name]
            parameters.append({"name": name, "in": "query",
                               "required": name in required, "schema": schema,
                               **({"style": "form", "explode": True}
                                  if schema.get("type") == "array" else {})})
        if res.idempotent:
            parameters.append(IDEMPOTENCY_HEADER)
        if res.stream is not None:
            resume = "Resume after this event id (the `id:` of the last event received)"
            event_id = EVENT_IDS.get(spec.params, {"type": "string"})
            parameters += [
                {"name": "Last-Event-ID", "in": "header", "required": False,
                 "schema": event_id, "description": resume},
                {"name": sse.LAST_ID, "in": "query", "required": False,
                 "schema": event_id,
                 "description": resume + ", for a client that cannot send the header"}]
        if parameters:
            op["parameters"] = parameters
        if res.body:
            body = _body(res.body, props, required)
            op["requestBody"] = {"required": bool(body["required"]), "content": {
                "application/json": {"schema": body}}}
        if res.stream is not None:
            ok: dict[str, Any] = {"description": f"Server-Sent Events: `{res.stream}` "
                                  "events with ids; reconnect with Last-Event-ID",
                                  "content": {"text/event-stream": {"schema": {
                                      "type": "string"}}}}
        else:
            result = spec.result
            content = {"application/json": {
                "schema": by_type[result] if result is not None else {}}}
            ok = {"description": "OK", "content": content}
            if res.cursor is not None:
                ok["headers"] = {"Link": {
                    "schema": {"type": "string"},
                    "description": f'`<URL>; rel="next"`: this request with `{res.cursor}` '
                                   "set to the answer's `next` (there is a next page)"}}
            if res.location is not None:
                ok["headers"] = _location(res.location)
        op["responses"] = {"200": ok, **problems}
        if res.done_when is not None:
            ok["description"] = f"Done: the answer carries `{res.done_when}`"
            op["responses"]["202"] = {
                "description": f"Accepted: the work runs on (no `{res.done_when}` yet)",
                "headers": _location(res.location), "content": content}
        paths.setdefault(PREFIX + res.path, {})[res.verb.lower()] = op

    return {
        "openapi": "3.1.0",
        "info": {"title": "corral", "version": __version__,
                 "description": "The corral daemon's REST API (docs/http.md)"},
        "servers": [{"url": "/"}],
        "paths": paths,
        "components": {"schemas": components, "securitySchemes": {
            "bearer": {"type": "http", "scheme": "bearer",
                       "description": "A token from `corral token create`"}}},
    }


def _body(fields: tuple[str, ...], props: dict[str, Any], required: set[str]
          ) -> dict[str, Any]:
    """A request body's schema: its fields, closed, and which may not come together."""
    body: dict[str, Any] = {"type": "object", "additionalProperties": False,
                            "properties": {k: props[k] for k in fields},
                            "required": sorted(required & set(fields))}
    for pair in ONE_OF_THESE:
        if set(pair) <= set(fields):
            body["not"] = {"required": list(pair), "properties": {
                k: {"not": {"type": "null"}} for k in pair}}
    return body


def _location(path: str | None) -> dict[str, Any]:
    return {"Location": {"schema": {"type": "string"},
                         "description": f"Where it is: {PREFIX}{path}"}} if path else {}


@functools.cache
def encoded() -> bytes:
    """The document, made at its first request: it is the same for every daemon of this
    corral, and making it was most of an [http] daemon's start (bench/RESULTS.md)."""
    return msgspec.json.encode(document())


def handler() -> Any:
    async def openapi(request: web.Request) -> web.Response:
        return web.Response(body=encoded(), content_type="application/json")

    return openapi

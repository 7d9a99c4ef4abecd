"""The OpenAPI document against the Tornado app: same routes, same methods, a valid document.

Routes are compared by shape: a route's regex with its trailing ``/?`` removed and
each group turned into ``{}``, a documented path with its trailing slash removed and
each ``{name}`` turned into ``{}`` (parameter names are not compared).
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import tornado.routing
import tornado.web
from tornado.httpclient import AsyncHTTPClient
from tornado.ioloop import IOLoop

from jobferry.api.app import make_app
from jobferry.api.openapi import OPENAPI_PATH, load_document
from jobferry.config import parse_config
from jobferry.runners.fake import FakeRunner
from jobferry.services.container import Services, build
from jobferry.services.core import Core
from jobferry.store.engine import check_schema
from tests.db import with_database

HTTP_METHODS = ("get", "head", "post", "put", "patch", "delete", "options")


# --- fixtures ---------------------------------------------------------------------------------


@pytest.fixture
def io_loop() -> Iterator[IOLoop]:
    """pytest-tornado's io_loop, but closing its asyncio loop (and self-pipe) afterwards."""
    asyncio_loop = asyncio.new_event_loop()
    asyncio.set_event_loop(asyncio_loop)
    loop = IOLoop.current()
    yield loop
    loop.close(all_fds=True)
    asyncio.set_event_loop(None)
    asyncio_loop.close()


@pytest.fixture
def services(tmp_path: Path) -> Iterator[Services]:
    data = tmp_path / "data"
    config = parse_config(with_database({"data_dir": str(data)}, data))
    core = Core(config, runners={"local": FakeRunner()})
    core.ensure_dirs()
    check_schema(core.engine)
    yield build(core)
    core.close()


@pytest.fixture
def app(services: Services) -> tornado.web.Application:
    return make_app(services)


@pytest.fixture(scope="module")
def document() -> dict[str, Any]:
    return load_document()


# --- shapes -----------------------------------------------------------------------------------


def route_shapes(pattern: str) -> set[str]:
    """The paths a route regex stands for, as shapes.

    ``/api/jobs/v1/([^/]+)/status/?$`` -> ``{"/api/jobs/v1/{}/status"}``. A group of
    literal text only is expanded (``(?:resume|error)`` gives two paths, ``(/deleted)?``
    gives the path with and without it); any other group, character class or
    repetition is a parameter, ``{}``.
    """
    p = pattern.removeprefix("^").removesuffix("$")
    alternatives, end, _ = _parse_alternation(p, 0)
    assert end == len(p), f"unbalanced parentheses in route {pattern!r}"
    return {(a.rstrip("/") or "/") for a in alternatives}


def _parse_alternation(p: str, i: int) -> tuple[list[str], int, bool]:
    """Alternatives of ``p[i:]`` up to an unmatched ``)``; also whether all was literal."""
    results: list[str] = []
    current = [""]
    literal = True
    while i < len(p) and p[i] != ")":
        if p[i] == "|":
            results += current
            current = [""]
            i += 1
            continue
        atom, i, atom_literal = _parse_atom(p, i)
        if i < len(p) and p[i] == "?":
            atom = [*atom, ""]
            i += 1
        elif i < len(p) and p[i] in "*+{":
            i = p.index("}", i) + 1 if p[i] == "{" else i + 1
            if i < len(p) and p[i] == "?":  # lazy
                i += 1
            atom, atom_literal = ["{}"], False
        literal = literal and atom_literal
        current = [a + b for a in current for b in atom]
    return results + current, i, literal


def _parse_atom(p: str, i: int) -> tuple[list[str], int, bool]:
    c = p[i]
    if c == "\\":
        return [p[i + 1]], i + 2, True
    if c == "[":  # a character class: skip to its closing bracket
        j = i + 1
        if j < len(p) and p[j] == "^":
            j += 1
        if j < len(p) and p[j] == "]":
            j += 1
        while p[j] != "]":
            j += 2 if p[j] == "\\" else 1
        return ["{}"], j + 1, False
    if c == ".":
        return ["{}"], i + 1, False
    if c == "(":
        i += 1
        if p.startswith("?:", i):
            i += 2
        elif p.startswith("?P<", i):
            i = p.index(">", i) + 1
        inner, i, literal = _parse_alternation(p, i)
        assert p[i] == ")", f"unbalanced parentheses in {p!r}"
        return (inner if literal else ["{}"]), i + 1, literal
    return [c], i + 1, True


def doc_shape(path: str) -> str:
    """``/api/jobs/v1/{job_id}/status/`` -> ``/api/jobs/v1/{}/status``."""
    return re.sub(r"\{[^}/]+\}", "{}", path).rstrip("/") or "/"


def test_shapes() -> None:
    assert route_shapes(r"/api/jobs/v1/([^/]+)/assets/([^/]+)/?$") == {"/api/jobs/v1/{}/assets/{}"}
    assert route_shapes(r"/api/scripts/v1/([a-zA-Z0-9_-]+)/submit/?$") == {
        "/api/scripts/v1/{}/submit"
    }
    assert route_shapes(r"/api/openapi\.json$") == {"/api/openapi.json"}
    assert route_shapes(r"/api/jobs/(?P<job_id>[0-9a-f()]{16})(?:/)?$") == {"/api/jobs/{}"}
    assert route_shapes(r"/api/jobs/?$") == {"/api/jobs"}
    assert route_shapes(r"/api/jobs/([^/]+)/(?:resume|error)/?$") == {
        "/api/jobs/{}/resume",
        "/api/jobs/{}/error",
    }
    assert route_shapes(r"/api/users(/deleted)?/?$") == {"/api/users", "/api/users/deleted"}
    assert route_shapes(r"/api/users/(?:deleted/)?([^/]+)/?$") == {
        "/api/users/{}",
        "/api/users/deleted/{}",
    }
    assert route_shapes(r"/api/files/(.*)$") == {"/api/files/{}"}
    assert doc_shape("/api/jobs/v1/{job_id}/status/") == "/api/jobs/v1/{}/status"
    assert doc_shape("/api/version") == "/api/version"


def iter_rules(router: tornado.routing.RuleRouter) -> Iterator[tornado.routing.Rule]:
    for rule in router.rules:
        if isinstance(rule.target, tornado.routing.RuleRouter):
            yield from iter_rules(rule.target)
        else:
            yield rule


def registered_routes(app: tornado.web.Application) -> dict[str, list[tuple[str, type[Any]]]]:
    """Route shape -> [(regex, handler class)] for every route of the app.

    The default handler (the JSON 404 for unknown paths) is not a route.
    """
    routes: dict[str, list[tuple[str, type[Any]]]] = {}
    for rule in iter_rules(app.default_router):
        matcher = rule.matcher
        assert isinstance(matcher, tornado.routing.PathMatches), f"unexpected rule {rule!r}"
        handler = rule.target
        assert isinstance(handler, type) and issubclass(handler, tornado.web.RequestHandler)
        for shape in route_shapes(matcher.regex.pattern):
            routes.setdefault(shape, []).append((matcher.regex.pattern, handler))
    return routes


def implemented_methods(handler: type[tornado.web.RequestHandler]) -> set[str]:
    """Methods the handler (or a base of its own) defines, not RequestHandler's 405 default."""
    return {
        m
        for m in HTTP_METHODS
        if m.upper() in handler.SUPPORTED_METHODS
        and getattr(handler, m, None) is not getattr(tornado.web.RequestHandler, m)
    }


def documented_paths(document: dict[str, Any]) -> dict[str, list[str]]:
    """Path shape -> documented paths (several would be a duplicate)."""
    shapes: dict[str, list[str]] = {}
    for path in document["paths"]:
        shapes.setdefault(doc_shape(path), []).append(path)
    return shapes


def documented_methods(item: dict[str, Any]) -> set[str]:
    return {m for m in HTTP_METHODS if m in item}


# --- the document against the app -------------------------------------------------------------


def test_every_route_is_documented(app: tornado.web.Application, document: dict[str, Any]) -> None:
    routes = registered_routes(app)
    documented = documented_paths(document)
    missing = [
        f"  {shape}  (route {pattern!r}, {handler.__module__}.{handler.__qualname__})"
        for shape, entries in sorted(routes.items())
        if shape not in documented
        for pattern, handler in entries
    ]
    assert not missing, "routes of the app missing from openapi.yaml:\n" + "\n".join(missing)


def test_every_documented_path_is_a_route(
    app: tornado.web.Application, document: dict[str, Any]
) -> None:
    routes = registered_routes(app)
    missing = [
        f"  {path}  ({', '.join(m.upper() for m in sorted(documented_methods(item)))})"
        for path, item in document["paths"].items()
        if doc_shape(path) not in routes
    ]
    assert not missing, "documented paths with no route in the app:\n" + "\n".join(missing)


def test_no_duplicates(app: tornado.web.Application, document: dict[str, Any]) -> None:
    duplicated_docs = {s: p for s, p in documented_paths(document).items() if len(p) > 1}
    assert not duplicated_docs, f"paths documented twice: {duplicated_docs}"
    duplicated_routes = {s: r for s, r in registered_routes(app).items() if len(r) > 1}
    assert not duplicated_routes, f"routes registered twice (the first wins): {duplicated_routes}"


def test_documented_methods_are_the_implemented_ones(
    app: tornado.web.Application, document: dict[str, Any]
) -> None:
    """For each documented path that has a route (missing ones are reported above)."""
    routes = registered_routes(app)
    not_implemented: list[str] = []
    not_documented: list[str] = []
    for path, item in document["paths"].items():
        entries = routes.get(doc_shape(path))
        if not entries:
            continue
        handler = entries[0][1]
        implemented = implemented_methods(handler)
        documented = documented_methods(item)
        name = f"{handler.__module__}.{handler.__qualname__}"
        not_implemented += [
            f"  {m.upper()} {path}  ({name})" for m in sorted(documented - implemented)
        ]
        not_documented += [
            f"  {m.upper()} {path}  ({name})" for m in sorted(implemented - documented)
        ]
    problems = []
    if not_implemented:
        problems.append("documented but not implemented:\n" + "\n".join(not_implemented))
    if not_documented:
        problems.append("implemented but not documented:\n" + "\n".join(not_documented))
    assert not problems, "\n".join(problems)


def test_implemented_methods_helper() -> None:
    class Plain(tornado.web.RequestHandler):
        def get(self) -> None:
            pass

    class Child(Plain):
        def delete(self) -> None:
            pass

    assert implemented_methods(Plain) == {"get"}
    assert implemented_methods(Child) == {"get", "delete"}
    assert implemented_methods(tornado.web.StaticFileHandler) == {"get", "head"}


# --- the document itself ----------------------------------------------------------------------


def _refs(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "$ref" and isinstance(value, str):
                yield value
            else:
                yield from _refs(value)
    elif isinstance(node, list):
        for value in node:
            yield from _refs(value)


def _resolve(document: dict[str, Any], ref: str) -> Any:
    assert ref.startswith("#/"), f"only local references are used: {ref}"
    node: Any = document
    for part in ref[2:].split("/"):
        part = part.replace("~1", "/").replace("~0", "~")
        assert isinstance(node, dict) and part in node, f"unresolvable $ref {ref}"
        node = node[part]
    return node


def test_document_is_valid_openapi(document: dict[str, Any]) -> None:
    if importlib.util.find_spec("openapi_spec_validator") is not None:
        from openapi_spec_validator import validate  # type: ignore[import-not-found]

        validate(document)
    else:
        # schemathesis validates against the official OpenAPI JSON Schema (jsonschema_rs).
        import schemathesis

        schemathesis.openapi.from_dict(document).validate()
    for ref in set(_refs(document)):
        _resolve(document, ref)


def test_document_conventions(document: dict[str, Any]) -> None:
    """Each operation: a unique operationId, explicit security, an error response."""
    seen: dict[str, str] = {}
    problems: list[str] = []
    schemes = set(document["components"]["securitySchemes"])
    for path, item in document["paths"].items():
        for method in documented_methods(item):
            op = item[method]
            label = f"{method.upper()} {path}"
            op_id = op.get("operationId")
            if not op_id or op_id in seen:
                problems.append(f"{label}: operationId missing or also used by {seen.get(op_id)}")
            seen[op_id] = label
            if "security" not in op:
                problems.append(f"{label}: no explicit security")
            for requirement in op.get("security", []):
                problems += [
                    f"{label}: unknown scheme {s}" for s in requirement if s not in schemes
                ]
            if "default" not in op["responses"]:
                problems.append(f"{label}: no default (error) response")
            face = "wooey" if "wooey" in op.get("tags", []) else "other"
            error_ref = "#/components/responses/" + ("WooeyError" if face == "wooey" else "Error")
            if method != "head" and op["responses"]["default"].get("$ref") != error_ref:
                problems.append(f"{label}: default response should be {error_ref}")
    assert not problems, "\n".join(problems)


def test_job_files_take_only_the_job_key(document: dict[str, Any]) -> None:
    item = document["paths"]["/api/jobs/{job_id}/files"]
    for method in ("get", "head", "post"):
        assert item[method]["security"] == [{"jobKey": []}]


# --- the handler ------------------------------------------------------------------------------


@pytest.mark.gen_test
async def test_document_is_served_without_auth(http_client: AsyncHTTPClient, base_url: str) -> None:
    for path in (OPENAPI_PATH,):
        response = await http_client.fetch(base_url + path, raise_error=False)
        assert response.code == 200, response.body
        assert response.headers["Content-Type"].startswith("application/json")
        assert json.loads(response.body) == load_document()


def test_load_document_returns_a_copy() -> None:
    first = load_document()
    first["paths"].clear()
    assert load_document()["paths"]

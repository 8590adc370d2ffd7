"""The OpenAPI document: valid OpenAPI 3.1, and exactly the /api/v1 routes the app has."""

from __future__ import annotations

import re

import schemathesis

from newsletter.web.problems import TYPES

from factories import BASE_URL

# HEAD and OPTIONS come with every route (Flask, and CORS preflights); they are not listed.
_IMPLICIT = {"HEAD", "OPTIONS"}
_METHODS = {"get", "put", "post", "delete", "patch"}


def routed(app) -> dict[str, set[str]]:  # type: ignore[no-untyped-def]
    """Every /api/v1 route with its methods, paths written as OpenAPI writes them."""
    found: dict[str, set[str]] = {}
    for rule in app.url_map.iter_rules():
        if rule.rule.startswith("/api/v1"):
            path = re.sub(r"<(?:[^:<>]+:)?([^<>]+)>", r"{\1}", rule.rule)
            found.setdefault(path, set()).update(rule.methods - _IMPLICIT)
    return found


def documented(document: dict) -> dict[str, set[str]]:  # type: ignore[type-arg]
    return {
        path: {method.upper() for method in item if method in _METHODS}
        for path, item in document["paths"].items()
    }


def test_the_document_is_served_as_valid_openapi_3_1(client):
    response = client.get("/api/v1/openapi.json")
    assert response.status_code == 200 and response.content_type == "application/json"
    document = response.json
    assert document["openapi"] == "3.1.0"
    assert document["servers"] == [{"url": BASE_URL}]
    # Raises with the first place the document breaks the OpenAPI 3.1 schema.
    schemathesis.openapi.from_dict(document).validate()


def test_every_route_is_documented_and_every_documented_path_is_routed(app, client):
    assert documented(client.get("/api/v1/openapi.json").json) == routed(app)


def test_operations_have_unique_ids_and_problem_errors(client):
    document = client.get("/api/v1/openapi.json").json
    responses = document["components"]["responses"]
    ids = []
    for path, item in document["paths"].items():
        for operation in item.values():
            ids.append(operation["operationId"])
            for status, answer in operation["responses"].items():
                if status.startswith(("4", "5")):
                    answer = responses[answer["$ref"].rsplit("/", 1)[1]]
                    assert list(answer["content"]) == ["application/problem+json"], (path, status)
    assert len(ids) == len(set(ids))


def test_the_items_calls_need_the_bearer_scheme(client):
    document = client.get("/api/v1/openapi.json").json
    assert document["components"]["securitySchemes"]["bearer"] == {
        "type": "http",
        "scheme": "bearer",
        "description": "An API token (nlt_…) an admin made at /admin/tokens.",
    }
    secured = {
        (method.upper(), path)
        for path, item in document["paths"].items()
        for method, operation in item.items()
        if operation.get("security")
    }
    assert secured == {("GET", "/api/v1/items"), ("POST", "/api/v1/items")}


def test_every_problem_type_is_described(client):
    document = client.get("/api/v1/openapi.json").json
    name = document["paths"]["/api/v1/problems/{name}"]["get"]["parameters"][0]
    assert name["schema"]["enum"] == sorted(TYPES)
    for kind in TYPES.values():
        assert f"`{kind.name}` ({kind.status})" in document["info"]["description"]

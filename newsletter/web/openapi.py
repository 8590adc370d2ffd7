"""The OpenAPI 3.1 description of /api/v1, kept by hand beside the views it describes.

tests/test_openapi.py proves it names every /api/v1 route with its methods and nothing else, and
schemathesis checks the app's answers against it.
"""

from __future__ import annotations

from typing import Any

from newsletter.digests import items
from newsletter.frequencies import FREQUENCIES
from newsletter.languages import LANGUAGES
from newsletter.web.problems import TYPES

_JSON = "application/json"
_PROBLEM = "application/problem+json"


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _answer(description: str, schema: str, media_type: str = _JSON) -> dict[str, Any]:
    return {"description": description, "content": {media_type: {"schema": _ref(schema)}}}


def _problem(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/responses/{name}"}


_TEXT_OR_NULL = {"type": ["string", "null"]}

SCHEMAS: dict[str, Any] = {
    "Problem": {
        "type": "object",
        "description": "An error, as RFC 9457 problem details.",
        "required": ["type", "title", "status", "detail", "errors"],
        "properties": {
            "type": {
                "type": "string",
                "format": "uri",
                "description": "Names the kind of problem; it leads to a page explaining it.",
            },
            "title": {"type": "string", "description": "The kind of problem, in a few words."},
            "status": {"type": "integer", "minimum": 400, "maximum": 599},
            "detail": {"type": "string", "description": "What went wrong this time."},
            "errors": {
                "type": "array",
                "description": "Each field at fault (empty when the problem is not a field's).",
                "items": _ref("FieldError"),
            },
        },
    },
    "FieldError": {
        "type": "object",
        "required": ["field", "in", "message"],
        "properties": {
            "field": {"type": "string", "description": "The field's name, as sent."},
            "in": {"type": "string", "enum": ["body", "query"]},
            "message": {"type": "string", "description": "What is wrong, fit to show a person."},
        },
    },
    "Newsletter": {
        "type": "object",
        "required": [
            "slug",
            "name",
            "description",
            "cadence",
            "altcha",
            "frequencies",
            "default_frequency",
        ],
        "properties": {
            "slug": {"type": "string", "description": "The name used in every call."},
            "name": {"type": "string"},
            "description": {"type": "string"},
            "cadence": {"type": "string", "examples": ["daily", "weekly", "monthly"]},
            "altcha": {
                "type": "boolean",
                "description": "A signup to it must carry a solved ALTCHA challenge "
                "(GET /api/v1/challenge).",
            },
            "frequencies": {
                "type": "array",
                "items": {"type": "string", "enum": list(FREQUENCIES)},
                "description": "How often a reader may choose to hear from it (a signup's "
                "`frequency`); empty: no choice, the cadence.",
            },
            "default_frequency": {
                "type": ["string", "null"],
                "enum": [*FREQUENCIES, None],
                "description": "The choice a signup without one gets; null: the cadence.",
            },
        },
    },
    "NewsletterList": {
        "type": "object",
        "required": ["newsletters"],
        "properties": {"newsletters": {"type": "array", "items": _ref("Newsletter")}},
    },
    "SubscriptionRequest": {
        "type": "object",
        "required": ["email", "newsletters"],
        "properties": {
            "email": {
                "type": "string",
                "maxLength": 254,
                "description": "The reader's address.",
                "examples": ["reader@example.com"],
            },
            "newsletters": {
                "type": "array",
                "minItems": 1,
                "maxItems": 20,
                "items": {"type": "string", "maxLength": 64},
                "description": "Slugs of open newsletters; one confirmation mail covers them all.",
                "examples": [["daily"]],
            },
            "source": {
                "type": "string",
                "maxLength": 100,
                "description": "Where the signup came from, kept in the consent trail "
                "(default: api).",
            },
            "lang": {
                "type": "string",
                "enum": list(LANGUAGES),
                "description": "The language of the box, and of every mail to the reader "
                "(default: the request's Accept-Language, else en).",
            },
            "frequency": {
                "type": ["string", "null"],
                "enum": [*FREQUENCIES, None],
                "description": "How often the reader wants mail: one the newsletters named all "
                "offer (GET /api/v1/newsletters lists them). Missing: each list's preselected "
                "choice. For a reader already subscribed it changes their choice.",
            },
            "leave_blank": {
                "type": "string",
                "maxLength": 1000,
                "description": "A honeypot: a form field hidden from people. When it is not "
                "empty nothing is stored, and the answer is the same 202.",
            },
            "altcha": {
                "type": "string",
                "maxLength": 4000,
                "description": "The ALTCHA widget's payload (base64) for a challenge from "
                "GET /api/v1/challenge, solved; needed when a newsletter named has altcha "
                "on, and good for one signup.",
            },
        },
    },
    "Challenge": {
        "type": "object",
        "description": "An ALTCHA proof-of-work challenge (PoW v2), signed, with its expiry.",
        "required": ["parameters", "signature"],
        "properties": {
            "parameters": {
                "type": "object",
                "required": ["algorithm", "nonce", "salt", "cost", "keyLength", "keyPrefix"],
                "properties": {
                    "algorithm": {"type": "string", "examples": ["PBKDF2/SHA-256"]},
                    "nonce": {"type": "string"},
                    "salt": {"type": "string"},
                    "cost": {"type": "integer"},
                    "keyLength": {"type": "integer"},
                    "keyPrefix": {"type": "string"},
                    "keySignature": {"type": "string"},
                    "expiresAt": {"type": "integer", "description": "Unix time."},
                },
            },
            "signature": {"type": "string"},
        },
    },
    "SubscriptionAccepted": {
        "type": "object",
        "description": "The same for a new, waiting, confirmed or unsubscribed address.",
        "required": ["ok", "title", "message"],
        "properties": {
            "ok": {"const": True},
            "title": {"type": "string", "examples": ["Successfully subscribed"]},
            "message": {
                "type": "string",
                "description": "The newsletter's thank-you text, to show the reader.",
            },
        },
    },
    "ItemRequest": {
        "type": "object",
        "required": ["title", "url", "newsletters"],
        "properties": {
            "title": {
                "type": "string",
                "description": f"One line, at most {items.MAX_TITLE} characters once runs of "
                "spaces are folded.",
            },
            "url": {
                "type": "string",
                "description": "An absolute http(s) link, at most "
                f"{items.MAX_URL:,} characters. A second item with the same link is the same "
                "item.",
            },
            "summary": {
                **_TEXT_OR_NULL,
                "description": f"Plain text, at most {items.MAX_SUMMARY:,} characters.",
            },
            "published_at": {
                **_TEXT_OR_NULL,
                "description": "ISO 8601; without a zone it is UTC; missing or empty: now.",
                "examples": ["2024-11-03T20:15:00+02:00"],
            },
            "guid": {
                **_TEXT_OR_NULL,
                "description": f"The item's id at the source, at most {items.MAX_GUID} "
                "characters; missing: the link.",
            },
            "newsletters": {
                "type": "array",
                "minItems": 1,
                "items": {"type": "string"},
                "description": "Slugs of open newsletters the item belongs to.",
            },
            "pick": {
                "type": ["boolean", "null"],
                "description": "An editor's pick: first in the weekly edition. On a repeat it "
                "marks or unmarks the item there; missing: unchanged (new items: false).",
            },
            "alert": {
                "type": ["boolean", "null"],
                "description": "True: breaking news, mailed within a minute, the item alone, to "
                "the readers who chose alerts on its newsletters that offer them (at most "
                "NEWSLETTER_ALERTS_PER_DAY per reader in 24 hours; what that holds back comes "
                "in their next edition). Sent once; a repeat with true marks a known item.",
            },
        },
    },
    "Item": {
        "type": "object",
        "required": [
            "id",
            "guid",
            "title",
            "url",
            "summary",
            "published_at",
            "source",
            "pick",
            "newsletters",
            "created_at",
            "alert",
            "alerted_at",
        ],
        "properties": {
            "id": {"type": "integer"},
            "guid": {"type": "string"},
            "title": {"type": "string"},
            "url": {"type": ["string", "null"]},
            "summary": {"type": "string"},
            "published_at": {"type": "string", "format": "date-time"},
            "source": {"type": "string", "enum": list(items.SOURCES)},
            "pick": {"type": "boolean"},
            "newsletters": {"type": "array", "items": {"type": "string"}},
            "created_at": {"type": "string", "format": "date-time"},
            "alert": {"type": "boolean", "description": "Breaking news."},
            "alerted_at": {
                "type": ["string", "null"],
                "format": "date-time",
                "description": "When a worker took the alert to mail it; null until then.",
            },
        },
    },
    "ItemSaved": {
        "type": "object",
        "required": ["ok", "created", "item"],
        "properties": {
            "ok": {"const": True},
            "created": {
                "type": "boolean",
                "description": "False when the guid or link was known: the item there already "
                "now belongs to the newsletters named too.",
            },
            "item": _ref("Item"),
        },
    },
    "ItemList": {
        "type": "object",
        "required": ["ok", "items"],
        "properties": {"ok": {"const": True}, "items": {"type": "array", "items": _ref("Item")}},
    },
}

_PROBLEM_CONTENT = {_PROBLEM: {"schema": _ref("Problem")}}

RESPONSES: dict[str, Any] = {
    "NotJson": {
        "description": "The body is not a JSON object (problem type not-json).",
        "content": _PROBLEM_CONTENT,
    },
    "InvalidFields": {
        "description": "Fields break the rules; errors names each (problem type invalid-fields).",
        "content": _PROBLEM_CONTENT,
    },
    "Unauthorized": {
        "description": "No API token, or one that is not valid or was revoked "
        "(problem type unauthorized).",
        "headers": {
            "WWW-Authenticate": {
                "description": 'Bearer realm="newsletter", with error="invalid_token" when a '
                "token was sent but refused.",
                "schema": {"type": "string"},
                "required": True,
            }
        },
        "content": _PROBLEM_CONTENT,
    },
    "TooLarge": {
        "description": "The body is too large (problem type too-large).",
        "content": _PROBLEM_CONTENT,
    },
    "RateLimited": {
        "description": "Too many signups from this network (problem type rate-limited).",
        "headers": {
            "Retry-After": {
                "description": "Seconds to wait before trying again.",
                "schema": {"type": "string"},
                "required": True,
            }
        },
        "content": _PROBLEM_CONTENT,
    },
    "NotFound": {
        "description": "Nothing is at this address (problem type not-found).",
        "content": _PROBLEM_CONTENT,
    },
}

_BEARER = [{"bearer": []}]


def _paths() -> dict[str, Any]:
    return {
        "/api/v1/openapi.json": {
            "get": {
                "operationId": "getOpenApi",
                "summary": "This document",
                "tags": ["about"],
                "responses": {
                    "200": {
                        "description": "The OpenAPI 3.1 description of the API.",
                        "content": {_JSON: {"schema": {"type": "object"}}},
                    }
                },
            }
        },
        "/api/v1/problems/{name}": {
            "get": {
                "operationId": "getProblemType",
                "summary": "The page a problem's type URI leads to",
                "tags": ["about"],
                "parameters": [
                    {
                        "name": "name",
                        "in": "path",
                        "required": True,
                        "schema": {"type": "string", "enum": sorted(TYPES)},
                    }
                ],
                "responses": {
                    "200": {
                        "description": "A page explaining the problem type.",
                        "content": {"text/html": {"schema": {"type": "string"}}},
                    },
                    "404": _problem("NotFound"),
                },
            }
        },
        "/api/v1/newsletters": {
            "get": {
                "operationId": "listNewsletters",
                "summary": "The newsletters a reader can join",
                "tags": ["signups"],
                "responses": {
                    "200": {
                        **_answer("Open newsletters, in the site's order.", "NewsletterList"),
                        "links": {
                            "SubscribeToFirst": {
                                "operationId": "createSubscription",
                                "requestBody": {
                                    "email": "reader@example.com",
                                    "newsletters": ["$response.body#/newsletters/0/slug"],
                                },
                                "description": "Sign a reader up to the first newsletter.",
                            },
                            "ItemForFirst": {
                                "operationId": "createItem",
                                "requestBody": {
                                    "title": "Moldova's Sandu advances to presidential run-off",
                                    "url": "https://news.example/news/moldova-sandu",
                                    "newsletters": ["$response.body#/newsletters/0/slug"],
                                },
                                "description": "Add an item to the first newsletter.",
                            },
                            "ItemsOfFirst": {
                                "operationId": "listItems",
                                "parameters": {
                                    "query.newsletter": "$response.body#/newsletters/0/slug"
                                },
                                "description": "The items of the first newsletter.",
                            },
                        },
                    }
                },
            }
        },
        "/api/v1/challenge": {
            "get": {
                "operationId": "getChallenge",
                "summary": "A proof-of-work challenge for the ALTCHA widget",
                "description": "For the newsletters with altcha on. Any page may fetch one "
                "(Access-Control-Allow-Origin: *); each is good for one signup until it "
                "expires.",
                "tags": ["signups"],
                "responses": {"200": _answer("A fresh challenge.", "Challenge")},
            }
        },
        "/api/v1/subscriptions": {
            "post": {
                "operationId": "createSubscription",
                "summary": "Sign an address up to newsletters (double opt-in)",
                "description": "Queues one confirmation mail covering every newsletter named; "
                "nothing is sent to the newsletters until the reader confirms. The answer is "
                "202 with the same body whatever the address's history, so the call tells "
                "nobody who subscribes. Shares one per-IP limit with the signup boxes.",
                "tags": ["signups"],
                "requestBody": {
                    "required": True,
                    "content": {_JSON: {"schema": _ref("SubscriptionRequest")}},
                },
                "responses": {
                    "202": _answer(
                        "Accepted; a confirmation mail is on its way.", "SubscriptionAccepted"
                    ),
                    "400": _problem("NotJson"),
                    "413": _problem("TooLarge"),
                    "422": _problem("InvalidFields"),
                    "429": _problem("RateLimited"),
                },
            }
        },
        "/api/v1/items": {
            "get": {
                "operationId": "listItems",
                "summary": "The newest news items",
                "tags": ["items"],
                "security": _BEARER,
                "parameters": [
                    {
                        "name": "newsletter",
                        "in": "query",
                        "required": False,
                        "description": "Only the items of this newsletter (its slug).",
                        "schema": {"type": "string"},
                    },
                    {
                        "name": "limit",
                        "in": "query",
                        "required": False,
                        "description": "How many items at most.",
                        "schema": {"type": "integer", "minimum": 1, "maximum": 200, "default": 50},
                    },
                ],
                "responses": {
                    "200": _answer("Items, newest first.", "ItemList"),
                    "401": _problem("Unauthorized"),
                    "422": _problem("InvalidFields"),
                },
            },
            "post": {
                "operationId": "createItem",
                "summary": "Add a news item, once per story",
                "description": "A second post with the same guid, or the same link under "
                "another guid, adds nothing but the newsletters it names to the item there.",
                "tags": ["items"],
                "security": _BEARER,
                "requestBody": {
                    "required": True,
                    "content": {_JSON: {"schema": _ref("ItemRequest")}},
                },
                "responses": {
                    "201": {
                        **_answer("The item was added.", "ItemSaved"),
                        "links": {
                            "ItemsOfItsNewsletter": {
                                "operationId": "listItems",
                                "parameters": {
                                    "query.newsletter": "$response.body#/item/newsletters/0"
                                },
                                "description": "The items of the new item's first newsletter.",
                            }
                        },
                    },
                    "200": _answer(
                        "The item was known; it now has these newsletters too.", "ItemSaved"
                    ),
                    "400": _problem("NotJson"),
                    "401": _problem("Unauthorized"),
                    "413": _problem("TooLarge"),
                    "422": _problem("InvalidFields"),
                },
            },
        },
    }


def _description() -> str:
    kinds = "\n".join(f"- `{kind.name}` ({kind.status}): {kind.title}." for kind in TYPES.values())
    return (
        "Signups for sites that build their own forms, and news items for digests.\n\n"
        "Every error is `application/problem+json` (RFC 9457): `type`, `title`, `status`, "
        "`detail` and `errors` (each field at fault: `field`, `in`, `message`). The type URI is "
        "`<service>/api/v1/problems/<name>`, a page that explains it:\n\n"
        f"{kinds}\n\n"
        "Browsers on the host sites the service allows (NEWSLETTER_ALLOWED_ORIGINS and the "
        "sites admins list) may read the answers across origins (CORS); other sites may not."
    )


def document(base_url: str) -> dict[str, Any]:
    """The OpenAPI 3.1 document of the API served at `base_url`."""
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Newsletter API",
            "version": "1",
            "description": _description(),
        },
        "servers": [{"url": base_url}],
        "tags": [
            {"name": "signups", "description": "Newsletters and signups, open to anyone."},
            {"name": "items", "description": "News items for digests; needs an API token."},
            {"name": "about", "description": "This description and the problem types."},
        ],
        "paths": _paths(),
        "components": {
            "schemas": SCHEMAS,
            "responses": RESPONSES,
            "securitySchemes": {
                "bearer": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "An API token (nlt_…) an admin made at /admin/tokens.",
                }
            },
        },
    }

"""/openapi.json publishes every bound under JSON Schema's own names (`minimum`, `maximum`,
`exclusiveMinimum`, `exclusiveMaximum`), so that schema-driven clients and fuzzers read them;
in particular the optional whole numbers of the Infomaniak and EGP schemas (WholeNumber), whose
bounds pydantic checks behind a validator and would otherwise publish as `ge` / `le`."""

from __future__ import annotations

import pytest

from chatforge.api.infomaniak.schemas import MAX_NEW_TOKENS, MAX_TRUNCATE
from chatforge.api.wire import SEED_MAX

PYDANTIC_NAMES = {"ge", "le", "gt", "lt"}


def numeric_schemas(node, path="$"):
    """(path, schema) of every integer or number schema in a JSON document."""
    if isinstance(node, list):
        for i, item in enumerate(node):
            yield from numeric_schemas(item, f"{path}[{i}]")
    elif isinstance(node, dict):
        if node.get("type") in ("integer", "number"):
            yield path, node
        for key, value in node.items():
            yield from numeric_schemas(value, f"{path}.{key}")


def the_integer(prop: dict) -> dict:
    """The integer member of an optional field's `anyOf`."""
    (integer,) = [s for s in prop.get("anyOf", [prop]) if s.get("type") == "integer"]
    return integer


@pytest.fixture(scope="module")
def spec(server):
    import httpx

    return httpx.get(server.url + "/openapi.json", timeout=30).json()


def test_no_bound_is_published_under_pydantics_names(spec):
    numeric = list(numeric_schemas(spec))
    assert len(numeric) > 50  # the walk saw the dialects' schemas
    assert [(path, sorted(PYDANTIC_NAMES & set(s))) for path, s in numeric if PYDANTIC_NAMES & set(s)] == []


@pytest.mark.parametrize("model, field, minimum, maximum", [
    ("LegacyRequest", "max_new_tokens", 1, MAX_NEW_TOKENS),
    ("LegacyRequest", "top_k", 1, 100),
    ("LegacyRequest", "truncate", 1, MAX_TRUNCATE),
    ("LegacyRequest", "seed", 0, SEED_MAX),
    ("EgpChatRequest", "max_tokens", 1, None),
    ("EgpChatRequest", "top_logprobs", 0, 20),
    ("EgpBindings", "max_tokens", 1, None),
    ("EgpBindings", "top_k", -1, None),
    ("EgpBindings", "seed", 0, SEED_MAX),
])
def test_whole_numbers_publish_their_bounds(spec, model, field, minimum, maximum):
    integer = the_integer(spec["components"]["schemas"][model]["properties"][field])
    assert integer["minimum"] == minimum
    assert integer.get("maximum") == (None if maximum is None else pytest.approx(maximum))

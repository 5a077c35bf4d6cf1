"""OpenAPI for request bodies the routes decode themselves.

The routes read raw bytes and decode them with msgspec (`params.decode_body`), so that every
bad body gets the one error mapping (422 naming the field) and seed 002's job shape (no
`trainer`: a swift job) can be recognised. Litestar therefore does not see a body type; this
puts each one into the OpenAPI document: an `Operation` subclass per route whose request body
is the JSON Schema msgspec derives from the type, with its definitions inlined (Litestar
rebuilds `components/schemas` from the types it knows, so references into it would dangle; no
body type is recursive).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import msgspec
from litestar.openapi.spec import OpenAPIMediaType, Operation, RequestBody


def body_schema(body_type: Any) -> dict[str, Any]:
    ref, components = msgspec.json.schema_components([body_type], ref_template="#/$defs/{name}")

    def inline(node: Any) -> Any:
        if isinstance(node, dict):
            if "$ref" in node:
                return inline(components[node["$ref"].removeprefix("#/$defs/")])
            return {key: inline(value) for key, value in node.items() if key != "discriminator"}
        if isinstance(node, list):
            return [inline(item) for item in node]
        return node

    # (the discriminator's mapping points into the definitions; the `trainer` enum in each
    # alternative says the same)
    return inline(ref[0])


def body_operation(body_type: Any, description: str, *, required: bool = True) -> type[Operation]:
    """An `operation_class` for a route that decodes `body_type` itself."""
    schema = body_schema(body_type)

    @dataclass
    class WithBody(Operation):
        def __post_init__(self) -> None:
            self.request_body = RequestBody(
                content={"application/json": OpenAPIMediaType(schema=schema)},  # type: ignore[arg-type]
                description=description, required=required,
            )

    return WithBody

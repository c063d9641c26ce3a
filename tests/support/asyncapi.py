"""docs/asyncapi.yaml, and jsonschema validators for its payload schemas (references resolved)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from jsonschema import Draft7Validator
from referencing import Registry
from referencing.jsonschema import DRAFT7

DOC_PATH = Path(__file__).resolve().parents[2] / "docs" / "asyncapi.yaml"
DOC: dict[str, Any] = yaml.safe_load(DOC_PATH.read_text(encoding="utf-8"))
_REGISTRY: Registry[Any] = Registry().with_resource("urn:capture-bridge", DRAFT7.create_resource(DOC))


def validator(schema: str) -> Draft7Validator:
    """A validator for `components/schemas/<schema>` of the document."""
    return Draft7Validator({"$ref": f"urn:capture-bridge#/components/schemas/{schema}"}, registry=_REGISTRY)

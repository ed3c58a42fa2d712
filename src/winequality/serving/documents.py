"""The documents the server shows: its OpenAPI description and the prediction page.

Both are package resources (`resources/openapi.json`, `resources/page.html`), completed from
the feature schema and the model's metadata when the server starts: the schema is their one
source, never a second copy.
"""

from __future__ import annotations

import copy
import html
from collections.abc import Sequence
from functools import cache
from importlib.resources import files
from typing import Any

import orjson

from winequality import intervals, schema
from winequality.serving.http import JSON

__all__ = ["openapi_document", "render_page"]


@cache
def _resource(name: str) -> str:
    return (files("winequality") / "resources" / name).read_text(encoding="utf-8")


def openapi_document(
    model_uri: str,
    package_version: str,
    model_name: str = "wine-quality",
    interval_levels: Sequence[float] = (),
) -> dict[str, Any]:
    """resources/openapi.json and openapi_v2.json (the Open Inference Protocol's routes), with
    the model, its name on V2 routes, the version, the feature schema and the levels its
    intervals were calibrated at filled in."""
    document: dict[str, Any] = copy.deepcopy(orjson.loads(_resource("openapi.json")))
    v2 = _resource("openapi_v2.json").replace('"{{model_name}}"', orjson.dumps(model_name).decode())
    v2 = v2.replace('"{{feature_names}}"', orjson.dumps(schema.FEATURE_NAMES).decode()[1:-1])
    v2_parts = orjson.loads(v2)
    document["paths"].update(v2_parts["paths"])
    document["components"]["schemas"].update(v2_parts["components"]["schemas"])
    wine: dict[str, Any] = {
        "type": "object",
        "required": list(schema.FEATURE_NAMES),
        "properties": {
            f.name: {
                **_cell({"type": "number", "minimum": f.minimum, "maximum": f.maximum}),
                "description": f"{f.description} Unit: {f.unit}.",
                "example": f.typical,
            }
            for f in schema.FEATURES
        },
        "additionalProperties": True,
    }
    document["info"]["version"] = package_version
    document["info"]["description"] = (
        f"Scores red/white wines with {model_uri}. Inputs follow the model signature: the "
        "11 physicochemical features as doubles, within physical ranges."
    )
    components = document["components"]["schemas"]
    components["Wine"] = wine
    components["WineColumns"] = {
        "type": "object",
        "required": list(schema.FEATURE_NAMES),
        "properties": {
            name: {"type": "array", "items": spec} for name, spec in wine["properties"].items()
        },
    }
    split = document["paths"]["/invocations"]["post"]["requestBody"]["content"][JSON]["schema"]
    frame = split["oneOf"][0]["properties"]["dataframe_split"]["properties"]
    frame["columns"]["example"] = list(schema.FEATURE_NAMES)
    # a row holds a value per column, and the columns hold at least the features
    frame["data"]["items"] = {
        "type": "array",
        "minItems": len(schema.FEATURES),
        "items": _cell({"type": "number"}),
    }
    frame["data"]["example"] = [[f.typical for f in schema.FEATURES]]
    _document_intervals(document, list(interval_levels))
    return document


def _document_intervals(document: dict[str, Any], levels: list[float]) -> None:
    """The `interval` param (MLflow's `params`, V2's `parameters`) and the bounds it adds: only
    the levels this model was calibrated at (none: the param must be absent)."""
    interval: dict[str, Any] = {
        "enum": [*levels, None],
        "description": "Add the bounds of the prediction interval at this level (lower_LEVEL, "
        "upper_LEVEL); null: none. Only the levels this model was calibrated at.",
    }
    params = {
        "type": ["object", "null"],  # null: as absent (MLflow's server reads it so)
        "properties": {schema.INTERVAL_PARAM: interval},
        "additionalProperties": False,
    }
    request = document["paths"]["/invocations"]["post"]["requestBody"]["content"][JSON]["schema"]
    for form in request["oneOf"]:
        form["properties"]["params"] = params
    bounds = {name: {"type": "array", "items": {"type": "number"}}
              for level in levels for name in intervals.bound_names(level)}  # fmt: skip
    components = document["components"]["schemas"]
    components["Predictions"]["properties"].update(bounds)
    v2_parameters = components["V2InferenceRequest"]["properties"]["parameters"]
    v2_parameters["properties"] = {schema.INTERVAL_PARAM: interval}
    components["V2RequestOutput"]["properties"]["name"]["enum"] += list(bounds)


def _cell(number: dict[str, Any]) -> dict[str, Any]:
    """What a cell of MLflow's protocol may hold: a number, or what MLflow's server converts
    to one, a boolean (1 or 0) or a number written as text (the schema's notation)."""
    text = {"type": "string", "pattern": schema.NUMBER_TEXT}
    return {"anyOf": [number, {"type": "boolean"}, text]}


def render_page(metadata: dict[str, Any]) -> str:
    """resources/page.html (self-contained, no CDN): a form from the schema, prefilled with the
    model's input example; the score comes with its calibrated range when the model has one."""
    example = metadata.get("input_example") or {}
    rows = example.get("data") or [[f["typical"] for f in metadata["features"]]]
    fields = []
    for j, feature in enumerate(metadata["features"]):
        name = html.escape(feature["name"])
        fields.append(
            f'<label title="{html.escape(feature["description"])}">'
            f'<span class="name">{name}</span> <span class="unit">{html.escape(feature["unit"])}'
            # text, not number: a number input hides what was typed, and the server's
            # "not a number" is the clearer message
            f'</span><input type="text" inputmode="decimal" name="{name}" data-column="{name}" '
            f'data-min="{feature["minimum"]:g}" data-max="{feature["maximum"]:g}" '
            f'value="{rows[0][j]:g}" required>'
            f'<small class="error" data-error-for="{name}"></small></label>'
        )
    options = "".join(f'<option value="{i}">example row {i + 1}</option>' for i in range(len(rows)))
    # Raw JSON inside <script>: entities are not decoded there; only "</" must not appear.
    levels = metadata.get("interval_levels") or []
    # the range shown beside the score: 0.9's when the model has it, else its widest
    level = (0.9 if 0.9 in levels else max(levels)) if levels else None
    payload = {
        "rows": rows,
        "columns": [f["name"] for f in metadata["features"]],
        # the level, the answer's keys and the label, spelled here once (not by the script)
        "level": level,
        "bounds": list(intervals.bound_names(level)) if level is not None else None,
        "range": f"{level * 100:g} % range" if level is not None else None,
    }
    data = orjson.dumps(payload).decode().replace("</", "<\\/")
    page = _resource("page.html")
    for key, value in (
        ("fields", "\n".join(fields)),
        ("options", options),
        ("data", data),
        ("model", html.escape(str(metadata.get("model_uri")))),
    ):
        page = page.replace("{{" + key + "}}", value)
    return page

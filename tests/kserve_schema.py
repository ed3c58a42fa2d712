"""KServe's `InferenceService` as a JSON Schema, for checking manifests with `jsonschema`.

The source is KServe's own API types as its Python SDK (PyPI `kserve`) ships them: classes that
KServe generates from the Go types its CRDs are generated from, each with `openapi_types` (field
-> type), `attribute_map` (field -> JSON key) and a "must not be `None`" check per required
field; core types (`V1ObjectMeta`, `V1ResourceRequirements`, ...) come from the Kubernetes
client, generated the same way. The files are parsed, never imported (the SDK's own
dependencies, pandas < 3 among them, need not be installed): install them with
`pip install --no-deps --target .kserve-sdk -r deploy/kserve/requirements.txt`.

The schema is strict the way `kubectl apply --validate=strict` is: a field the types do not
have is an error, not silently dropped, so a misspelled `storageURI` is caught.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path
from typing import Any

API_VERSION = "serving.kserve.io/v1beta1"
KIND = "InferenceService"
_REQUIRED = re.compile(r"Invalid value for `(\w+)`, must not be `None`")
_SCALARS: dict[str, dict[str, Any]] = {
    "str": {"type": "string"},
    "int": {"type": "integer"},
    "float": {"type": "number"},
    "bool": {"type": "boolean"},
    "datetime": {"type": "string"},
    "date": {"type": "string"},
    "object": {},  # IntOrString, raw extensions: anything
    "ResourceQuantity": {"type": ["string", "number"]},  # "500m", 2
    "V1beta1MetricQuantity": {"type": ["string", "number"]},
}


def inference_service_schema(sdk: Path) -> dict[str, Any]:
    """The JSON Schema of an InferenceService, from the SDK files installed in `sdk`."""
    classes = _class_files(sdk / "kserve" / "models") | _class_files(
        sdk / "kubernetes" / "client" / "models"
    )
    definitions: dict[str, Any] = {}
    pending = ["V1beta1InferenceService"]
    while pending:
        name = pending.pop()
        if name in definitions:
            continue
        # KServe's SDK names a few core types by their Go package (K8sIoApiAppsV1Deployment…)
        found = re.sub(r"^K8sIoApi[A-Z][a-z]+(?=V\d)", "", name)
        if found not in classes:  # types neither SDK ships: anything (listed by the test)
            definitions[name] = {}
            continue
        definitions[name], referenced = _definition(classes[found], found)
        pending += referenced
    root = definitions["V1beta1InferenceService"]
    root["properties"]["apiVersion"] = {"const": API_VERSION}
    root["properties"]["kind"] = {"const": KIND}
    root["required"] = sorted({*root.get("required", ()), "apiVersion", "kind", "metadata", "spec"})
    return {"$ref": "#/$defs/V1beta1InferenceService", "$defs": definitions}


def _class_files(folder: Path) -> dict[str, Path]:
    """Each generated class by name, and the file that holds it."""
    found = {}
    for path in folder.glob("*.py"):
        for name in re.findall(r"^class (\w+)\(object\):", path.read_text(), re.M):
            found[name] = path
    return found


def _definition(path: Path, name: str) -> tuple[dict[str, Any], list[str]]:
    source = path.read_text()
    (cls,) = (n for n in ast.parse(source).body if isinstance(n, ast.ClassDef) and n.name == name)
    fields = {}
    for statement in cls.body:
        target = statement.targets[0] if isinstance(statement, ast.Assign) else None
        if isinstance(target, ast.Name) and target.id in ("openapi_types", "attribute_map"):
            fields[target.id] = ast.literal_eval(statement.value)  # type: ignore[attr-defined]
    types, keys = fields["openapi_types"], fields["attribute_map"]
    referenced: list[str] = []
    properties = {keys[attr]: _type(spec, referenced) for attr, spec in types.items()}
    definition: dict[str, Any] = {
        "type": "object",
        "properties": properties,
        "additionalProperties": False,
    }
    if name == "V1ResourceRequirements":  # quantities: the client says str, the API takes 1
        for key in ("limits", "requests"):
            properties[key]["additionalProperties"] = dict(_SCALARS["ResourceQuantity"])
    required = sorted({keys[attr] for attr in _REQUIRED.findall(source) if attr in keys})
    if required:
        definition["required"] = required
    return definition, referenced


def _type(spec: str, referenced: list[str]) -> dict[str, Any]:
    if spec in _SCALARS:
        return dict(_SCALARS[spec])
    if spec.startswith("list[") and spec.endswith("]"):
        return {"type": "array", "items": _type(spec[5:-1], referenced)}
    if spec.startswith("dict(") and spec.endswith(")"):
        _, value = spec[5:-1].split(", ", 1)
        return {"type": "object", "additionalProperties": _type(value, referenced)}
    referenced.append(spec)
    return {"$ref": f"#/$defs/{spec}"}

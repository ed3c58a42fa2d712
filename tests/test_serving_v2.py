"""The Open Inference Protocol (V2) over real HTTP: both request forms, every datatype we take,
the model and version routes, errors in the protocol's shape, and clients no one here wrote."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator

import httpx
import numpy as np
import pandas as pd
import pytest

from winequality import data
from winequality.schema import FEATURE_NAMES
from winequality.serving import create_app

from .conftest import ServerThread

COLUMNS = list(FEATURE_NAMES)
MODEL = "wine-test"  # the registered name of the session's model


@pytest.fixture(scope="module")
def v2_url(trained_model) -> Iterator[str]:
    from winequality.scoring import load_scorer

    uri = f"models:/{MODEL}@champion"
    scorer = load_scorer(uri, trained_model.tracking_uri)
    app = create_app(scorer, model_uri=uri, tracking_uri=trained_model.tracking_uri)
    with ServerThread(app) as url:
        yield url


@pytest.fixture(scope="module")
def http(v2_url) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=v2_url, timeout=60) as client:
        yield client


def matrix_request(frame: pd.DataFrame, datatype: str = "FP64") -> dict:
    values = frame[COLUMNS].to_numpy()
    return {
        "inputs": [
            {"name": "wines", "shape": list(values.shape), "datatype": datatype,
             "data": values.ravel().tolist()}
        ]
    }  # fmt: skip


def named_request(frame: pd.DataFrame, datatype: str = "FP64", column: bool = False) -> dict:
    n = len(frame)
    return {
        "inputs": [
            {"name": c, "shape": [n, 1] if column else [n], "datatype": datatype,
             "data": frame[c].tolist()}
            for c in COLUMNS
        ]
    }  # fmt: skip


def infer(
    http: httpx.Client, body: dict, path: str = f"/v2/models/{MODEL}/infer"
) -> httpx.Response:
    return http.post(path, json=body)


def test_health_and_metadata_answer_in_body_and_status(http) -> None:
    assert (http.get("/v2/health/live").status_code, http.get("/v2/health/live").json()) == (
        200,
        {"live": True},
    )
    assert http.get("/v2/health/ready").json() == {"ready": True}
    server = http.get("/v2").json()
    assert server["name"] == "winequality"
    assert server["extensions"] == []
    model = http.get(f"/v2/models/{MODEL}").json()
    assert model["name"] == MODEL
    assert model["versions"] == ["1"]
    assert [t["name"] for t in model["inputs"]] == COLUMNS
    assert {t["datatype"] for t in model["inputs"]} == {"FP64"}
    assert model["outputs"] == [{"name": "predictions", "datatype": "FP64", "shape": [-1]}]
    assert http.get(f"/v2/models/{MODEL}/ready").json() == {"name": MODEL, "ready": True}
    assert http.get(f"/v2/models/{MODEL}/versions/1/ready").json()["ready"] is True


def test_both_forms_score_every_red_wine_as_invocations_does(http, red) -> None:
    split = {"dataframe_split": {"columns": COLUMNS, "data": red[COLUMNS].to_numpy().tolist()}}
    expected = np.array(http.post("/invocations", json=split).json()["predictions"])
    for body in (matrix_request(red), named_request(red), named_request(red, column=True)):
        answer = infer(http, {**body, "id": "batch-1"})
        assert answer.status_code == 200, answer.text
        document = answer.json()
        assert (document["model_name"], document["model_version"], document["id"]) == (
            MODEL,
            "1",
            "batch-1",
        )
        (output,) = document["outputs"]
        assert (output["name"], output["datatype"], output["shape"]) == (
            "predictions",
            "FP64",
            [len(red)],
        )
        np.testing.assert_allclose(output["data"], expected, rtol=0, atol=1e-12)
        assert answer.headers["x-model-version"] == "1"


def test_narrower_datatypes_widen_exactly(http, red) -> None:
    frame = red.head(20)
    fp32 = infer(http, named_request(frame, "FP32")).json()["outputs"][0]["data"]
    as_sent = frame[COLUMNS].astype(np.float32).astype(np.float64)
    expected = infer(http, named_request(as_sent)).json()["outputs"][0]["data"]
    assert fp32 == expected  # the float32 the client sent, widened: bit for bit
    integers = frame[COLUMNS].round().astype(np.int64)
    for datatype in ("INT64", "INT32"):
        answer = infer(http, named_request(integers, datatype))
        assert answer.status_code in (200, 400), answer.text  # rounded wines may break a rule
    huge = named_request(frame.head(2), "INT64")
    huge["inputs"][6]["data"] = [2**53 + 1, 30]
    refused = infer(http, huge)
    assert refused.status_code == 400
    entries = refused.json()["errors"]
    assert {"row": 0, "column": "total sulfur dioxide"} in [
        {k: e[k] for k in ("row", "column")} for e in entries
    ]
    assert "2^53" in refused.json()["error"] + str(entries)


def test_a_version_route_scores_with_that_version(http, red, trained_model) -> None:
    answer = infer(http, matrix_request(red.head(3)), f"/v2/models/{MODEL}/versions/1/infer")
    assert answer.status_code == 200
    assert answer.json()["model_version"] == "1"
    missing = infer(http, matrix_request(red.head(3)), f"/v2/models/{MODEL}/versions/99/infer")
    assert missing.status_code == 404
    assert "no version 99" in missing.json()["error"]


ROW = [7.4, 0.7, 0, 1.9, 0.076, 11, 34, 0.9978, 3.51, 0.56, 9.4]  # the first red wine


def tensor(data: object, shape: tuple = (1, 11), datatype: object = "FP64", **more) -> dict:
    return {"name": "x", "shape": list(shape), "datatype": datatype, "data": data, **more}


def body(*inputs: object, **more: object) -> bytes:
    return json.dumps({"inputs": list(inputs), **more}).encode()


def without(key: str) -> dict:
    return {k: v for k, v in tensor(ROW).items() if k != key}


MALFORMED = {
    "not JSON": b"{nope",
    "nested too deep": b"[" * 50_000 + b"]" * 50_000,
    "a list, not an object": b"[]",
    "no inputs": b"{}",
    "empty inputs": body(),
    "an input that is not an object": body(3),
    "no name": body(without("name")),
    "no shape": body(without("shape")),
    "no data": body(without("data")),
    "negative shape": body(tensor(ROW, (-1, 11))),
    "BOOL": body(tensor([True] * 11, datatype="BOOL")),
    "BYTES": body(tensor(["a"] * 11, datatype="BYTES")),
    "data not a list": body(tensor(3)),
    "too few values": body(tensor([1, 2, 3], (2, 11))),
    "wrong width": body(tensor(ROW[:10], (1, 10))),
    "unknown output": body(tensor(ROW), outputs=[{"name": "quality"}]),
    "id not a string": body(tensor(ROW), id=3),
    "duplicate names": body(*[{**tensor([3.2], (1,)), "name": "pH"}] * 2),
    "a missing feature": body({**tensor([3.2], (1,)), "name": "pH"}),
    "null and text cells": body(tensor([None, *ROW[1:8], "acid", *ROW[9:]])),
    "out of range": body(tensor([*ROW[:8], 15.5, *ROW[9:]])),
    "a number as text": body(tensor(["7.4", *ROW[1:]])),  # (MLflow's protocol takes it; V2 not)
    "no rows, a tensor per feature": body(*[{**tensor([], (0,)), "name": n} for n in COLUMNS]),
    "no rows, one [0, 11] tensor": body(tensor([], (0, 11))),
    "shapes of floats": body(
        *[{**tensor([v], (1.0,)), "name": n} for n, v in zip(COLUMNS, ROW, strict=True)]
    ),
    "true among numbers": body(tensor([True, *ROW[1:]])),
}


@pytest.mark.parametrize("case", list(MALFORMED))
def test_malformed_requests_are_4xx_with_an_error_and_no_trace(http, case) -> None:
    answer = http.post(
        f"/v2/models/{MODEL}/infer",
        content=MALFORMED[case],
        headers={"content-type": "application/json"},
    )
    assert 400 <= answer.status_code < 500, (case, answer.status_code, answer.text)
    document = answer.json()
    assert isinstance(document["error"], str)
    assert document["error"]
    assert "Traceback" not in answer.text


def test_data_nested_deeper_than_numpy_reads_are_flattened_not_a_crash(http) -> None:
    """1,000 levels of brackets round each feature's one value (orjson reads up to 1,024):
    past numpy's 64 dimensions and near Python's recursion limit, read as the one value."""
    deep = (
        b'{"inputs": ['
        + b",".join(
            b'{"name": "%s", "shape": [1], "datatype": "FP64", "data": %s%s%s}'
            % (n.encode(), b"[" * 1000, str(v).encode(), b"]" * 1000)
            for n, v in zip(COLUMNS, ROW, strict=True)
        )
        + b"]}"
    )
    answer = http.post(
        f"/v2/models/{MODEL}/infer", content=deep, headers={"content-type": "application/json"}
    )
    assert answer.status_code == 200, answer.text
    assert (
        answer.json()["outputs"][0]["data"]
        == infer(http, named_request(pd.DataFrame([ROW], columns=COLUMNS))).json()["outputs"][0][
            "data"
        ]
    )


def test_cells_are_named_by_row_and_column(http) -> None:
    answer = http.post(
        f"/v2/models/{MODEL}/infer",
        content=MALFORMED["null and text cells"],
        headers={"content-type": "application/json"},
    )
    assert answer.status_code == 400
    where = {(e["row"], e["column"]) for e in answer.json()["errors"]}
    assert {(0, "fixed acidity"), (0, "pH")} <= where


@pytest.mark.parametrize("datatype", ["FP64", "FP32"])
@pytest.mark.parametrize("column", [False, True])
def test_the_named_form_names_bad_cells_by_row_and_column(http, red, datatype, column) -> None:
    """One tensor per feature, as MLServer's and KServe's examples send it (decoded in one numpy
    call when every cell is a number): bad cells are still named, every one."""
    request = named_request(red.head(3), datatype, column)
    request["inputs"][8]["data"][1] = 15.5  # pH
    request["inputs"][0]["data"][2] = float("nan")  # fixed acidity (json writes NaN)
    answer = http.post(
        f"/v2/models/{MODEL}/infer",
        content=json.dumps(request).encode(),
        headers={"content-type": "application/json"},
    )
    assert answer.status_code == 400
    where = {(e["row"], e["column"], e["reason"][:7]) for e in answer.json()["errors"]}
    assert where == {(1, "pH", "outside"), (2, "fixed acidity", "missing")}


def test_every_status_on_a_v2_route_has_the_protocol_shape(http, trained_model, red) -> None:
    assert http.get("/v2/models/nope").status_code == 404
    assert "error" in http.get("/v2/models/nope").json()
    assert http.get("/v2/models/x/y/z").json()["error"]  # the router's 404
    wrong_method = http.get(f"/v2/models/{MODEL}/infer")
    assert wrong_method.status_code == 405
    assert wrong_method.headers["allow"] == "POST"  # RFC 9110
    assert "error" in wrong_method.json()
    binary = http.post(
        f"/v2/models/{MODEL}/infer",
        content=b"{}",
        headers={"Inference-Header-Content-Length": "2", "content-type": "application/json"},
    )
    assert binary.status_code == 400
    assert "binary_data=False" in binary.json()["error"]
    wrong_type = http.post(
        f"/v2/models/{MODEL}/infer", content=b"a", headers={"content-type": "text/csv"}
    )
    assert wrong_type.status_code == 415
    assert "error" in wrong_type.json()


def test_the_door_guards_v2_but_leaves_its_probes_open(scorer, red) -> None:
    with (
        ServerThread(create_app(scorer, token="s3cret")) as url,
        httpx.Client(base_url=url) as http,
    ):
        assert http.get("/v2/health/live").status_code == 200
        assert http.get("/v2/health/ready").status_code == 200
        refused = http.post("/v2/models/wine-quality/infer", json=matrix_request(red.head(1)))
        assert refused.status_code == 401
        assert "bearer token" in refused.json()["error"]


def test_metrics_count_v2_routes_by_template(http, red) -> None:
    infer(http, matrix_request(red.head(2)))
    text = http.get("/metrics").text
    assert 'route="/v2/models/{name}/infer",status="200"' in text
    assert f'route="/v2/models/{MODEL}/infer"' not in text  # never one label per name


def test_rows_beyond_the_training_range_are_named_in_parameters(http) -> None:
    white = data.load(wine="white").frame
    answer = infer(http, matrix_request(white.head(300)))
    assert answer.status_code == 200
    warnings = answer.json()["parameters"]["warnings"]
    assert "outside the training range" in warnings[0]["reason"]


# --- clients no one here wrote -----------------------------------------------------------------


def test_tritonclient_speaks_to_the_server(v2_url, http, red) -> None:
    import tritonclient.http as triton
    from tritonclient.utils import InferenceServerException

    client = triton.InferenceServerClient(url=v2_url.removeprefix("http://"))
    assert client.is_server_live()
    assert client.is_server_ready()
    assert client.is_model_ready(MODEL)
    metadata = client.get_model_metadata(MODEL)
    assert [t["name"] for t in metadata["inputs"]] == COLUMNS
    frame = red.head(50)
    split = {"dataframe_split": {"columns": COLUMNS, "data": frame[COLUMNS].to_numpy().tolist()}}
    expected = np.array(http.post("/invocations", json=split).json()["predictions"])

    matrix = triton.InferInput("wines", [len(frame), 11], "FP64")
    matrix.set_data_from_numpy(frame[COLUMNS].to_numpy(np.float64), binary_data=False)
    wanted = triton.InferRequestedOutput("predictions", binary_data=False)
    result = client.infer(MODEL, [matrix], outputs=[wanted], request_id="t-1")
    np.testing.assert_allclose(result.as_numpy("predictions"), expected, rtol=0, atol=1e-12)
    assert result.get_response()["id"] == "t-1"

    named = []
    for column in COLUMNS:
        one = triton.InferInput(column, [len(frame)], "FP32")
        one.set_data_from_numpy(frame[column].to_numpy(np.float32), binary_data=False)
        named.append(one)
    result = client.infer(MODEL, named)  # no outputs named: tritonclient asks for binary ones
    widened = frame[COLUMNS].astype(np.float32).astype(np.float64)
    split32 = {"dataframe_split": {"columns": COLUMNS, "data": widened.to_numpy().tolist()}}
    expected32 = np.array(http.post("/invocations", json=split32).json()["predictions"])
    np.testing.assert_allclose(result.as_numpy("predictions"), expected32, rtol=0, atol=1e-12)

    binary = triton.InferInput("wines", [len(frame), 11], "FP64")
    binary.set_data_from_numpy(frame[COLUMNS].to_numpy(np.float64))  # tritonclient's default
    with pytest.raises(InferenceServerException, match="binary_data=False"):
        client.infer(MODEL, [binary])
    client.close()


def test_the_openapi_document_is_valid_and_describes_both_protocols(http) -> None:
    from openapi_spec_validator import validate

    document = http.get("/openapi.json").json()
    validate(document)  # raises on any error
    assert document["openapi"].startswith("3.1")
    for path in ("/invocations", "/v2", "/v2/health/ready", "/v2/models/{name}/infer"):
        assert path in document["paths"], path
    name = document["paths"]["/v2/models/{name}/infer"]["post"]["parameters"][0]
    assert name["schema"]["enum"] == [MODEL]
    feature = document["components"]["schemas"]["V2FeatureInput"]
    assert feature["properties"]["name"]["enum"] == COLUMNS


def test_the_generated_open_inference_client_speaks_to_the_server(v2_url, http, red) -> None:
    from open_inference.openapi.client import OpenInferenceClient
    from open_inference.openapi.types import InferenceRequest

    transport = httpx.Client(timeout=60)  # ours, so that it is closed
    client = OpenInferenceClient(base_url=v2_url, httpx_client=transport)
    client.check_server_liveness()
    client.check_server_readiness()
    client.check_model_readiness(MODEL)
    client.check_model_version_readiness(MODEL, "1")
    assert client.read_server_metadata().name == "winequality"
    assert [t.name for t in client.read_model_metadata(MODEL).inputs] == COLUMNS
    frame = red.head(20)
    split = {"dataframe_split": {"columns": COLUMNS, "data": frame[COLUMNS].to_numpy().tolist()}}
    expected = np.array(http.post("/invocations", json=split).json()["predictions"])
    request = InferenceRequest(  # type: ignore[call-arg]  # (pydantic v1: optional fields)
        inputs=[
            {
                "name": "wines",
                "shape": [len(frame), 11],
                "datatype": "FP64",
                "data": frame[COLUMNS].to_numpy().ravel().tolist(),
            }
        ]
    )
    for answer in (
        client.model_infer(MODEL, request=request),
        client.model_version_infer(MODEL, "1", request=request),
    ):
        assert answer.model_name == MODEL
        data = answer.outputs[0].data.__root__  # the generated model wraps the list
        np.testing.assert_allclose(data, expected, rtol=0, atol=1e-12)
    transport.close()


def test_found_by_schemathesis_a_datatype_that_is_not_a_string_is_a_400(http) -> None:
    answer = http.post(
        f"/v2/models/{MODEL}/infer",
        json={"inputs": [{"name": "x", "shape": [1, 11], "datatype": {}, "data": ROW}]},
    )
    assert answer.status_code == 400  # was a 500: a dict is not hashable


def test_found_by_schemathesis_control_characters_never_reach_a_header(http) -> None:
    record = dict(zip(COLUMNS, ROW, strict=True)) | {"\u001a\n": 1}  # an extra column
    answer = http.post("/invocations", json={"dataframe_records": [record]})
    assert answer.status_code == 200  # was a crash: uvicorn refused the warning header
    assert "unknown column" in answer.headers["x-winequality-warnings"]


@pytest.mark.slow
def test_schemathesis_finds_no_failure_with_every_check(v2_url) -> None:
    """schemathesis (a client no one here wrote) against /openapi.json, both protocols, every
    operation, 500 examples each, every check: no server error, every answer documented, and
    the document as tight as the server (what it calls valid is accepted, what it calls
    invalid is refused). Bodies the document calls valid are mended to what the server
    checks beyond JSON Schema by tests/schemathesis_hooks.py."""
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    command = [
        str(Path(sys.executable).with_name("schemathesis")), "run", f"{v2_url}/openapi.json",
        "--checks", "all", "--max-examples", "500",
        "--phases", "examples,coverage,fuzzing", "--no-color", "--seed", "40",
    ]  # fmt: skip
    env = {**os.environ, "SCHEMATHESIS_HOOKS": "tests.schemathesis_hooks", "PYTHONPATH": str(root)}
    done = subprocess.run(command, cwd=root, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-5000:]
    assert "No issues found" in done.stdout


def test_found_by_schemathesis_an_fp32_cell_beyond_float32_is_refused_quietly(http) -> None:
    data = [*ROW[:-1], 1e300]  # read as float32: inf (numpy warned, and tests make that a 500)
    answer = http.post(
        f"/v2/models/{MODEL}/infer",
        json={"inputs": [{"name": "x", "shape": [1, 11], "datatype": "FP32", "data": data}]},
    )
    assert answer.status_code == 400
    assert "alcohol" in answer.text

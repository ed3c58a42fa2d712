"""The REST server over real HTTP: protocol, errors, fuzzing, concurrency, MLflow parity."""

from __future__ import annotations

import io
import json
import logging
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from winequality.schema import FEATURE_NAMES
from winequality.serving import create_app

from .conftest import ServerThread, close_pipes, free_port, wait_for

COLUMNS = list(FEATURE_NAMES)
ALLOWED_STATUSES = {200, 400, 413, 415, 422}


@pytest.fixture(scope="module")
def base_url(scorer) -> Iterator[str]:
    with ServerThread(create_app(scorer, max_body_bytes=2_000_000)) as url:
        yield url


@pytest.fixture(scope="module")
def client(base_url) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=base_url, timeout=30) as http:
        yield http


@pytest.fixture(scope="module")
def wines(red_csv: Path) -> pd.DataFrame:
    return pd.read_csv(red_csv, sep=";")[COLUMNS].head(25)


def bodies(frame: pd.DataFrame) -> dict[str, tuple[str, bytes]]:
    records = frame.to_dict(orient="records")
    return {
        "dataframe_split": (
            "application/json",
            json.dumps(
                {"dataframe_split": {"columns": COLUMNS, "data": frame.to_numpy().tolist()}}
            ).encode(),
        ),
        "dataframe_records": (
            "application/json",
            json.dumps({"dataframe_records": records}).encode(),
        ),
        "instances": ("application/json", json.dumps({"instances": records}).encode()),
        "inputs": (
            "application/json",
            json.dumps({"inputs": {c: frame[c].tolist() for c in COLUMNS}}).encode(),
        ),
        "csv": ("text/csv", frame.to_csv(index=False).encode()),
        "csv-charset": ("text/csv; charset=utf-8", frame.to_csv(index=False).encode()),
        "csv-uci-layout": ("text/csv", frame.to_csv(index=False, sep=";").encode()),
        "parquet": ("application/vnd.apache.parquet", _parquet(frame)),
    }


def _parquet(frame: pd.DataFrame) -> bytes:
    buffer = io.BytesIO()
    frame.to_parquet(buffer)
    return buffer.getvalue()


def test_every_protocol_form_scores_like_mlflow(client, wines, mlflow_pyfunc) -> None:
    expected = mlflow_pyfunc.predict(wines.astype("float64"))
    for form, (content_type, body) in bodies(wines).items():
        answer = client.post("/invocations", content=body, headers={"Content-Type": content_type})
        assert answer.status_code == 200, (form, answer.text)
        assert list(answer.json()) == ["predictions"]
        np.testing.assert_allclose(answer.json()["predictions"], expected, rtol=0, atol=1e-9)


def test_informational_endpoints(client, trained_model) -> None:
    assert client.get("/ping").status_code == 200
    health = client.get("/health").json()
    assert health == {
        "status": "ok",
        "model_loaded": True,
        "ready": True,
        "draining": False,
        "model_uri": trained_model.model_uri,
        "model_version": health["model_version"],
        "loaded_at": health["loaded_at"],
        "follows_registry": False,  # a runs:/ URI names no alias to follow
        "last_reload_failure": None,
        "pid": os.getpid(),  # the server runs in a thread of this process
    }
    assert health["model_version"].startswith("m-")  # no registry version: the model id
    assert set(client.get("/version").json()) == {"winequality", "mlflow", "scikit-learn"}
    meta = client.get("/metadata").json()
    assert meta["run_id"] == trained_model.result.run_id
    assert [
        c["name"] for c in meta["signature"]["inputs"] and json.loads(meta["signature"]["inputs"])
    ] == COLUMNS
    assert len(meta["input_example"]["data"]) == 5
    ph = next(f for f in meta["features"] if f["name"] == "pH")
    assert (ph["minimum"], ph["maximum"], ph["unit"]) == (0, 14, "pH")
    spec = client.get("/openapi.json").json()
    wine = spec["components"]["schemas"]["Wine"]
    assert wine["required"] == COLUMNS
    number, boolean, text = wine["properties"]["alcohol"]["anyOf"]
    assert (number["maximum"], boolean["type"], text["type"]) == (100, "boolean", "string")
    assert set(spec["paths"]["/invocations"]["post"]["responses"]) == {
        "200",
        "400",
        "413",
        "415",
        "422",
        "500",
    }
    page = client.get("/")
    assert page.headers["content-type"].startswith("text/html")
    assert "http://" not in page.text
    assert "https://" not in page.text
    assert page.text.count('inputmode="decimal"') == 11


def test_schema_violations_are_422_listing_every_cell(client, wines) -> None:
    data = wines.head(3).astype(object).to_numpy().tolist()
    data[0][COLUMNS.index("pH")] = 15
    data[1][COLUMNS.index("alcohol")] = None
    data[2][COLUMNS.index("density")] = "heavy"
    data[2][COLUMNS.index("chlorides")] = 1e308
    answer = client.post(
        "/invocations", json={"dataframe_split": {"columns": COLUMNS, "data": data}}
    )
    assert answer.status_code == 422
    body = answer.json()
    assert body["error_code"] == "INVALID_INPUT"
    assert "4 problems" in body["message"]
    found = {(e["row"], e["column"]) for e in body["errors"]}
    assert found == {(0, "pH"), (1, "alcohol"), (2, "density"), (2, "chlorides")}
    assert all(e["reason"] for e in body["errors"])


@pytest.mark.parametrize(
    ("content_type", "body", "status", "code"),
    [
        ("application/json", b"{not json", 400, "BAD_REQUEST"),
        ("application/json", b'{"columns": []}', 400, "BAD_REQUEST"),
        ("application/json", b'{"inputs": [[7.4, 0.7]]}', 400, "BAD_REQUEST"),
        ("text/csv", b"", 400, "BAD_REQUEST"),
        ("text/csv", b'"pH";"alcohol"\n3.1;9.4\n', 422, "INVALID_INPUT"),
        ("text/plain", b"7.4", 415, "UNSUPPORTED_MEDIA_TYPE"),
        ("application/json; charset=latin-1", b"{}", 415, "UNSUPPORTED_MEDIA_TYPE"),
        ("application/json; format=pandas-split", b"{}", 415, "UNSUPPORTED_MEDIA_TYPE"),
        ("application/json", b"x" * 2_000_001, 413, "PAYLOAD_TOO_LARGE"),
    ],
)
def test_bad_requests_get_json_errors(client, content_type, body, status, code) -> None:
    answer = client.post("/invocations", content=body, headers={"Content-Type": content_type})
    assert answer.status_code == status
    assert answer.json()["error_code"] == code
    assert answer.json()["message"]


def test_a_chunked_body_over_the_limit_is_413(client) -> None:
    def chunks():
        for _ in range(30):
            yield b" " * 100_000

    answer = client.post(
        "/invocations", content=chunks(), headers={"Content-Type": "application/json"}
    )
    assert answer.status_code == 413


def test_a_bug_is_a_logged_500_with_a_request_id_and_no_trace(scorer, wines, caplog) -> None:
    class Broken:
        warmed = False

        def __getattr__(self, name):
            return getattr(scorer, name)

        def predict(self, features):
            if not self.warmed:  # the start's warm-up batch passes; requests meet the bug
                self.warmed = True
                return scorer.predict(features)
            raise ZeroDivisionError("a bug in the scorer")

    broken = Broken()
    app = create_app(broken)
    with ServerThread(app) as url:
        answer = httpx.post(
            f"{url}/invocations",
            json={
                "dataframe_split": {"columns": COLUMNS, "data": wines.head(1).to_numpy().tolist()}
            },
        )
    assert answer.status_code == 500
    body = answer.json()
    assert body["error_code"] == "INTERNAL_ERROR"
    assert body["request_id"] in body["message"]
    assert answer.headers["x-request-id"] == body["request_id"]
    assert "ZeroDivisionError" not in answer.text
    assert "Traceback" not in answer.text
    logged = [r for r in caplog.records if r.name == "winequality.serve"]
    assert logged
    assert body["request_id"] in logged[0].getMessage()
    assert logged[0].exc_info
    assert logged[0].exc_info[0] is ZeroDivisionError


def test_unknown_paths_and_methods(client) -> None:
    assert client.get("/nope").json()["error_code"] == "NOT_FOUND"
    answer = client.get("/invocations")
    assert answer.status_code == 405
    assert answer.json()["error_code"] == "METHOD_NOT_ALLOWED"


def test_out_of_range_scoring_when_allowed_carries_a_warning(scorer, wines) -> None:
    with ServerThread(create_app(scorer, allow_out_of_range=True)) as url:
        data = wines.head(1).to_numpy().tolist()
        data[0][COLUMNS.index("alcohol")] = 120.0
        answer = httpx.post(
            f"{url}/invocations",
            json={
                "dataframe_split": {"columns": [*COLUMNS, "colour"], "data": [data[0] + ["red"]]}
            },
        )
    assert answer.status_code == 200
    warning = answer.headers["x-winequality-warnings"]
    assert "colour: unknown column" in warning
    assert "alcohol" in warning


NUMBER_TEXTS = {  # text in a cell: a number, as the document states it?
    **dict.fromkeys(["7.4", " 7.4\n", "+7.4", "7.", ".74e1"], True),
    **dict.fromkeys(["1_0", "\u0667", "infinity", "0x7", "7,4"], False),  # float() takes 3
}


def test_numbers_written_as_text_are_read_in_the_documented_notation_only(client, wines) -> None:
    """MLflow's protocol takes a number written as text; the server and its OpenAPI document
    agree on which text is a number (the schema's NUMBER_TEXT), so that "1_0" or an Arabic-Indic
    seven, which Python's float() would take, are refused by row and column."""
    import jsonschema

    cell = client.get("/openapi.json").json()["components"]["schemas"]["Wine"]["properties"]
    documented = jsonschema.Draft202012Validator(cell["fixed acidity"])
    rest = wines.head(1).to_numpy().tolist()[0][1:]

    def scored(first: object) -> httpx.Response:
        body = {"dataframe_split": {"columns": COLUMNS, "data": [[first, *rest]]}}
        return client.post("/invocations", json=body)

    for text, is_number in NUMBER_TEXTS.items():
        answer = scored(text)
        assert documented.is_valid(text) == is_number, text
        if is_number:
            assert answer.status_code == 200, (text, answer.text)
            assert answer.json() == scored(float(text)).json()
        else:
            assert answer.status_code == 422, (text, answer.text)
            (error,) = answer.json()["errors"]
            assert (error["row"], error["column"], error["reason"]) == (
                0, "fixed acidity", "not a number"
            )  # fmt: skip


# --- fuzzing: thousands of generated bodies, never a 5xx, never a trace ----------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.floats(allow_nan=False) | st.integers() | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
cells = st.one_of(
    st.floats(allow_nan=False),
    st.integers(),
    st.text(max_size=5),
    st.none(),
    st.booleans(),
    st.lists(st.integers(), max_size=2),
)
near_valid = st.builds(
    lambda form, names, rows: (
        {form: {"columns": names, "data": rows}}
        if form == "dataframe_split"
        else {form: [dict(zip(names, r, strict=False)) for r in rows]}
    ),
    st.sampled_from(["dataframe_split", "dataframe_records", "instances", "inputs"]),
    st.one_of(
        st.just(COLUMNS),
        st.permutations(COLUMNS),
        st.lists(st.sampled_from([*COLUMNS, "quality", "x"]), max_size=13),
    ),
    st.lists(st.lists(cells, min_size=0, max_size=13), max_size=4),
)
raw_bodies = st.one_of(
    near_valid.map(lambda b: json.dumps(b).encode()),
    json_values.map(lambda b: json.dumps(b).encode()),
    st.binary(max_size=64),
)


@pytest.mark.slow
@given(
    body=raw_bodies,
    content_type=st.sampled_from(
        [
            "application/json",
            "application/json",
            "application/json",
            "text/csv",
            "application/vnd.apache.parquet",
        ]
    ),
)
@settings(
    max_examples=3000,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
def test_fuzzed_bodies_never_crash_the_server(client, body, content_type) -> None:
    answer = client.post("/invocations", content=body, headers={"Content-Type": content_type})
    assert answer.status_code in ALLOWED_STATUSES, answer.text
    assert "Traceback" not in answer.text
    assert 'File "' not in answer.text
    payload = answer.json()
    assert ("predictions" in payload) == (answer.status_code == 200)


# --- concurrency ---------------------------------------------------------------------------


def test_eight_clients_get_the_answers_one_client_gets(base_url, red_csv) -> None:
    frame = pd.read_csv(red_csv, sep=";")[COLUMNS]
    batches = [frame.iloc[i * 7 : (i + 1) * 7 + i] for i in range(64)]

    def body(batch):
        return {"dataframe_split": {"columns": COLUMNS, "data": batch.to_numpy().tolist()}}

    with httpx.Client(base_url=base_url) as single:
        alone = [single.post("/invocations", json=body(b)).json() for b in batches]

    def worker(index: int) -> list[dict]:
        with httpx.Client(base_url=base_url) as http:
            return [
                http.post("/invocations", json=body(batches[k])).json() for k in range(index, 64, 8)
            ]

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(worker, range(8)))
    for index, answers in enumerate(results):
        assert answers == [alone[k] for k in range(index, 64, 8)]


# --- the real processes ----------------------------------------------------------------------


def server_env(trained_model) -> dict[str, str]:
    return {
        **os.environ,
        "MLFLOW_TRACKING_URI": trained_model.tracking_uri,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
    }


@pytest.mark.slow
def test_same_answers_as_mlflows_own_scoring_server(trained_model, wines, client) -> None:
    port = free_port()
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "mlflow",
            "models",
            "serve",
            "-m",
            trained_model.model_uri,
            "-p",
            str(port),
            "--env-manager",
            "local",
            "-w",
            "1",
        ],
        env=server_env(trained_model),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        wait_for(f"http://127.0.0.1:{port}", process)
        for form, (content_type, body) in bodies(wines).items():
            if form in ("parquet", "csv-uci-layout"):  # beyond MLflow's protocol
                continue
            headers = {"Content-Type": content_type}
            theirs = httpx.post(
                f"http://127.0.0.1:{port}/invocations", content=body, headers=headers, timeout=30
            )
            ours = client.post("/invocations", content=body, headers=headers)
            assert theirs.status_code == ours.status_code == 200, (form, theirs.text)
            np.testing.assert_allclose(
                ours.json()["predictions"], theirs.json()["predictions"], rtol=0, atol=1e-9
            )
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=30)
        close_pipes(process)


def test_a_body_nested_too_deep_is_a_400_and_logs_no_trace(client, caplog) -> None:
    deep = b"[" * 50_000 + b"]" * 50_000  # orjson refuses it; Python's parser would recurse
    with caplog.at_level(logging.ERROR, logger="winequality.serve"):
        answer = client.post(
            "/invocations", content=deep, headers={"content-type": "application/json"}
        )
    assert answer.status_code == 400
    assert "not valid JSON" in answer.json()["message"]
    assert [r for r in caplog.records if r.levelno >= logging.ERROR] == []

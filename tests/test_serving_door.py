"""The door and the record: the bearer token, the access log, refused cells, big bodies."""

from __future__ import annotations

import io
import json
import math
import os
import re
import socket

import httpx
from typer.testing import CliRunner

from winequality.cli import app
from winequality.schema import FEATURE_NAMES
from winequality.serving import create_app

from .conftest import ServerThread
from .conftest import split_body as body

COLUMNS = list(FEATURE_NAMES)
runner = CliRunner()
NAME = "wine-follow"


# --- the door ---------------------------------------------------------------------------------


def test_a_token_guards_everything_but_the_probes(scorer, red) -> None:
    with (
        ServerThread(create_app(scorer, token="s3cret")) as url,
        httpx.Client(base_url=url) as http,
    ):
        for path in ("/metadata", "/metrics", "/drift", "/"):
            refused = http.get(path)
            assert refused.status_code == 401, path
            assert refused.json()["error_code"] == "UNAUTHORIZED"
            assert refused.headers["www-authenticate"].startswith("Bearer")
        assert http.post("/invocations", json=body(red.head(1))).status_code == 401
        wrong = {"Authorization": "Bearer s3creT"}
        assert http.post("/invocations", json=body(red.head(1)), headers=wrong).status_code == 401
        right = {"Authorization": "Bearer s3cret"}
        assert http.post("/invocations", json=body(red.head(1)), headers=right).status_code == 200
        assert http.get("/metrics", headers=right).status_code == 200
        assert http.get("/ping").status_code == 200
        assert http.get("/health").status_code == 200
        seen = [http.get(p, headers=right).text for p in ("/metadata", "/health", "/", "/metrics")]
        assert not any("s3cret" in text for text in seen)  # never echoed


def test_the_token_stays_out_of_the_environment_and_of_the_settings_repr(monkeypatch) -> None:
    from winequality.cli.serve import TOKEN_ENV, _read_token
    from winequality.serving import ServerSettings

    monkeypatch.setenv(TOKEN_ENV, "s3cret")
    assert _read_token(None) == "s3cret"
    assert TOKEN_ENV not in os.environ  # read once: no worker or child inherits it
    assert "s3cret" not in repr(ServerSettings("models:/x@champion", token="s3cret"))


def test_cli_reads_the_token_file_and_warns_on_an_open_network_address(
    trained_model, tmp_path
) -> None:
    empty = tmp_path / "token"
    empty.write_text("\n")
    answer = runner.invoke(
        app, ["serve", "--model", trained_model.model_uri, "--token-file", str(empty)]
    )
    assert answer.exit_code == 2
    assert "is empty" in answer.output


def test_every_request_is_one_json_access_log_line(scorer, red) -> None:
    stream = io.BytesIO()
    with (
        ServerThread(create_app(scorer, access_log=stream)) as url,
        httpx.Client(base_url=url) as http,
    ):
        http.post("/invocations", json=body(red.head(3)), headers={"X-Request-Id": "abc-1"})
        http.get("/ping")
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]  # flushed at shutdown
    assert [(line["method"], line["path"], line["status"]) for line in lines] == [
        ("POST", "/invocations", 200),
        ("GET", "/ping", 200),
    ]
    first = lines[0]
    assert set(first) == {
        "time",
        "method",
        "path",
        "status",
        "ms",
        "rows",
        "model_version",
        "request_id",
    }
    assert (first["rows"], first["request_id"]) == (3, "abc-1")
    assert first["model_version"].startswith("m-")
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", first["time"])
    assert lines[1]["request_id"] != "abc-1"


def test_nan_and_infinity_are_parsed_then_refused_by_row_and_column(scorer, red) -> None:
    rows = red.head(3)[COLUMNS].to_numpy().tolist()
    rows[1][COLUMNS.index("pH")] = math.nan
    rows[2][COLUMNS.index("alcohol")] = math.inf
    text = json.dumps({"dataframe_split": {"columns": COLUMNS, "data": rows}})  # NaN, Infinity
    assert "NaN" in text
    assert "Infinity" in text
    with ServerThread(create_app(scorer)) as url:
        answer = httpx.post(
            f"{url}/invocations", content=text, headers={"Content-Type": "application/json"}
        )
    assert answer.status_code == 422, answer.text
    cells = {(e["row"], e["column"]) for e in answer.json()["errors"]}
    assert cells == {(1, "pH"), (2, "alcohol")}


def test_a_client_that_sends_too_much_before_reading_gets_a_readable_413(scorer) -> None:
    oversized = b'{"dataframe_split": {"columns": [], "data": [' + b"1," * 300_000 + b"1]}}"
    with ServerThread(create_app(scorer, max_body_bytes=100_000)) as url:
        port = int(url.rsplit(":", 1)[1])
        for declared in (True, False):  # Content-Length, then chunked
            with socket.create_connection(("127.0.0.1", port)) as connection:
                head = "POST /invocations HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                if declared:
                    connection.sendall(f"{head}Content-Length: {len(oversized)}\r\n\r\n".encode())
                    connection.sendall(oversized)  # all of it, before reading anything
                else:
                    connection.sendall(f"{head}Transfer-Encoding: chunked\r\n\r\n".encode())
                    for start in range(0, len(oversized), 65536):
                        piece = oversized[start : start + 65536]
                        connection.sendall(f"{len(piece):x}\r\n".encode() + piece + b"\r\n")
                    connection.sendall(b"0\r\n\r\n")
                answer = b""
                while b"\r\n\r\n" not in answer or not answer.rstrip().endswith(b"}"):
                    chunk = connection.recv(65536)
                    if not chunk:
                        break
                    answer += chunk
            assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
            assert b"PAYLOAD_TOO_LARGE" in answer or b"limit" in answer

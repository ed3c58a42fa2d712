"""`serve` in production: it follows the registry, exports metrics, watches drift, guards its
door; and `drift` / `predict` on a batch from another population (white wines)."""

from __future__ import annotations

import io
import json
import math
import re
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import mlflow
import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from winequality import data
from winequality.cli import DRIFT_EXIT, app
from winequality.drift import PROFILE_FILE
from winequality.predict import FLAG_COLUMN, predict_file
from winequality.schema import FEATURE_NAMES
from winequality.scoring import load_scorer
from winequality.serving import create_app
from winequality.serving.metrics import SETTLE_SECONDS

from .conftest import ServerThread, close_pipes, free_port, wait_for

COLUMNS = list(FEATURE_NAMES)
runner = CliRunner()
NAME = "wine-follow"


def body(frame: pd.DataFrame) -> dict:
    return {"dataframe_split": {"columns": COLUMNS, "data": frame[COLUMNS].to_numpy().tolist()}}


@pytest.fixture(scope="module")
def red() -> pd.DataFrame:
    return data.load().frame


@pytest.fixture(scope="module")
def white() -> pd.DataFrame:
    return data.load(wine="white").frame


@pytest.fixture(scope="module")
def versions(trained_model) -> dict[str, str]:
    """`wine-follow` v1-v4 (the trained model), v5 a model winequality refuses (pickle)."""
    from sklearn.linear_model import ElasticNet

    mlflow.set_tracking_uri(trained_model.tracking_uri)
    client = mlflow.MlflowClient(trained_model.tracking_uri)
    for _ in range(4):
        mlflow.register_model(trained_model.model_uri, NAME)
    with mlflow.start_run():
        unsafe = mlflow.sklearn.log_model(
            ElasticNet().fit(np.ones((3, 11)), [5, 6, 7]),
            name="unsafe",
            serialization_format=mlflow.sklearn.SERIALIZATION_FORMAT_CLOUDPICKLE,
        )
    broken = mlflow.register_model(unsafe.model_uri, NAME).version
    client.set_registered_model_alias(NAME, "champion", "1")
    return {"broken": str(broken)}


@pytest.fixture
def alias(trained_model, versions) -> Iterator[mlflow.MlflowClient]:
    client = mlflow.MlflowClient(trained_model.tracking_uri)
    client.set_registered_model_alias(NAME, "champion", "1")
    yield client
    client.set_registered_model_alias(NAME, "champion", "1")


def follower_app(trained_model, refresh: float, **options):
    uri = f"models:/{NAME}@champion"
    scorer = load_scorer(uri, trained_model.tracking_uri)
    return create_app(
        scorer, model_uri=uri, refresh=refresh, tracking_uri=trained_model.tracking_uri, **options
    )


def metric(text: str, name: str, **labels: str) -> float:
    """The value of one sample in Prometheus's text format (0 when absent)."""
    wanted = ",".join(f'{k}="{v}"' for k, v in labels.items())
    pattern = re.escape(name) + (r"\{" + re.escape(wanted) + r"\}" if labels else "") + r" (\S+)"
    found = re.search(r"^" + pattern + r"$", text, re.M)
    return float(found.group(1)) if found else 0.0


# --- following the registry ---------------------------------------------------------------------


@pytest.mark.slow
def test_the_alias_moves_three_times_under_load_without_a_failed_request(
    trained_model, versions, alias, red
) -> None:
    refresh = 0.5
    one_row = body(red.head(1))
    answers: list[tuple[float, float, int, str | None]] = []
    moves: list[tuple[float, str]] = [(0.0, "1")]
    stop = threading.Event()

    def client_loop(url: str) -> None:
        with httpx.Client(base_url=url, timeout=30) as http:
            while not stop.is_set():
                start = time.monotonic()
                answer = http.post("/invocations", json=one_row)
                answers.append(
                    (
                        start,
                        time.monotonic(),
                        answer.status_code,
                        answer.headers.get("x-model-version"),
                    )
                )

    with ServerThread(follower_app(trained_model, refresh)) as url:
        threads = [threading.Thread(target=client_loop, args=(url,)) for _ in range(8)]
        for thread in threads:
            thread.start()
        delays = []
        for version in ("2", "3", "4"):
            time.sleep(1.0)
            moved = time.monotonic()
            alias.set_registered_model_alias(NAME, "champion", version)
            moves.append((moved, version))
            while httpx.get(f"{url}/health").json()["model_version"] != version:
                assert time.monotonic() - moved < 30, f"version {version} never served"
                time.sleep(0.05)
            delays.append(time.monotonic() - moved)
        time.sleep(0.5)
        stop.set()
        for thread in threads:
            thread.join()
        metrics = httpx.get(f"{url}/metrics").text
    assert len(answers) > 200
    assert {status for _, _, status, _ in answers} == {200}  # zero failed requests
    for start, end, _, version in answers:
        # the versions the alias named from one refresh (plus loading) before the request
        # started until it ended
        allowed = {v for t, v in moves if t <= end}
        recent = [v for t, v in moves if t <= start - refresh - 1.0]
        if recent:
            allowed -= set(recent[:-1])
        assert version in allowed, (start, end, version, moves)
    assert {v for *_, v in answers} == {"1", "2", "3", "4"}
    # each swap came within one refresh period, plus the time to load the version
    assert max(delays) < refresh + 2.0, delays
    assert metric(metrics, "winequality_model_reloads_total", outcome="ok") == 3
    assert metric(metrics, "winequality_model_version") == 4


@pytest.mark.slow
def test_a_version_that_cannot_be_served_is_refused_and_the_old_one_keeps_serving(
    trained_model, versions, alias, red, caplog
) -> None:
    with ServerThread(follower_app(trained_model, 0.2)) as url, httpx.Client(base_url=url) as http:
        alias.set_registered_model_alias(NAME, "champion", versions["broken"])
        deadline = time.monotonic() + 30
        while http.get("/health").json()["last_reload_failure"] is None:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        health = http.get("/health").json()
        answer = http.post("/invocations", json=body(red.head(2)))
        metrics = http.get("/metrics").text
    assert health["model_version"] == "1"
    failure = health["last_reload_failure"]
    assert failure["version"] == versions["broken"]
    assert "winequality only loads the safe 'skops' format" in failure["message"]
    assert answer.status_code == 200
    assert answer.headers["x-model-version"] == "1"
    assert metric(metrics, "winequality_model_reloads_total", outcome="failed") == 1  # not retried
    assert "registry follow-up failed" in caplog.text


@pytest.mark.slow
def test_every_worker_follows_and_metrics_add_up_across_workers(
    trained_model, versions, alias, red, tmp_path
) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    command = [
        sys.executable, "-m", "winequality.cli", "serve", "--model", f"models:/{NAME}@champion",
        "--port", str(port), "--workers", "2", "--refresh", "0.5",
        "--tracking-uri", trained_model.tracking_uri, "--access-log", "off",
    ]  # fmt: skip
    server = subprocess.Popen(
        command, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        wait_for(url, server)
        # a new connection per request, so that the kernel spreads them over both workers
        close = {"Connection": "close"}
        for _ in range(60):
            answer = httpx.post(f"{url}/invocations", json=body(red.head(3)), headers=close)
            assert answer.status_code == 200
        time.sleep(2 * SETTLE_SECONDS)  # each worker folds what it counted every SETTLE_SECONDS
        scrapes = [httpx.get(f"{url}/metrics", headers=close).text for _ in range(10)]
        pids = {httpx.get(f"{url}/health", headers=close).json()["pid"] for _ in range(40)}
        assert len(pids) == 2  # both workers answer
        alias.set_registered_model_alias(NAME, "champion", "2")
        seen: dict[int, str] = {}
        deadline = time.monotonic() + 60
        while len(seen) < 2 or set(seen.values()) != {"2"}:
            assert time.monotonic() < deadline, seen
            health = httpx.get(f"{url}/health", headers=close).json()
            seen[health["pid"]] = health["model_version"]
    finally:
        server.terminate()
        server.wait(timeout=60)
        close_pipes(server)
    for text in scrapes:  # whichever worker answered, the whole server's counts
        assert metric(text, "winequality_requests_total", route="/invocations", status="200") == 60
        assert metric(text, "winequality_rows_scored_total") == 180


def test_an_alias_moved_while_the_server_started_names_the_version_it_loaded(
    trained_model, scorer, red
) -> None:
    """Loaded from the alias's version 1; the alias moves to version 2 (another logged model)
    before the server resolves it: the answers say 1, the version that scores them."""
    from winequality.logged_model import log_model

    name = "wine-startup-race"
    client = mlflow.MlflowClient(trained_model.tracking_uri)
    mlflow.set_tracking_uri(trained_model.tracking_uri)
    first = mlflow.register_model(trained_model.model_uri, name).version
    with mlflow.start_run():
        other = log_model(scorer.model.estimator, red[COLUMNS].head(1), scorer.model.profile)
    second = mlflow.register_model(other.model_uri, name).version
    client.set_registered_model_alias(name, "champion", str(first))
    uri = f"models:/{name}@champion"
    loaded = load_scorer(uri, trained_model.tracking_uri)
    client.set_registered_model_alias(name, "champion", str(second))
    app = create_app(loaded, model_uri=uri, refresh=0, tracking_uri=trained_model.tracking_uri)
    with ServerThread(app) as url, httpx.Client(base_url=url) as http:
        answer = http.post("/invocations", json=body(red.head(1)))
        metadata = http.get("/metadata").json()
    assert answer.headers["x-model-version"] == str(first)
    assert metadata["version"] == str(first)


# --- metrics, drift, training range -------------------------------------------------------------


def test_metrics_count_requests_rows_problems_and_latency(scorer, red) -> None:
    with ServerThread(create_app(scorer)) as url, httpx.Client(base_url=url) as http:
        for _ in range(3):
            assert http.post("/invocations", json=body(red.head(4))).status_code == 200
        bad = red.head(2)[COLUMNS].astype(object)
        bad.iloc[0, COLUMNS.index("pH")] = 15.0
        bad.iloc[1, COLUMNS.index("alcohol")] = "strong"
        assert http.post("/invocations", json=body(bad)).status_code == 422
        assert http.get("/nowhere").status_code == 404
        text = http.get("/metrics").text
    assert metric(text, "winequality_requests_total", route="/invocations", status="200") == 3
    assert metric(text, "winequality_requests_total", route="/invocations", status="422") == 1
    assert metric(text, "winequality_requests_total", route="other", status="404") == 1
    assert metric(text, "winequality_rows_scored_total") == 12
    assert (
        metric(text, "winequality_validation_problems_total", column="pH", reason="out_of_range")
        == 1
    )
    assert (
        metric(
            text, "winequality_validation_problems_total", column="alcohol", reason="not_numeric"
        )
        == 1
    )
    assert metric(text, "winequality_request_duration_seconds_count", route="/invocations") == 4
    assert metric(text, "winequality_model_loaded_timestamp_seconds") > 0


def test_white_wines_drift_in_the_server_and_are_flagged_outside_training(
    scorer, red, white
) -> None:
    with ServerThread(create_app(scorer)) as url, httpx.Client(base_url=url, timeout=30) as http:
        few = http.post("/invocations", json=body(red.head(50)))
        assert few.status_code == 200
        assert http.get("/drift").json()["features"] == {}  # too few rows for a verdict
        red_answer = http.post("/invocations", json=body(red.sample(350, random_state=0)))
        assert red_answer.status_code == 200
        assert "warnings" not in red_answer.json()
        assert http.get("/drift").json()["features"]["total sulfur dioxide"]["verdict"] == "stable"
        answer = http.post("/invocations", json=body(white))
        view = http.get("/drift").json()
        text = http.get("/metrics").text
    assert answer.status_code == 200
    assert len(answer.json()["predictions"]) == len(white)  # still scored
    warnings = answer.json()["warnings"]
    assert {"row", "column", "reason", "value"} <= set(warnings[0])
    assert "outside the training range" in warnings[0]["reason"]
    assert "rows outside the training range" in answer.headers["x-winequality-warnings"]
    assert view["rows"] == 400 + len(white)
    for feature in ("total sulfur dioxide", "free sulfur dioxide", "residual sugar"):
        assert view["features"][feature]["verdict"] == "drift"
        assert metric(text, "winequality_feature_psi", feature=feature) >= 0.25
    assert metric(text, "winequality_outside_training_range_total", feature="residual sugar") > 100


def test_drift_command_flags_white_wines_and_passes_red_held_out_rows(
    trained_model, red, white, tmp_path, monkeypatch
) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", trained_model.tracking_uri)
    _, red_test = data.split(red)  # the rows the model was tested on, never trained on
    red_test.to_csv(tmp_path / "red.csv", index=False)
    white.to_csv(tmp_path / "white.csv", index=False)
    model = trained_model.model_uri
    plot = tmp_path / "drift.png"
    answer = runner.invoke(
        app,
        ["drift", "--model", model, "--input", str(tmp_path / "white.csv"), "--plot", str(plot)],
    )
    assert answer.exit_code == DRIFT_EXIT, answer.output
    rows = {line.split("│")[1].strip(): line for line in answer.stdout.splitlines() if "│" in line}
    for feature in ("total sulfur dioxide", "free sulfur dioxide", "residual sugar"):
        assert rows[feature].rstrip(" │").endswith("drift")
    assert plot.read_bytes()[:4] == b"\x89PNG"
    answer = runner.invoke(app, ["drift", "--model", model, "--input", str(tmp_path / "red.csv")])
    assert answer.exit_code == 0, answer.output
    assert "no feature drifted" in answer.stderr


def test_predict_warns_about_rows_outside_training_and_can_flag_them(
    trained_model, white, tmp_path
) -> None:
    source = tmp_path / "white.csv"
    white.to_csv(source, index=False)
    output = tmp_path / "scored.parquet"
    result = predict_file(
        trained_model.model_uri,
        source,
        output,
        tracking_uri=trained_model.tracking_uri,
        flag_outside=True,
    )
    sugar = next(w for w in result.warnings if w.column == "residual sugar")
    assert sugar.kind == "outside_training"
    written = pd.read_parquet(output)
    assert len(written) == len(white)  # all scored
    assert written[FLAG_COLUMN].sum() >= sugar.count > 100
    assert sugar.describe("line").startswith(f"residual sugar: {sugar.count} values outside")


def test_a_model_logged_without_a_profile_still_serves(trained_model, red, tmp_path) -> None:
    mlflow.set_tracking_uri(trained_model.tracking_uri)
    folder = Path(
        mlflow.artifacts.download_artifacts(trained_model.model_uri, dst_path=str(tmp_path))
    )
    (folder / PROFILE_FILE).unlink()
    scorer = load_scorer(str(folder))
    assert scorer.model.profile is None
    with ServerThread(create_app(scorer)) as url, httpx.Client(base_url=url) as http:
        answer = http.post("/invocations", json=body(red.head(3)))
        assert answer.status_code == 200
        assert http.get("/drift").json() == {
            "model_version": answer.headers["x-model-version"],
            "rows": 0,
            "minimum_rows": 100,
            "profile": False,
            "features": {},
        }
        assert http.get("/metadata").json()["reference_profile"] is False


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

"""The Prometheus metrics: requests, rows, problems and latency, as a scraper reads them."""

from __future__ import annotations

import httpx
from typer.testing import CliRunner

from winequality.schema import FEATURE_NAMES
from winequality.serving import create_app

from .conftest import ServerThread, metric
from .conftest import split_body as body

COLUMNS = list(FEATURE_NAMES)
runner = CliRunner()
NAME = "wine-follow"


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

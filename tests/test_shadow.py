"""Champion and challenger side by side: shadow scoring in the server, its log, the report, and
promotion from live evidence."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import mlflow
import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from tests.conftest import (
    ServerThread,
    alive,
    children_of,
    close_pipes,
    cmdline,
    free_port,
    metric,
    split_body,
    wait_for,
)
from winequality import data, registry, schema
from winequality.cli import app
from winequality.errors import DataError, ParameterError, PromotionRefused
from winequality.scoring import load_scorer
from winequality.serving import CanarySettings, ShadowSettings, create_app
from winequality.serving.shadow import Shadow
from winequality.shadow_report import read_report, shadow_report

NAME = "wine-shadow"
FEATURES = list(schema.FEATURE_NAMES)
runner = CliRunner()


class Pair:
    """Three versions of one registered model: v1 (the tutorial's alpha 0.7) champion, v2
    (alpha 0.05: a deliberately different model) challenger, v3 (alpha 0.3) beside them."""

    def __init__(self, uri: str, results: list) -> None:
        self.uri, self.results = uri, results
        self.client = mlflow.MlflowClient(uri)

    def scorer(self, version: str):
        return load_scorer(f"models:/{NAME}/{version}", self.uri)


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> Pair:
    from winequality.train import TrainConfig, train

    folder = tmp_path_factory.mktemp("shadow")
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    results = []
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(folder)
        for alpha in (0.7, 0.05, 0.3):
            result = train(TrainConfig(alpha=alpha, tracking_uri=uri, output_dir=None))
            registry.register(result.model_uri, NAME, tracking_uri=uri)
            results.append(result)
    client = mlflow.MlflowClient(uri)
    client.set_registered_model_alias(NAME, "champion", "1")
    client.set_registered_model_alias(NAME, "challenger", "2")
    return Pair(uri, results)


@pytest.fixture(scope="module")
def red() -> pd.DataFrame:
    return data.load().frame


def champion_app(pair: Pair, refresh: float = 0.0, **shadow: object):
    uri = f"models:/{NAME}@champion"
    settings = ShadowSettings(**shadow) if shadow else None
    return create_app(
        load_scorer(uri, pair.uri),
        model_uri=uri,
        tracking_uri=pair.uri,
        refresh=refresh,
        shadow=settings,
    )


def drive(url: str, red: pd.DataFrame, clients: int = 8, each: int = 25) -> dict[str, tuple]:
    """`clients` threads, each sending `each` requests of 1 to 5 red wines with its own
    request ids; every answer by request id: (rows sent, status, body, echoed id)."""
    answers: dict[str, tuple] = {}

    def client(k: int) -> None:
        rng = np.random.default_rng(k)
        with httpx.Client(base_url=url, timeout=30) as http:
            for i in range(each):
                rows = red.iloc[rng.choice(len(red), int(rng.integers(1, 6)), replace=False)]
                request_id = f"client{k}-{i}"
                answer = http.post(
                    "/invocations", json=split_body(rows), headers={"X-Request-Id": request_id}
                )
                answers[request_id] = (
                    rows,
                    answer.status_code,
                    answer.content,
                    answer.headers["x-request-id"],
                )

    threads = [threading.Thread(target=client, args=(k,)) for k in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return answers


def settled(url: str, deadline: float = 20) -> dict:
    """The shadow's /health state once every sampled row has been dealt with."""
    until = time.monotonic() + deadline
    while True:
        state = httpx.get(url + "/health").json()["shadow"]
        counts = state["rows"]
        done = sum(counts[k] for k in ("scored", "dropped", "unavailable", "failed"))
        if state["queued_rows"] == 0 and done == counts["sampled"]:
            return dict(state)
        assert time.monotonic() < until, state
        time.sleep(0.05)


def shadow_state(url: str, until: Callable[[dict], bool], deadline: float = 30) -> dict:
    """The shadow's /health state, once `until` holds (its process loads the model itself)."""
    end = time.monotonic() + deadline
    while not until(state := httpx.get(url + "/health").json()["shadow"]):
        assert time.monotonic() < end, state
        time.sleep(0.05)
    return dict(state)


def read_log(folder: Path) -> pd.DataFrame:
    assert not list(folder.glob(".*.partial")), "a log file was left half written"
    return pd.concat(pd.read_parquet(p) for p in sorted(folder.glob("*.parquet")))


# --- the server ---------------------------------------------------------------------------------


def test_answers_are_unchanged_and_every_sampled_row_is_logged_with_both_predictions(
    pair, red, tmp_path
) -> None:
    log_dir = tmp_path / "log"
    with ServerThread(champion_app(pair)) as plain_url:
        plain = drive(plain_url, red)
    shadowed_app = champion_app(
        pair, model_uri=f"models:/{NAME}@challenger", fraction=1.0, log_dir=log_dir
    )
    with ServerThread(shadowed_app) as url:
        shadowed = drive(url, red)
        health = settled(url)
        text = httpx.get(url + "/metrics").text
    # answers byte for byte as without a shadow, each with its request id echoed
    assert set(plain) == set(shadowed)
    for request_id, (_rows, status, body, echoed) in shadowed.items():
        assert (status, echoed) == (200, request_id)
        assert body == plain[request_id][2]
    assert (health["loaded"], health["model_version"], health["fraction"]) == (True, "2", 1.0)

    logged = read_log(log_dir)  # closed when the server stopped: nothing left in memory
    sent = sum(len(rows) for rows, *_ in shadowed.values())
    assert len(logged) == sent == health["rows"]["sampled"]
    assert set(logged["champion_version"]) == {"1"}
    assert set(logged["shadow_version"]) == {"2"}
    challenger = pair.scorer("2")
    for request_id, group in logged.groupby("request_id"):
        rows, _, body, _ = shadowed[request_id]
        answered = np.array(json.loads(body)["predictions"])
        positions = group["row"].to_numpy()
        np.testing.assert_array_equal(group["champion"].to_numpy(), answered[positions])
        expected = challenger.predict(rows[FEATURES].to_numpy(np.float64))[positions]
        np.testing.assert_allclose(group["shadow"].to_numpy(), expected, rtol=0, atol=1e-12)
    assert "fixed acidity" not in logged.columns  # no inputs unless asked
    assert logged["bin alcohol"].between(0, 9).all()
    assert metric(text, "winequality_shadow_rows_total", outcome="scored") == sent
    assert metric(text, "winequality_shadow_abs_difference_count") == sent
    assert metric(text, "winequality_shadow_scoring_seconds_count", model="shadow") > 0

    report = shadow_report(log_dir)
    difference = (logged["shadow"] - logged["champion"]).abs().to_numpy()
    assert report.rows == sent
    assert report.requests == len(shadowed)
    assert report.mean_abs_difference == pytest.approx(difference.mean(), abs=1e-12)
    assert report.mean_abs_difference > 0.1  # the known difference: alpha 0.05 against 0.7
    assert report.quantiles["0.5"] == pytest.approx(np.quantile(difference, 0.5), abs=1e-12)
    alcohol = [b for b in report.by_bin if b.feature == "alcohol"]
    assert sum(b.rows for b in alcohol) == sent
    assert alcohol[0].low is None
    assert alcohol[-1].high is None

    truth = logged[["request_id", "row"]].copy()
    truth["quality"] = [
        shadowed[r][0]["quality"].to_numpy()[p]
        for r, p in zip(truth.request_id, truth.row, strict=True)
    ]
    truth_file = tmp_path / "truth.csv"
    truth.to_csv(truth_file, index=False)
    live = shadow_report(log_dir, truth_file).live
    assert live is not None
    assert live.rows == sent
    actual = truth["quality"].to_numpy(float)
    champion_rmse = np.sqrt(np.mean((logged["champion"].to_numpy() - actual) ** 2))
    assert live.champion_rmse == pytest.approx(champion_rmse, abs=1e-12)
    assert live.mse_difference_ci95[0] <= live.mse_difference <= live.mse_difference_ci95[1]


def test_the_shadows_alias_moves_mid_run_and_the_log_follows(pair, red, tmp_path) -> None:
    pair.client.set_registered_model_alias(NAME, "canary", "2")
    log_dir = tmp_path / "log"
    application = champion_app(
        pair, 0.2, model_uri=f"models:/{NAME}@canary", fraction=1.0, log_dir=log_dir
    )
    with ServerThread(application) as url, httpx.Client(base_url=url) as http:
        before = red.head(3)
        assert http.post("/invocations", json=split_body(before)).status_code == 200
        assert settled(url)["rows"]["scored"] == 3  # by v2, before the alias moves
        pair.client.set_registered_model_alias(NAME, "canary", "3")
        deadline = time.monotonic() + 20
        while http.get("/health").json()["shadow"]["model_version"] != "3":
            assert time.monotonic() < deadline, "the shadow did not follow its alias"
            time.sleep(0.1)
        assert http.get("/health").json()["model_version"] == "1"  # the champion stays
        after = red.tail(4)
        assert http.post("/invocations", json=split_body(after)).status_code == 200
    logged = read_log(log_dir).sort_values("time", kind="stable")
    assert list(logged["shadow_version"]) == ["2"] * 3 + ["3"] * 4
    expected = pair.scorer("3").predict(after[FEATURES].to_numpy(np.float64))
    np.testing.assert_allclose(logged["shadow"].to_numpy()[3:], expected, atol=1e-12)


def test_a_missing_shadow_is_reported_serving_goes_on_and_it_loads_once_registered(
    pair, red
) -> None:
    absent = "wine-absent"
    application = champion_app(pair, 0.2, model_uri=f"models:/{absent}@challenger", fraction=1.0)
    with ServerThread(application) as url, httpx.Client(base_url=url) as http:
        answer = http.post("/invocations", json=split_body(red.head(4)))
        assert answer.status_code == 200  # whatever the shadow's process is doing
        state = shadow_state(url, lambda state: state["last_load_failure"] is not None)
        assert state["loaded"] is False
        assert (
            "cannot load the shadow models:/wine-absent@challenger"
            in (state["last_load_failure"]["message"])
        )
        assert settled(url)["rows"]["unavailable"] == 4  # counted, not scored
        text = http.get("/metrics").text
        assert metric(text, "winequality_shadow_rows_total", outcome="unavailable") == 4
        assert metric(text, "winequality_shadow_reloads_total", outcome="failed") >= 1

        registry.register(pair.results[1].model_uri, absent, tracking_uri=pair.uri)
        pair.client.set_registered_model_alias(absent, "challenger", "1")
        deadline = time.monotonic() + 20
        while not http.get("/health").json()["shadow"]["loaded"]:
            assert time.monotonic() < deadline, "the shadow was not retried"
            time.sleep(0.1)
        assert http.get("/health").json()["shadow"]["last_load_failure"] is None
        assert http.post("/invocations", json=split_body(red.head(2))).status_code == 200


def test_a_stalled_shadow_drops_rows_and_counts_them_without_waiting(pair, red) -> None:
    from prometheus_client import CollectorRegistry, generate_latest, multiprocess

    from winequality.serving.follower import ServedModel

    served = ServedModel.of(pair.scorer("1"), "1")
    features = red[FEATURES].head(1000).to_numpy(np.float64)
    predictions = served.scorer.predict(features)
    # the smallest pipe there is (a page): a few requests' rows fit
    shadow = Shadow(
        ShadowSettings(f"models:/{NAME}/2", 1.0, queue_bytes=4096), tracking_uri=pair.uri
    )
    shadow.start()
    try:
        until = time.monotonic() + 30
        while not shadow.state()["loaded"]:
            assert time.monotonic() < until, shadow.state()
            time.sleep(0.05)
        pid = shadow.state()["process"]["pid"]
        os.kill(pid, signal.SIGSTOP)  # the shadow reads nothing: its pipe fills
        try:
            for i in range(100):  # (a blocking write would hang here)
                rows = slice(10 * i, 10 * i + 10)
                shadow.offer(f"r{i}", features[rows], predictions[rows], served, 0.001)
        finally:
            os.kill(pid, signal.SIGCONT)
        dropped = shadow.counts["dropped"]
        assert shadow.counts["sampled"] == 1000
        assert 0 < dropped < 1000
        shadow.offer("last", features[:1], predictions[:1], served, 0.001)  # tells the drops
        while shadow.state()["rows"]["scored"] < 1001 - dropped:
            assert time.monotonic() < until + 30, shadow.state()
            time.sleep(0.05)
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry, path=str(shadow.metrics_folder))
        text = generate_latest(registry).decode()
    finally:
        shadow.stop()
    assert metric(text, "winequality_shadow_rows_total", outcome="dropped") == dropped
    assert metric(text, "winequality_shadow_rows_total", outcome="scored") == 1001 - dropped
    final = shadow.state()
    assert final["rows"] == {"sampled": 1001, "dropped": dropped, "scored": 1001 - dropped,
                             "unavailable": 0, "failed": 0}  # fmt: skip
    assert not alive(pid)  # the process ended with its pipe


def test_a_big_request_reaches_the_shadow_whole_in_parts(pair, red, tmp_path) -> None:
    log_dir = tmp_path / "log"
    application = champion_app(
        pair, model_uri=f"models:/{NAME}@challenger", fraction=1.0, log_dir=log_dir
    )
    rows = red.head(1000)  # many messages of a few dozen rows each
    with ServerThread(application) as url:
        shadow_state(url, lambda state: state["loaded"])
        answer = httpx.post(url + "/invocations", json=split_body(rows), timeout=30)
        assert answer.status_code == 200
        assert settled(url)["rows"]["scored"] == len(rows)
    logged = read_log(log_dir).sort_values("row")
    assert list(logged["row"]) == list(range(len(rows)))
    assert set(logged["request_id"]) == {answer.headers["x-request-id"]}
    np.testing.assert_array_equal(logged["champion"].to_numpy(), answer.json()["predictions"])
    expected = pair.scorer("2").predict(rows[FEATURES].to_numpy(np.float64))
    np.testing.assert_allclose(logged["shadow"].to_numpy(), expected, rtol=0, atol=1e-12)


def test_a_fraction_samples_about_that_share_of_rows(pair, red) -> None:
    champion = pair.scorer("1")
    from winequality.serving.follower import ServedModel

    served = ServedModel.of(champion, "1")
    shadow = Shadow(ShadowSettings(f"models:/{NAME}/2", 0.2), tracking_uri=pair.uri, seed=0)
    features = red[FEATURES].to_numpy(np.float64)
    shadow.offer("a", features, champion.predict(features), served, 0.001)
    assert abs(shadow.counts["sampled"] - 0.2 * len(features)) < 4 * np.sqrt(
        len(features) * 0.2 * 0.8
    )


def test_every_answer_carries_a_request_id(pair, red) -> None:
    with ServerThread(champion_app(pair)) as url, httpx.Client(base_url=url) as http:
        mine = http.get("/health", headers={"X-Request-Id": "abc-1"})
        too_long = http.get("/health", headers={"X-Request-Id": "x" * 200})
        ours = http.post("/invocations", json=split_body(red.head(1)))
        refused = http.post(
            "/invocations", content=b"{", headers={"Content-Type": "application/json"}
        )
    assert mine.headers["x-request-id"] == "abc-1"
    assert too_long.headers["x-request-id"] != "x" * 200  # replaced by one of ours
    assert ours.headers["x-request-id"]
    assert refused.status_code == 400
    assert refused.headers["x-request-id"]
    assert len(refused.headers.get_list("x-request-id")) == 1


# --- the report and promotion -----------------------------------------------------------------


@pytest.fixture(scope="module")
def logged(pair, red, tmp_path_factory) -> tuple[Path, pd.DataFrame]:
    """A shadow log of v2 beside v1, and the true grades of its rows."""
    log_dir = tmp_path_factory.mktemp("log")
    application = champion_app(
        pair, model_uri=f"models:/{NAME}@challenger", fraction=1.0, log_dir=log_dir
    )
    with ServerThread(application) as url:
        answers = drive(url, red, clients=4, each=30)
        assert settled(url)["rows"]["scored"] == sum(len(rows) for rows, *_ in answers.values())
    rows = read_log(log_dir)
    truth = rows[["request_id", "row"]].copy()
    truth["quality"] = [
        answers[r][0]["quality"].to_numpy()[p]
        for r, p in zip(truth.request_id, truth.row, strict=True)
    ]
    return log_dir, truth


def test_the_report_command_writes_what_promote_takes_as_evidence(
    pair, logged, tmp_path, monkeypatch
) -> None:
    log_dir, truth = logged
    truth_file, report_file = tmp_path / "truth.csv", tmp_path / "report.json"
    truth.to_csv(truth_file, index=False)
    done = runner.invoke(
        app, ["shadow-report", "--log", str(log_dir), "--truth", str(truth_file),
              "--out", str(report_file)],
    )  # fmt: skip
    assert done.exit_code == 0, done.output
    assert "champion 1, shadow 2" in done.stdout
    assert "where they differ most" in done.stdout
    report = read_report(report_file)
    assert report.live is not None
    assert report.live.rows == len(truth)

    # the same two models registered again: v1 champion, v2 the candidate
    other = "wine-promote"
    for result in pair.results[:2]:
        registry.register_logged(result.model_uri, other, tracking_uri=pair.uri)
    pair.client.set_registered_model_alias(other, "champion", "1")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", pair.uri)

    # grades the champion got exactly right: the challenger was worse on live rows
    rigged = truth.copy()
    logged_rows = read_log(log_dir).set_index(["request_id", "row"])
    rigged["quality"] = logged_rows.loc[
        list(zip(truth.request_id, truth.row, strict=True)), "champion"
    ].values
    rigged_file = tmp_path / "rigged.csv"
    rigged.to_csv(rigged_file, index=False)
    worse = shadow_report(log_dir, rigged_file)
    with pytest.raises(
        PromotionRefused, match=r"no worse on live rows: on .* the champion's 0\.0000"
    ):
        registry.promote(other, "2", tracking_uri=pair.uri, evidence=worse)
    assert str(pair.client.get_model_version_by_alias(other, "champion").version) == "1"

    promoted = runner.invoke(
        app, ["promote", other, "2", "--evidence", str(report_file), "--live-margin", "paired"]
    )
    assert promoted.exit_code == 0, promoted.output
    assert "no worse on live rows: passed" in promoted.stdout
    assert str(pair.client.get_model_version_by_alias(other, "champion").version) == "2"
    recorded = json.loads(pair.client.get_model_version(other, "2").tags[registry.LIVE_TAG])
    assert recorded["margin"] == "paired"
    assert recorded["live"]["rows"] == len(truth)


def test_evidence_about_other_versions_or_without_grades_fails_its_check(logged) -> None:
    log_dir, _ = logged
    report = shadow_report(log_dir)
    assert registry.live_check(report, "3", "1").reason == "the report's shadow was v2, not v3"
    assert "the report's champion was v1, not the champion v4" in (
        registry.live_check(report, "2", "4").reason
    )
    without = registry.live_check(report, "2", "1")
    assert not without.passed
    assert "no true grades" in without.reason
    (shadow_model,) = report.shadow_model_ids
    assert shadow_model.startswith("m-")
    other = registry.live_check(report, "2", "1", candidate_model="m-other")
    assert not other.passed
    assert f"the report's shadow was the logged model {shadow_model}, not m-other" in other.reason


def test_too_few_live_rows_do_not_pass_and_a_nan_test_survives_json(logged, tmp_path) -> None:
    log_dir, truth = logged
    path, report_file = tmp_path / "few.csv", tmp_path / "few.json"
    truth.head(1).to_csv(path, index=False)
    report = shadow_report(log_dir, path)
    assert report.live is not None
    assert np.isnan(report.live.p_value)
    report.write(report_file)
    again = read_report(report_file)
    assert again.live is not None
    assert np.isnan(again.live.p_value)
    for margin in (0.0, "paired"):
        check = registry.live_check(again, "2", "1", margin)
        assert not check.passed
        assert "1 live rows with a true grade: too few to judge" in check.reason


def test_a_bad_truth_file_names_every_problem(logged, tmp_path) -> None:
    log_dir, truth = logged
    bad = truth.head(6).copy().astype({"row": object, "quality": object})
    bad.loc[bad.index[1], "row"] = "x"
    bad.loc[bad.index[3], "quality"] = "good"
    bad = pd.concat([bad, bad.head(1)])
    path = tmp_path / "truth.csv"
    bad.to_csv(path, index=False)
    with pytest.raises(DataError) as caught:
        shadow_report(log_dir, path)
    message = str(caught.value)
    assert "row: not a whole number on line(s) 3" in message
    assert "quality: not a number on line(s) 5" in message
    assert "(request_id, row) given twice on line(s) 8" in message
    path.write_text("request_id,quality\na,5\n")
    with pytest.raises(DataError, match="no column 'row'"):
        shadow_report(log_dir, path)
    with pytest.raises(ParameterError, match="is not a folder"):
        shadow_report(tmp_path / "nowhere")


# --- the command --------------------------------------------------------------------------------


@contextlib.contextmanager
def shadow_server(pair: Pair, log_dir: Path, *extra: str) -> Iterator[tuple[str, subprocess.Popen]]:
    """`winequality serve` with v2 shadowing v1 at fraction 1, logging to `log_dir`."""
    port = free_port()
    process = subprocess.Popen(
        [Path(sys.executable).with_name("winequality"), "serve",
         "--model", f"models:/{NAME}@champion", "--port", str(port), "--access-log", "off",
         "--shadow", f"models:/{NAME}@challenger", "--shadow-fraction", "1",
         "--shadow-log", str(log_dir), "--max-queue-wait-ms", "2000", *extra],
        env={**os.environ, "MLFLOW_TRACKING_URI": pair.uri},
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(url, process)
        yield url, process
    finally:
        if process.poll() is None:
            process.kill()
        process.wait(30)
        close_pipes(process)


def shadow_processes(server: int) -> list[int]:
    """The shadow processes under a server (its own children, or its workers')."""
    below = children_of(server)
    below += [pid for worker in below for pid in children_of(worker)]
    return [pid for pid in below if "winequality.serving.shadow_process" in cmdline(pid)]


@pytest.mark.slow
def test_sigterm_with_two_workers_closes_both_shadow_logs_whole(pair, red, tmp_path) -> None:
    log_dir = tmp_path / "log"
    with shadow_server(pair, log_dir, "--workers", "2") as (url, process):
        until = time.monotonic() + 60  # each worker's shadow has loaded (a summed counter)
        while metric(httpx.get(url + "/metrics").text, "winequality_shadow_reloads_total",
                     outcome="ok") < 2:  # fmt: skip
            assert time.monotonic() < until, "the shadows did not load"
            time.sleep(0.2)
        shadows = shadow_processes(process.pid)
        assert len(shadows) == 2
        answers = drive(url, red, clients=4, each=10)
        assert {status for _, status, _, _ in answers.values()} == {200}
        process.send_signal(signal.SIGTERM)
        assert process.wait(30) == 0
        assert not [pid for pid in shadows if alive(pid)]
    logged = read_log(log_dir)
    assert len(logged) == sum(len(rows) for rows, *_ in answers.values())
    assert set(logged["request_id"]) == set(answers)
    stems = {p.name.rsplit("-", 1)[0] for p in log_dir.glob("*.parquet")}
    assert len(stems) == 2  # one log per worker's shadow


@pytest.mark.slow
def test_a_killed_server_leaves_no_shadow_behind_and_its_log_whole(pair, red, tmp_path) -> None:
    log_dir = tmp_path / "log"
    with shadow_server(pair, log_dir) as (url, process):
        shadow = shadow_state(url, lambda state: state["loaded"])["process"]["pid"]
        assert shadow_processes(process.pid) == [shadow]
        answers = drive(url, red, clients=4, each=10)
        process.kill()  # no drain, no flush: the pipe ends with the server
        process.wait(30)
        until = time.monotonic() + 15  # what it held scored and logged (5 s at most), then gone
        while alive(shadow):
            assert time.monotonic() < until, "the shadow process outlived its server"
            time.sleep(0.1)
    logged = read_log(log_dir)
    assert len(logged) == sum(len(rows) for rows, *_ in answers.values())


def test_shadow_options_are_checked_before_anything_loads(tmp_path) -> None:
    done = runner.invoke(app, ["serve", "--model", "nowhere", "--shadow-log", str(tmp_path)])
    assert done.exit_code == 2
    assert "--shadow-log and --shadow-log-inputs need --shadow MODEL" in done.stderr
    a_file = tmp_path / "file"
    a_file.write_text("x")
    done = runner.invoke(
        app, ["serve", "--model", "nowhere", "--shadow", "m", "--shadow-log", str(a_file)]
    )
    assert done.exit_code == 2
    assert "is a file; give a folder" in done.stderr


# --- the canary ---------------------------------------------------------------------------------


def test_a_canary_answers_a_sticky_share_of_clients_on_both_protocols(pair, red, tmp_path) -> None:
    from winequality.serving.canary import share

    uri = f"models:/{NAME}@champion"
    application = create_app(
        load_scorer(uri, pair.uri),
        model_uri=uri,
        tracking_uri=pair.uri,
        canary=CanarySettings(f"models:/{NAME}@challenger", 0.3),
        shadow=ShadowSettings(f"models:/{NAME}/3", 1.0, log_dir=tmp_path / "log"),
    )
    wines = red.head(3)
    expected = {v: pair.scorer(v).predict(wines[FEATURES].to_numpy(np.float64)) for v in "12"}
    v2_body = {
        "inputs": [{"name": c, "shape": [3], "datatype": "FP64", "data": wines[c].tolist()}
                   for c in FEATURES]
    }  # fmt: skip
    clients = [f"client-{k}" for k in range(40)]
    with ServerThread(application) as url, httpx.Client(base_url=url) as http:
        seen: dict[str, set[str]] = {}
        for client in clients:
            headers = {"X-Client-Id": client}
            for _ in range(3):
                answer = http.post("/invocations", json=split_body(wines), headers=headers)
                version = answer.headers["x-model-version"]
                np.testing.assert_allclose(answer.json()["predictions"], expected[version])
                seen.setdefault(client, set()).add(version)
            answer = http.post(f"/v2/models/{NAME}/infer", json=v2_body, headers=headers)
            assert answer.json()["model_version"] == answer.headers["x-model-version"]
            np.testing.assert_allclose(
                answer.json()["outputs"][0]["data"], expected[answer.headers["x-model-version"]]
            )
            seen[client].add(answer.json()["model_version"])
            # a path naming a version is answered by that version, never by the canary
            named = http.post(f"/v2/models/{NAME}/versions/1/infer", json=v2_body, headers=headers)
            assert named.json()["model_version"] == "1"
        # without the header: each request its own draw
        drawn = [
            http.post("/invocations", json=split_body(wines)).headers["x-model-version"]
            for _ in range(60)
        ]
        health = http.get("/health").json()
        text = http.get("/metrics").text
        shadowed = settled(url)
    assert all(len(versions) == 1 for versions in seen.values())  # sticky, both protocols
    canaries = {client for client, versions in seen.items() if versions == {"2"}}
    assert canaries == {client for client in clients if share(client) < 0.3}
    assert 0 < len(canaries) < len(clients)
    assert set(drawn) == {"1", "2"}
    assert health["model_version"] == "1"
    canary = health["canary"]
    assert (canary["model_version"], canary["fraction"], canary["header"]) == (
        "2",
        0.3,
        "X-Client-Id",
    )
    routed = canary["answered"]  # (a path naming a version is not routed)
    assert routed == {
        "canary": 4 * len(canaries) + drawn.count("2"),
        "champion": 4 * (len(clients) - len(canaries)) + drawn.count("1"),
    }
    assert metric(text, "winequality_routed_requests_total", model="canary") == routed["canary"]
    assert metric(text, "winequality_routed_requests_total", model="champion") == routed["champion"]
    # the shadow compares with the champion: only the champion's answers were sampled (those
    # routed to it, and those of the path naming its version)
    assert shadowed["rows"]["sampled"] == 3 * (routed["champion"] + len(clients))
    assert set(read_log(tmp_path / "log")["champion_version"]) == {"1"}


def test_the_canary_share_is_uniform_over_client_ids() -> None:
    from winequality.serving.canary import share

    n = 20_000
    draws = np.array([share(f"user-{k}") for k in range(n)])
    assert abs((draws < 0.05).mean() - 0.05) < 4 * np.sqrt(0.05 * 0.95 / n)
    assert share("user-1") == share("user-1")


def test_canary_options_are_checked_before_serving(pair, tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", pair.uri)
    model = f"models:/{NAME}@champion"
    for options, said in (
        (["--canary", "m", "--canary-fraction", "0"], "--canary-fraction must be above 0"),
        (["--canary", "m", "--canary-header", "a b"], "'a b' is not a header name"),
        (["--canary", f"models:/{NAME}@nowhere"], "nowhere"),
    ):
        done = runner.invoke(app, ["serve", "--model", model, "--port", str(free_port()), *options])
        assert done.exit_code == 2, done.output
        assert said in done.stderr

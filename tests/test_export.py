"""`winequality export`: a model copied, checked, into a folder an image bakes in."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
from typer.testing import CliRunner

from winequality.cli import app
from winequality.export import EXPORT_FILE, read_export
from winequality.scoring import load_scorer
from winequality.serving.follower import served_version

runner = CliRunner()


def export(trained_model, *args: str):
    return runner.invoke(
        app, ["export", "--tracking-uri", trained_model.tracking_uri, *args], env={"COLUMNS": "200"}
    )


def leftovers(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if p.name.startswith("."))


def test_an_alias_exports_into_a_folder_that_serves_as_its_version(trained_model, tmp_path) -> None:
    folder = tmp_path / "model"
    done = export(trained_model, "--model", "models:/wine-test@champion", "--out", str(folder))
    assert done.exit_code == 0, done.output
    assert done.stdout.strip() == str(folder)
    assert "version 1 of wine-test" in done.stderr
    names = {p.name for p in folder.iterdir()}
    assert {"MLmodel", "model.skops", "reference_profile.json", EXPORT_FILE} <= names
    provenance = json.loads((folder / EXPORT_FILE).read_text())
    assert provenance["source"] == "models:/wine-test@champion"
    assert provenance["registered_model"] == "wine-test"
    assert provenance["version"] == "1"
    assert provenance["run_id"] == trained_model.result.run_id
    assert read_export(folder) is not None
    assert served_version(str(folder)) == "1"  # what /health and every answer name
    original = load_scorer(trained_model.model_uri, trained_model.tracking_uri)
    exported = load_scorer(str(folder))
    features = original.model.input_example.to_numpy(np.float64)
    assert np.array_equal(exported.predict(features), original.predict(features))
    assert leftovers(tmp_path) == []


def test_a_folder_that_is_not_empty_is_kept_unless_an_earlier_export_replaced(
    trained_model, tmp_path
) -> None:
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "notes.txt").write_text("mine")
    for extra in ([], ["--replace"]):  # not an export: never overwritten
        refused = export(trained_model, "--model", "models:/wine-test/1", "--out", str(folder),
                         *extra)  # fmt: skip
        assert refused.exit_code == 2
        assert (folder / "notes.txt").read_text() == "mine"
    assert "--replace only overwrites such a folder" in refused.stderr

    (folder / "notes.txt").unlink()
    first = export(trained_model, "--model", "models:/wine-test/1", "--out", str(folder))
    assert first.exit_code == 0, first.output
    (folder / "stale.txt").write_text("from before")
    again = export(trained_model, "--model", "models:/wine-test/1", "--out", str(folder))
    assert again.exit_code == 2
    assert "is not empty (--replace overwrites it)" in again.stderr
    replaced = export(trained_model, "--model", "models:/wine-test/1", "--out", str(folder),
                      "--replace")  # fmt: skip
    assert replaced.exit_code == 0, replaced.output
    assert not (folder / "stale.txt").exists()
    assert (folder / "MLmodel").is_file()
    assert leftovers(tmp_path) == []


def test_a_model_without_its_reference_profile_is_refused_and_nothing_written(
    trained_model, tmp_path
) -> None:
    source = tmp_path / "source"
    assert (
        export(trained_model, "--model", trained_model.model_uri, "--out", str(source)).exit_code
        == 0
    )
    (source / "reference_profile.json").unlink()
    out = tmp_path / "out"
    done = runner.invoke(app, ["export", "--model", str(source), "--out", str(out)])
    assert done.exit_code == 2
    assert "holds no reference profile (reference_profile.json)" in done.stderr
    assert not out.exists()
    assert leftovers(tmp_path) == []


def test_a_model_that_is_not_the_wine_schema_is_refused(trained_model, tmp_path) -> None:
    source = tmp_path / "source"
    assert (
        export(trained_model, "--model", trained_model.model_uri, "--out", str(source)).exit_code
        == 0
    )
    mlmodel = (source / "MLmodel").read_text()
    assert '"name": "alcohol"' in mlmodel
    (source / "MLmodel").write_text(mlmodel.replace('"name": "alcohol"', '"name": "ethanol"'))
    done = runner.invoke(app, ["export", "--model", str(source), "--out", str(tmp_path / "out")])
    assert done.exit_code == 2, done.output
    assert "signature" in done.stderr
    assert not (tmp_path / "out").exists()


def test_an_unknown_model_names_the_store_and_leaves_nothing(trained_model, tmp_path) -> None:
    done = export(trained_model, "--model", "models:/wine-test@nobody", "--out",
                  str(tmp_path / "model"))  # fmt: skip
    assert done.exit_code == 2
    assert "cannot load model models:/wine-test@nobody" in done.stderr
    assert "nobody" in done.stderr
    assert list(tmp_path.iterdir()) == []


def test_every_exported_file_is_readable_by_all_whatever_the_umask(trained_model, tmp_path) -> None:
    """The image's non-root user reads what root exported under a strict umask."""
    source, out = tmp_path / "source", tmp_path / "deeper" / "copy"
    previous = os.umask(0o077)
    try:
        assert export(trained_model, "--model", trained_model.model_uri, "--out",
                      str(source)).exit_code == 0  # fmt: skip
        done = runner.invoke(app, ["export", "--model", str(source), "--out", str(out)])
    finally:
        os.umask(previous)
    assert done.exit_code == 0, done.output
    for folder in (source, out):
        entries = [folder, *folder.rglob("*")]
        assert len(entries) > 5
        for path in entries:
            expected = 0o755 if path.is_dir() else 0o644
            assert path.stat().st_mode & 0o777 == expected, path
    assert read_export(out).source == str(source)


def test_a_failed_export_leaves_no_folder_it_created(trained_model, tmp_path) -> None:
    out = tmp_path / "new" / "deeper" / "model"
    done = export(trained_model, "--model", "models:/wine-test@nobody", "--out", str(out))
    assert done.exit_code == 2
    assert list(tmp_path.iterdir()) == []


def test_provenance_written_by_a_newer_version_still_reads(trained_model, tmp_path) -> None:
    folder = tmp_path / "model"
    assert (
        export(trained_model, "--model", "models:/wine-test/1", "--out", str(folder)).exit_code == 0
    )
    data = json.loads((folder / EXPORT_FILE).read_text())
    (folder / EXPORT_FILE).write_text(json.dumps({**data, "signed_by": "a later field"}))
    assert read_export(folder).version == "1"


def test_a_version_registered_from_the_tutorials_runs_uri_loads_and_exports(
    trained_model, tmp_path
) -> None:
    """`register --model runs:/<id>/model` (the URI the tutorial prints): MLflow 3 downloads
    such a version into a folder of the model's name, which loading and export both find."""
    from winequality import registry

    runs_uri = f"runs:/{trained_model.result.run_id}/model"
    version = registry.register(runs_uri, "wine-runs", tracking_uri=trained_model.tracking_uri)
    uri = f"models:/wine-runs/{version}"
    served = load_scorer(uri, trained_model.tracking_uri)
    assert served.model.model_id == trained_model.model_uri.removeprefix("models:/")
    done = export(trained_model, "--model", uri, "--out", str(tmp_path / "model"))
    assert done.exit_code == 0, done.output
    assert read_export(tmp_path / "model").version == version


def test_an_exported_folder_serves_under_its_registered_name(trained_model, tmp_path) -> None:
    import httpx

    from tests.conftest import ServerThread
    from winequality.serving import create_app

    folder = tmp_path / "model"
    assert (
        export(trained_model, "--model", "models:/wine-test/1", "--out", str(folder)).exit_code == 0
    )
    with ServerThread(create_app(load_scorer(str(folder)), model_uri=str(folder))) as url:
        assert httpx.get(url + "/v2/models/wine-test").status_code == 200
        assert httpx.get(url + "/health").json()["model_version"] == "1"


def test_serve_refuses_an_unreadable_provenance_before_listening(trained_model, tmp_path) -> None:
    folder = tmp_path / "model"
    assert (
        export(trained_model, "--model", "models:/wine-test/1", "--out", str(folder)).exit_code == 0
    )
    (folder / EXPORT_FILE).write_text("{not json")
    done = runner.invoke(app, ["serve", "--model", str(folder), "--port", "1"])
    assert done.exit_code == 2
    assert f"unreadable {EXPORT_FILE}" in done.stderr

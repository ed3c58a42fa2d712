"""`winequality export`: a model copied, checked, into a folder an image bakes in."""

from __future__ import annotations

import json
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


def test_a_folder_that_is_not_empty_is_kept_unless_replaced(trained_model, tmp_path) -> None:
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "notes.txt").write_text("mine")
    refused = export(trained_model, "--model", "models:/wine-test/1", "--out", str(folder))
    assert refused.exit_code == 2
    assert "is not empty (--replace overwrites it)" in refused.stderr
    assert (folder / "notes.txt").read_text() == "mine"

    replaced = export(trained_model, "--model", "models:/wine-test/1", "--out", str(folder),
                      "--replace")  # fmt: skip
    assert replaced.exit_code == 0, replaced.output
    assert not (folder / "notes.txt").exists()
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


def test_export_copies_a_folder_with_its_files_readable_by_all(trained_model, tmp_path) -> None:
    source = tmp_path / "source"
    assert (
        export(trained_model, "--model", trained_model.model_uri, "--out", str(source)).exit_code
        == 0
    )
    out = tmp_path / "copy"
    done = runner.invoke(app, ["export", "--model", str(source), "--out", str(out)])
    assert done.exit_code == 0, done.output
    assert (out.stat().st_mode & 0o755) == 0o755  # an image's non-root user reads it
    assert read_export(out).source == str(source)


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

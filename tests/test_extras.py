"""Which failed import means a missing extra, and which is a bug."""

from __future__ import annotations

import pytest

from winequality.errors import MissingExtra
from winequality.extras import missing_extra, require


def absent(name: str) -> ModuleNotFoundError:
    return ModuleNotFoundError(f"No module named {name!r}", name=name)


def test_a_module_of_an_absent_extra_names_the_extra(monkeypatch) -> None:
    monkeypatch.setattr("importlib.util.find_spec", lambda name: None)
    found = missing_extra(absent("pyarrow.csv"), "a text/csv body")
    assert isinstance(found, MissingExtra)
    assert str(found) == (
        "a text/csv body needs the 'files' extra, which this installation lacks "
        "(no module 'pyarrow.csv'): pip install 'winequality[files]'"
    )
    wrapped = RuntimeError("the store failed")
    wrapped.__cause__ = absent("sqlalchemy")
    assert "'train' extra" in str(missing_extra(wrapped, "the store"))


def test_a_broken_install_or_a_misspelt_import_stays_a_bug() -> None:
    # pyarrow is installed here: its submodule missing is a broken install, not an extra
    assert missing_extra(absent("pyarrow._no_such_module"), "x") is None
    assert missing_extra(absent("winequality_typo"), "x") is None
    assert missing_extra(ValueError("not an import"), "x") is None


def test_an_error_merely_raised_while_handling_a_missing_extra_is_a_bug(monkeypatch) -> None:
    monkeypatch.setattr("importlib.util.find_spec", lambda name: None)
    bug = NameError("a bug in the fallback")
    bug.__context__ = absent("pyarrow")  # `except ImportError:` then a bug of its own
    assert missing_extra(bug, "x") is None


def test_require_imports_nothing_and_names_the_extra(monkeypatch) -> None:
    require("pyarrow", "predict")  # installed here: nothing raised
    monkeypatch.setattr("importlib.util.find_spec", lambda name: None)
    with pytest.raises(MissingExtra, match=r"pip install 'winequality\[train\]'"):
        require("optuna", "`winequality sweep`")

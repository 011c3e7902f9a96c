"""Every tutorial in docs/tutorials runs as written, in its small mode: the checks at the
end of each script (a W2, a guidance effect, a one-step error) are the assertions."""

import pathlib
import runpy

import pytest

TUTORIALS = sorted((pathlib.Path(__file__).parents[1] / "docs" / "tutorials").glob("[0-9]*.py"))


def test_there_are_tutorials():
    assert len(TUTORIALS) >= 3, TUTORIALS


@pytest.mark.parametrize("script", TUTORIALS, ids=lambda p: p.stem)
def test_tutorial_runs_in_small_mode(script, monkeypatch, tmp_path):
    source = script.read_text()
    assert "\nassert " in source, f"{script.name} ends without a checked number"
    monkeypatch.setenv("FLOWJAX_TUTORIAL_SMALL", "1")
    monkeypatch.chdir(tmp_path)
    namespace = runpy.run_path(str(script), run_name="__main__")
    assert namespace["SMALL"] is True

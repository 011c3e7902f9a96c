"""Every tutorial in docs/tutorials runs as written, in its small mode: the checks at the
end of each script (a W2, a guidance effect, a one-step error) are the assertions."""

import pathlib
import runpy

import pytest

TUTORIALS = sorted((pathlib.Path(__file__).parents[1] / "docs" / "tutorials").glob("[0-9]*.py"))
# In `make test`: the 2-D OT-CFM loop, guidance and bringing your own model (about 20 s
# together); the others (MeanFlow, likelihoods, diffusion, multi-device resume: about
# 50 s more) run with the slow tests, in `make test-all` and CI.
FAST = ("01_", "02_", "06_")


def test_there_are_tutorials():
    assert len(TUTORIALS) >= 3, TUTORIALS


@pytest.mark.parametrize("script", [
    pytest.param(p, id=p.stem, marks=() if p.name.startswith(FAST) else pytest.mark.slow)
    for p in TUTORIALS])
def test_tutorial_runs_in_small_mode(script, monkeypatch, tmp_path):
    source = script.read_text()
    assert "\nassert " in source, f"{script.name} ends without a checked number"
    monkeypatch.setenv("FLOWJAX_TUTORIAL_SMALL", "1")
    monkeypatch.chdir(tmp_path)
    namespace = runpy.run_path(str(script), run_name="__main__")
    assert namespace["SMALL"] is True

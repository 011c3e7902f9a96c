"""The README's library example runs and does what it claims."""

import os
import re

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_readme_example_trains_and_samples(capsys):
    with open(os.path.join(ROOT, "README.md")) as f:
        text = f.read()
    section = text[text.index("## The library in 15 lines"):]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    assert len(code.strip().splitlines()) <= 15
    scope = {}
    exec(compile(code, "README.md", "exec"), scope)
    nfe, w2 = capsys.readouterr().out.split()
    assert int(nfe) == 8  # Heun: 2 evaluations x 4 steps
    # OT-CFM after 1,500 steps is near the 2,000-point noise floor (~0.26) in 4 Heun steps.
    assert float(w2) < 0.5
    assert np.all(np.isfinite(np.asarray(scope["sol"].samples)))

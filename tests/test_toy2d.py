"""The toy2d experiment end to end (tiny config), its resume, and its command line."""

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from experiments import _loop
from experiments.toy2d import evaluate
from experiments.toy2d import methods as toy_methods
from experiments.toy2d import train as toy2d
from experiments.toy2d.configs import tiny
from flowjax import data, paths

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


BUILT = {}  # the compiled steps each run of this module built


@pytest.fixture(scope="session")  # not torn down when xdist interleaves modules
def tiny_run(tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp("toy2d"))
    config = tiny.get_config()
    before = set(_loop.STEPS)
    rows = toy2d.train_and_evaluate(config, workdir)
    BUILT["tiny"] = [fn for key, (fn, _) in _loop.STEPS.items() if key not in before]
    return config, workdir, rows


@pytest.mark.xdist_group("toy2d_tiny_run")  # one worker: the run is made once
def test_writes_the_run_files(tiny_run):
    config, workdir, rows = tiny_run
    for name in ("config.json", "metrics.jsonl", "results.json", "samples.png",
                 "trajectories.png", "loss.png"):
        assert os.path.getsize(os.path.join(workdir, name)) > 0, name
    with open(os.path.join(workdir, "results.json")) as f:
        saved = json.load(f)
    assert saved == rows
    solvers = [f"euler-{n}" for n in config.eval.euler_steps] + ["dopri5"]
    assert len(rows) == len(config.methods) * len(config.sources) * len(solvers)
    for r in rows:
        assert tuple(r) == toy2d.RESULT_FIELDS
        assert r["w2"] > 0 and r["w2_floor"] > 0 and r["npe"] >= -1 and r["straightness"] >= 0
    euler = {r["solver"]: r["nfe"] for r in rows if r["method"] == "icfm"}
    assert euler["euler-1"] == 1 and euler["euler-4"] == 4 and euler["dopri5"] > 10
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        lines = [json.loads(line) for line in f]
    steps = config.num_train_steps // config.steps_per_call
    assert len(lines) == steps * len(config.methods) * len(config.sources)
    assert {"step", "method", "source", "loss", "grad_norm", "coupling_cost"} <= set(lines[0])


@pytest.mark.xdist_group("toy2d_tiny_run")  # one worker: the run is made once
def test_ot_pairs_cost_less_than_independent_pairs(tiny_run):
    _, workdir, _ = tiny_run
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        lines = [json.loads(line) for line in f]
    cost = {m: sum(r["coupling_cost"] for r in lines if r["method"] == m) for m in
            ("icfm", "otcfm")}
    assert cost["otcfm"] < 0.5 * cost["icfm"]


@pytest.mark.xdist_group("toy2d_tiny_run")  # one worker: the run is made once
def test_rerun_resumes_from_checkpoints(tiny_run):
    config, workdir, rows = tiny_run
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        before = f.read()
    again = toy2d.train_and_evaluate(config, workdir)
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        assert f.read() == before  # nothing was trained again
    assert [r["w2"] for r in again] == [r["w2"] for r in rows]


@pytest.mark.xdist_group("toy2d_tiny_run")  # one worker: the run is made once
def test_each_run_compiles_its_train_step_once(tiny_run):
    """Every call of a run reuses its one compiled K-step (no retrace)."""
    config, _, _ = tiny_run
    assert [fn._cache_size() for fn in BUILT["tiny"]] == [1] * len(config.methods)


@pytest.mark.slow
@pytest.mark.parametrize("methods", [toy_methods.CFM_METHODS,
                                     toy_methods.FLOW_MAP_METHODS + ("reflow",)],
                         ids=["cfm", "fewstep"])  # two halves: they run on both workers
def test_every_method_trains_and_samples(tmp_path, methods):
    """All methods of the config run end to end (a few steps each)."""
    m = toy_methods
    assert set(m.CFM_METHODS + m.DIFFUSION_METHODS + m.FLOW_MAP_METHODS + ("reflow",)) == set(
        m.METHODS) == set(m.TABLE) - {"reflow-distill"}
    config = tiny.get_config()
    config.methods = methods
    config.num_train_steps = config.steps_per_call = config.checkpoint_every = 10
    config.eval.num_samples = 100
    config.eval.euler_steps = (2,)
    config.eval.flow_map_steps = (1, 2)
    config.shortcut.finest_steps = 4
    config.reflow.num_pairs = 256
    config.plot = False
    before = set(_loop.STEPS)
    rows = toy2d.train_and_evaluate(config, str(tmp_path))
    built = [fn for key, (fn, _) in _loop.STEPS.items() if key not in before]
    runs = [run for m in methods for run in toy_methods.runs_of(m, config)]
    assert all(fn._cache_size() == 1 for fn in built)
    assert sorted({r["method"] for r in rows}) == sorted(runs)
    for r in rows:
        assert all(isinstance(r[f], (int, float)) and r[f] == r[f] for f in
                   ("nfe", "w2", "w2_floor", "npe", "straightness")), r
    table = toy2d.format_nfe_table(rows, "normal").splitlines()
    assert len(table) == 2 + len(runs)
    if "reflow" not in methods:
        assert table[0] == "| method | 2 NFE | Dopri5 (NFE) |"
        return
    assert runs[-3:] == ["reflow-2", "reflow-3", "reflow-2-distill"]
    assert len(built) == len(runs)  # the teacher icfm is added; reflow-2 and -3 share a step
    solvers = {(r["method"], r["solver"]): r["nfe"] for r in rows}
    assert solvers[("meanflow", "meanflow-1")] == 1 and solvers[("meanflow", "meanflow-2")] == 2
    assert [s for m, s in solvers if m == "shortcut"] == [
        "shortcut-1", "shortcut-2", "shortcut-4", "dopri5"]
    assert solvers[("shortcut", "shortcut-4")] == 4
    assert table[0] == "| method | 1 NFE | 2 NFE | 4 NFE | Dopri5 (NFE) |"


@pytest.mark.parametrize("field, value, expected", [
    ("methods", ("icfm", "nope"), "config.methods: unknown method 'nope'"),
    ("target", "mars", "config.target"),
    ("eval.num_samples", 5000, "config.eval.num_samples"),
    ("meanflow.coupling", "greedy", "config.meanflow.coupling"),
    ("reflow.rounds", 1, "config.reflow.rounds"),
    ("sharding.strategy", "zero3", "config.sharding.strategy"),
    ("sharding.num_devices", 9, "config.sharding.num_devices"),
    ("batch_size", 100, "multiple of the number of devices"),
])
def test_config_errors_name_the_field(field, value, expected):
    config = tiny.get_config()
    config.update_from_flattened_dict({field: value})
    with pytest.raises(ValueError, match=expected):
        toy2d.validate_config(config)


@pytest.mark.slow
def test_diffusion_runs_have_their_losses_and_samplers():
    """vp_eps and edm: their losses, their models' predictions and their extra samplers.

    The training loop and the ODE evaluation are those of every method (tested above);
    here the untrained models go through the reverse SDE (vp_eps) and EDM's Heun sampler.
    """
    config = tiny.get_config()
    config.eval.sde_steps, config.eval.heun_steps = (4,), (3,)
    key = jax.random.PRNGKey(0)
    x0, batch = jax.random.normal(key, (64, 2)), {"x1": data.moons(key, 64)}
    rows = []
    for run, (method, spec) in toy_methods.make_methods(config,
                                                        toy_methods.DIFFUSION_METHODS).items():
        params = method.init(key)
        value, _ = jax.jit(method.loss)(params, key, batch)
        assert method.coupling is None and np.isfinite(float(value)) and float(value) > 0
        runs = evaluate.evaluate_diffusion(config, spec, method.apply_fn, params, x0, key)
        for solver, (xs, nfe) in runs.items():
            assert np.all(np.isfinite(xs)), (run, solver)
            rows.append({"method": run, "source": "normal", "solver": solver, "nfe": nfe,
                         "w2": 1.0, "w2_floor": 0.5})
    assert [(r["method"], r["solver"], r["nfe"]) for r in rows] == [
        ("vp_eps", "sde-4", 4), ("vp_eps", "heun-3", 5), ("edm", "heun-3", 5)]
    assert toy_methods.spec("vp_eps", config).prediction == paths.Prediction.NOISE
    assert toy_methods.spec("edm", config).prediction == paths.Prediction.DATA
    assert toy2d.format_sampler_table(rows, "normal").splitlines()[2:] == [
        "| vp_eps | reverse SDE Euler-Maruyama 4 | 4 | 1.000 | 2.00 |",
        "| vp_eps | EDM Heun 3 | 5 | 1.000 | 2.00 |", "| edm | EDM Heun 3 | 5 | 1.000 | 2.00 |"]


def test_diffusion_methods_need_the_gaussian_source():
    config = tiny.get_config()
    config.methods, config.sources = ("icfm", "edm"), ("normal", "8gaussians")
    with pytest.raises(ValueError, match="need the Gaussian source alone"):
        toy2d.validate_config(config)
    config.sources = ("normal",)
    toy2d.validate_config(config)


TINY = "--config=experiments/toy2d/configs/tiny.py"


@pytest.mark.fast_cases(3)
@pytest.mark.parametrize("args, expected", [
    ([TINY, "--config.no_such_key=1"], "unknown config key 'no_such_key'"),
    ([TINY, "--config.num_train_step=1"],
     "unknown config key 'num_train_step' in --config.num_train_step; "
     "did you mean 'num_train_steps'?"),
    ([TINY, "--config.methods=('icfm','bogus')"], "config.methods"),
    ([TINY, "--config.eval.nokey=1"], "unknown config key 'nokey'"),
    ([TINY, "--config.num_train_steps=abc"], "num_train_steps"),
    (["--config=experiments/toy2d/configs/missing.py"], "--config: cannot load"),
    ([TINY, "--workdir=/proc/forbidden"], "--workdir: cannot write"),
])
def test_cli_bad_command_line_exits_2_with_one_line(tmp_path, args, expected):
    if not any(a.startswith("--workdir") for a in args):
        args = args + [f"--workdir={tmp_path}"]
    proc = subprocess.run([sys.executable, "-m", "experiments.toy2d", *args],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and expected in errors[0], proc.stderr


def test_sigterm_saves_the_current_step_and_exits_143(tmp_path):
    """A preempted run saves where it is (not at a save interval) and resumes from there."""
    import json as json_
    import signal
    import time

    args = [sys.executable, "-m", "experiments.toy2d", TINY, f"--workdir={tmp_path}",
            "--config.methods=('icfm',)", "--config.num_train_steps=100000",
            "--config.sharding.num_devices=1",
            "--config.steps_per_call=10", "--config.log_every=10",
            "--config.checkpoint_every=50000", "--config.plot=False"]
    proc = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True)
    metrics = tmp_path / "metrics.jsonl"
    deadline = time.time() + 120
    while not (metrics.exists() and metrics.read_text().count("\n") >= 3):
        assert proc.poll() is None and time.time() < deadline, proc.stderr
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err
    assert "preempted (SIGTERM): saved step" in err
    last = max(json_.loads(line)["step"] for line in metrics.read_text().splitlines())
    saved = sorted(int(n) for n in os.listdir(tmp_path / "checkpoints" / "normal_icfm")
                   if n.isdigit())
    assert saved == [last] and last % 10 == 0 and 30 <= last < 50000


def test_nonfinite_steps_stop_the_run_keeping_its_last_good_checkpoint(tmp_path):
    """NaN batches from call 3 on: the run stops after K skips, its checkpoints hold good
    params, resuming on clean data goes on; a resume with another model is refused."""
    from experiments._workdir import BadInput, NonFiniteStop
    from flowjax import train

    def config_of(hidden):
        config = tiny.get_config()
        config.methods, config.hidden, config.sharding.num_devices = ("icfm",), hidden, 1
        config.num_train_steps, config.steps_per_call, config.checkpoint_every = 60, 10, 10
        config.max_consecutive_nonfinite = 15
        return config

    def run(config, poison_from=None):
        calls = []
        method, _ = toy_methods.make_methods(config, ["icfm"])["icfm"]
        make = toy2d.sampled_batches(config, "normal")

        def batches(key):
            calls.append(key)
            b = make(key)
            return b if poison_from is None or len(calls) < poison_from else \
                {**b, "x1": b["x1"] * float("nan")}

        key = jax.random.PRNGKey(0)
        stream = _loop.KeyedBatches(batches, _loop.named_key(key, "data"),
                                    steps_per_call=config.steps_per_call)
        return _loop.train_loop(method, stream, key, config, str(tmp_path), name="normal/icfm",
                                writer=train.MetricsWriter(str(tmp_path))).state

    config = config_of((32, 32))
    with pytest.raises(NonFiniteStop, match="stopped at step 40: 20 consecutive non-finite "
                                            "steps .* the latest checkpoint is step 30") as stop:
        run(config, poison_from=3)
    assert (stop.value.latest, stop.value.total) == (30, 20)
    ckpt = train.Checkpointer(str(tmp_path / "checkpoints" / "normal_icfm"), save_every=10)
    assert ckpt.all_steps() == [20, 30]  # nothing saved after the stop
    method, _ = toy_methods.make_methods(config, ["icfm"])["icfm"]
    abstract = jax.eval_shape(lambda: train.create_train_state(
        jax.random.PRNGKey(0), method.init(jax.random.PRNGKey(0)), method.optimizer))
    good, during = (ckpt.restore(abstract, step=s).state for s in (20, 30))
    ckpt.close()
    for a, b in zip(jax.tree.leaves(good.params), jax.tree.leaves(during.params), strict=True):
        np.testing.assert_array_equal(a, b)  # the skipped steps changed nothing
    assert (int(during.step), int(during.nonfinite_total)) == (20, 10)
    # Clean data again: the run resumes from step 30 (20 updates + 10 skips) and finishes.
    state = run(config)
    assert (int(state.step), int(state.nonfinite_total), int(state.nonfinite_consecutive)) == (
        50, 10, 0)
    with pytest.raises(BadInput, match=r"leaf 'params/.*' is float32\[.*\] in the checkpoint "
                                       r"but float32\[.*\] in the state"):
        run(config_of((16, 16)))

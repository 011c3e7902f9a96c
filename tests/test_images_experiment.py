"""The image experiment: digits end to end and resumed, CIFAR-10 configs on tfds mock data."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tensorflow_datasets as tfds

from experiments.images import evaluate, methods
from experiments.images import train as images
from experiments.images.configs import cifar10_meanflow, cifar10_otcfm, digits_tiny
from flowjax import train


@pytest.fixture(scope="session")  # not torn down when xdist interleaves modules
def digits_run(tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp("digits"))
    config = digits_tiny.get_config()
    config.sharding.num_devices = 1  # a U-Net over 8 host devices on 2 cores only costs time
    return config, workdir, images.train_and_evaluate(config, workdir)


@pytest.mark.slow
@pytest.mark.xdist_group("digits_run")  # one worker: the run is made once
def test_digits_run_writes_its_files_and_rows(digits_run):
    config, workdir, rows = digits_run
    for name in ("config.json", "metrics.jsonl", "results.json", "loss.png",
                 "checkpoints/classifier/50", "metrics_vs_nfe.png", "samples_data.png", "samples_otcfm_euler2_w2.png",
                 "samples_meanflow_meanflow1_w4.png"):
        assert os.path.getsize(os.path.join(workdir, name)) > 0, name
    with open(os.path.join(workdir, "results.json")) as f:
        assert json.load(f) == rows
    cfm = [r for r in rows if r["method"] == "otcfm"]
    assert {(r["sampler"], r["guidance"], r["nfe"]) for r in cfm} == {
        ("euler", 1.0, 2), ("euler", 2.0, 2)}
    (mf,) = [r for r in rows if r["method"] == "meanflow"]
    assert mf["nfe"] == 1 and mf["guidance"] == pytest.approx(2.0 / 0.5)
    for r in rows:
        assert 0.0 <= r["accuracy"] <= 1.0 and r["fd"] > 0 and r["fd_floor"] > 0
        assert np.isfinite(r["bpd"]) and r["bpd"] > 0
    # The classifier's own held-out accuracy is the ceiling of the conditional accuracy.
    assert rows[0]["classifier_accuracy"] > 0.1


@pytest.mark.slow
@pytest.mark.xdist_group("digits_run")  # one worker: the run is made once
def test_digits_rerun_resumes_instead_of_training(digits_run):
    config, workdir, _ = digits_run
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        before = f.read()
    source = images.make_source(config, "train")
    shape = images.image_shape(source)
    for method in methods.generators(config, shape).values():
        state, seconds = images.train_method(config, workdir, method, source,
                                             train.MetricsWriter(workdir))
        assert int(state.step) == config.num_train_steps and seconds is None
    train_images, train_labels = images.load_images(source, config.eval.num_reference,
                                                    config.seed)
    images.train_classifier(config, workdir, methods.classifier(config, shape), train_images,
                            train_labels, config.eval.classifier_steps, 128)
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        assert f.read() == before  # restored from the checkpoints: no step was taken


@pytest.mark.slow
def test_interrupted_training_resumes_exactly(tmp_path):
    """10 steps, stop, 10 more (checkpoint + pipeline position) = 20 steps straight.

    On all 8 test devices with FSDP: the sharded state is saved and restored.
    """
    config = digits_tiny.get_config()
    config.sharding.strategy = "fsdp"
    config.schedule = "constant"  # the schedule must not depend on the run length
    config.model.name = "mlp"  # what is tested is the loop, not the model: compiles fast
    config.model.mlp_hidden = (32,)
    source = images.make_source(config, "train")
    shape = images.image_shape(source)
    writer = train.MetricsWriter(str(tmp_path))

    def run(steps, workdir):
        config.num_train_steps = steps
        method = methods.generator(config, "otcfm", shape)
        return images.train_method(config, str(tmp_path / workdir), method, source, writer)[0]

    straight = run(20, "a")
    run(10, "b")
    resumed = run(20, "b")
    assert int(resumed.step) == 20
    for a, b in zip(jax.tree.leaves(straight), jax.tree.leaves(resumed)):
        np.testing.assert_array_equal(a, b)


@pytest.mark.slow
def test_classifier_guidance_rows_and_the_restored_noisy_classifier(tmp_path):
    """The rows of classifier guidance (null-label field + noisy classifier), and its checkpoint.

    Small MLP generator, untrained: what is tested is the experiment's wiring; the guidance
    formula is tested on an exact mixture in tests/test_guidance.py.
    """
    config = digits_tiny.get_config()
    config.model.name, config.model.mlp_hidden = "mlp", (16,)
    config.eval.guidance_scales, config.eval.euler_steps = (), ()
    config.eval.midpoint_steps, config.eval.adaptive = (), False
    config.eval.classifier_guidance_scales, config.eval.classifier_guidance_steps = (2.0,), 2
    images.validate_config(config)
    key, shape = jax.random.PRNGKey(0), (8, 8, 1)
    noisy = methods.noisy_classifier(config, shape)
    data = (np.zeros((4,) + shape, np.float32), np.zeros(4, np.int32))
    saved = images.train_classifier(config, str(tmp_path), noisy, *data, 2, 4)
    with open(tmp_path / "metrics.jsonl") as f:
        before = f.read()
    assert len(before.splitlines()) == 1  # one record of the 2 steps
    params = images.train_classifier(config, str(tmp_path), noisy, *data, 2, 4)
    with open(tmp_path / "metrics.jsonl") as f:
        assert f.read() == before  # restored from its checkpoint, not trained again
    for a, b in zip(jax.tree.leaves(saved), jax.tree.leaves(params)):
        np.testing.assert_array_equal(a, b)
    labels = jnp.arange(20, dtype=jnp.int32) % 10
    x0 = jax.random.normal(key, (20,) + shape)
    out = evaluate.solver_runs(config, methods.generator(config, "otcfm", shape),
                               methods.init_params(config, "otcfm", shape, key), x0, labels,
                               (noisy.apply_fn, params))
    (((sampler, steps, scale), (xs, nfe)),) = out.items()
    assert (sampler, steps, scale, nfe) == ("cg-euler", 2, 2.0, 2) and np.all(np.isfinite(xs))
    config.otcfm.cond_drop_prob = 0.0  # no null label, no unconditional field to guide
    with pytest.raises(ValueError, match="label dropout"):
        images.validate_config(config)


@pytest.mark.slow
@pytest.mark.parametrize("module", [cifar10_otcfm, cifar10_meanflow], ids=["otcfm", "meanflow"])
def test_tiny_cifar10_configs_train_checkpoint_and_sample(module, tmp_path):
    config = module.get_config("tiny")
    config.sharding.num_devices = 1
    # A small MLP for the model: the U-Net's steps (MeanFlow's too) are trained on digits;
    # what is tested here is the tfds pipeline, the unconditional methods and their sampling.
    config.model.name, config.model.mlp_hidden = "mlp", (32,)
    full = module.get_config()
    assert (full.model.channels, full.batch_size) in ((128, 128), (128, 1024))
    with tfds.testing.mock_data(num_examples=64):
        rows = images.train_and_evaluate(config, str(tmp_path))
    (method,) = config.methods
    ckpt = tmp_path / "checkpoints" / method
    assert sorted(int(p.name) for p in ckpt.iterdir() if p.name.isdigit())[-1] == 20
    assert rows and all(r["accuracy"] is None and np.isfinite(r["fd"]) for r in rows)
    assert {r["nfe"] for r in rows} == ({2} if method == "otcfm" else {1})


@pytest.mark.parametrize("field, value, message", [
    ("methods", ("nope",), "config.nope"),
    ("otcfm.coupling", "sinkhorn", "coupling"),
    ("model.name", "resnet", "model.name"),
    ("otcfm.cond_drop_prob", 1.0, "cond_drop_prob"),
    ("batch_size", 0, "batch_size"),
    ("sharding.strategy", "zero", "sharding.strategy"),
    ("sharding.num_devices", 16, "sharding.num_devices"),
    ("max_consecutive_nonfinite", 0, "max_consecutive_nonfinite"),
    ("data_dir", "/no/such/tfds", "config.data_dir: '/no/such/tfds' does not exist"),
    ("data_dir", os.path.abspath(__file__), "is not a directory"),
])
def test_bad_configs_name_the_field(field, value, message):
    config = digits_tiny.get_config()
    config.update_from_flattened_dict({field: value})
    with pytest.raises(ValueError, match=message):
        images.validate_config(config)
    config = digits_tiny.get_config()
    config.conditional = False
    with pytest.raises(ValueError, match="conditional"):
        images.validate_config(config)


def test_cli_unreadable_data_dir_exits_2_with_one_line(tmp_path):
    """Checked before JAX compiles anything: one `error:` line, status 2, no traceback."""
    import subprocess
    import sys

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    proc = subprocess.run(
        [sys.executable, "-m", "experiments.images", "--config=experiments/images/configs/mnist.py",
         f"--workdir={tmp_path}", f"--config.data_dir={tmp_path / 'missing'}"],
        cwd=root, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "config.data_dir" in errors[0] and "does not exist" in errors[0]
    assert "Traceback" not in proc.stderr

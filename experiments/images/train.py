"""Class-conditional image generation: training, sampling and offline metrics.

`train_and_evaluate(config, workdir)` trains every method of the config (a
flow-matching velocity field sampled with classifier-free guidance, or a
MeanFlow flow map sampled in one or a few jumps; `methods.generators`) on a
tensorflow-datasets image set or the bundled digits, then a classifier on the
training split, all through `experiments._loop.train_loop` (orbax
checkpoints under `workdir/checkpoints/<name>`: a rerun resumes or restores).
Class-balanced samples are scored (`evaluate`): conditional accuracy, a
Fréchet distance and KID in the classifier's feature space, each beside its
noise floor (held-out vs training images), and bits per dimension on a
held-out subset. With `config.eval.classifier_guidance_scales`, a
time-dependent classifier is also trained on noisy images and the
unconditional field (null label) is sampled with classifier guidance at each
scale, beside classifier-free guidance. It writes `config.json`,
`metrics.jsonl`, `results.json`, sample grids per class, a metric-vs-NFE
plot and the training losses (`loss.png`).
"""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np

from experiments._devices import make_mesh, strategy, validate_sharding
from experiments._loop import (
    eval_params,
    evaluating,
    named_key,
    results_in,
    root_key,
    train_loop,
)
from experiments._workdir import BadInput, start_run, write_results
from experiments.images import evaluate, methods
from experiments.images.methods import (
    COUPLINGS,
    DTYPES,
    LOSSES,
    MODELS,
    TIME_SAMPLERS,
    is_flow_map,
)
from flowjax import data

# --------------------------------------------------------------------------- config

def validate_config(config):
    """Raises a ValueError naming the first bad field."""
    if not config.methods:
        raise ValueError("config.methods is empty")
    for name in config.methods:
        if name not in config or not hasattr(config[name], "loss"):
            raise ValueError(f"config.methods names {name!r}, but the config has no "
                             f"section config.{name} with a `loss` field")
        m = config[name]
        for field, allowed in (("loss", LOSSES), ("coupling", COUPLINGS),
                               ("time_sampler", TIME_SAMPLERS)):
            if m[field] not in allowed:
                raise ValueError(f"config.{name}.{field} must be one of {tuple(allowed)}, "
                                 f"got {m[field]!r}")
        if not 0.0 <= m.cond_drop_prob < 1.0:
            raise ValueError(f"config.{name}.cond_drop_prob must lie in [0, 1), "
                             f"got {m.cond_drop_prob!r}")
        if not config.conditional and (m.coupling == "c2ot" or m.cond_drop_prob > 0
                                       or m.guidance_scale != 1.0 or m.guidance_mix != 0.0):
            raise ValueError(f"config.{name}: c2ot, label dropout and guidance need "
                             "config.conditional = True")
    if config.model.name not in MODELS:
        raise ValueError(f"config.model.name must be one of {tuple(MODELS)}, got {config.model.name!r}")
    if config.model.dtype not in DTYPES:
        raise ValueError(f"config.model.dtype must be one of {tuple(DTYPES)}, "
                         f"got {config.model.dtype!r}")
    for field in ("batch_size", "num_train_steps", "steps_per_call", "log_every",
                  "checkpoint_every", "keep_checkpoints", "max_consecutive_nonfinite"):
        if not isinstance(config[field], int) or config[field] < 1:
            raise ValueError(f"config.{field} must be a positive int, got {config[field]!r}")
    validate_sharding(config, config.batch_size)
    if config.num_train_steps % config.steps_per_call:
        raise ValueError("config.num_train_steps must be a multiple of config.steps_per_call")
    if not config.conditional and any(w != 1.0 for w in config.eval.guidance_scales):
        raise ValueError("config.eval.guidance_scales other than 1 need config.conditional = True")
    if config.eval.num_samples < 2:
        raise ValueError(f"config.eval.num_samples must be >= 2, got {config.eval.num_samples}")
    if config.eval.classifier_guidance_scales and not config.conditional:
        raise ValueError("config.eval.classifier_guidance_scales need config.conditional = True "
                         "(class-balanced labels and a null label for the unconditional field)")
    if config.eval.classifier_guidance_scales and any(
            config[m].cond_drop_prob <= 0 for m in config.methods if not is_flow_map(config, m)):
        raise ValueError("config.eval.classifier_guidance_scales guide the unconditional field: "
                         "train with label dropout (config.<method>.cond_drop_prob > 0)")
    if config.data_dir:
        _check_data_dir(config.data_dir)


def _check_data_dir(path: str):
    """A data_dir that is not a readable directory fails here, before any data set is opened."""
    if not os.path.exists(path):
        raise ValueError(f"config.data_dir: {path!r} does not exist")
    if not os.path.isdir(path):
        raise ValueError(f"config.data_dir: {path!r} is not a directory")
    try:
        os.listdir(path)
    except OSError as e:
        raise ValueError(f"config.data_dir: cannot read {path!r} ({e.strerror or e})") from None


# --------------------------------------------------------------------------- data

def make_source(config, split: str):
    """The data set's `split` ("train" or "test") as a random-access source.

    Raises :class:`BadInput` (one line, exit status 2 from the command line)
    if the data set is not prepared in `config.data_dir`.
    """
    if config.dataset == "digits":
        return data.digits_source(split)
    try:
        return data.tfds_source(config.dataset, split, data_dir=config.data_dir or None)
    except ValueError as e:
        raise BadInput(f"config.dataset: {str(e).splitlines()[0]}") from e


def load_images(source, limit: int | None = None, seed: int = 0):
    """Up to `limit` examples of a source (a fixed random subset) as `([N, H, W, C] in [-1, 1], [N])`."""
    n = len(source)
    idx = np.arange(n)
    if limit is not None and limit < n:
        idx = np.sort(np.random.default_rng(seed).choice(n, limit, replace=False))
    examples = [source[int(i)] for i in idx]
    images = np.stack([np.asarray(e["image"]) for e in examples]).astype(np.float32)
    labels = np.asarray([int(e["label"]) for e in examples], np.int32)
    return images / 127.5 - 1.0, labels


def image_shape(source) -> tuple:
    return tuple(np.asarray(source[0]["image"]).shape)


# --------------------------------------------------------------------------- training

def train_method(config, workdir: str, method, source, writer=None):
    """Trains one generator `Method` on `source`'s batches; returns `(state, seconds_per_step)`.

    The state lives on the run's mesh (`config.sharding`); each host reads its
    own rows of every batch (`methods.PipelineBatches`), whose position is
    saved with each checkpoint. A finished run is restored, not trained
    (seconds per step None).
    """
    mesh = make_mesh(config)
    batches = methods.PipelineBatches(config, source, mesh)
    result = train_loop(method, batches, named_key(root_key(config), "train", method.name),
                        config, workdir, name=method.name, tags={"method": method.name},
                        writer=writer, mesh=mesh, strategy=strategy(config))
    return result.state, batches.stop(result.state)


def train_classifier(config, workdir: str, method, images, labels, steps: int, batch_size: int,
                     writer=None):
    """The trained parameters of a classifier `Method` on `(images, labels)` (raw, no EMA)."""
    key = named_key(root_key(config), "train", method.name)
    batches = methods.labelled_batches(images, labels, batch_size, named_key(key, "data"))
    result = train_loop(method, batches, key, methods.classifier_config(config, steps), workdir,
                        name=method.name, tags={"method": method.name}, writer=writer)
    return eval_params(result.state, use_ema=False)


def train_and_evaluate(config, workdir: str):
    """Trains and evaluates every method; returns the result rows (also in results.json)."""
    validate_config(config)
    writer = start_run(config, workdir)
    train_source, test_source = make_source(config, "train"), make_source(config, "test")
    shape = image_shape(train_source)
    table = methods.generators(config, shape)
    states, speed = {}, {}
    for name, method in table.items():
        states[name], speed[name] = train_method(config, workdir, method, train_source, writer)

    train_images, train_labels = load_images(train_source, config.eval.num_reference,
                                             config.seed)
    test_images, test_labels = load_images(test_source)
    clf = methods.classifier(config, shape)
    clf_params = train_classifier(config, workdir, clf, train_images, train_labels,
                                  config.eval.classifier_steps, 128, writer)
    guide, aux = None, [clf]
    if config.eval.classifier_guidance_scales:
        noisy = methods.noisy_classifier(config, shape)
        guide = (noisy.apply_fn, train_classifier(
            config, workdir, noisy, train_images, train_labels,
            config.eval.noisy_classifier_steps, config.batch_size, writer))
        aux.append(noisy)
    key = named_key(root_key(config), "eval")
    evaluating("classifier", "features of training and held-out images")
    scorer = evaluate.Scorer(config, evaluate.classifier_fn(clf, clf_params), train_images,
                             test_images, test_labels, named_key(key, "kid"))
    n = config.eval.num_samples
    labels = None  # unconditional samples
    if config.conditional:
        labels = jnp.arange(n, dtype=jnp.int32) % config.num_classes  # class-balanced
    x0 = jax.random.normal(named_key(key, "x0"), (n,) + shape)
    rows, grids = [], {}
    for name, method in table.items():
        params = eval_params(states[name])
        bpd = None
        if config.eval.bpd_subset:
            evaluating(name, "bits/dim")
            bpd = evaluate.bits_per_dim(config, method, params,
                                        test_images[:config.eval.bpd_subset],
                                        named_key(key, "bpd", name))
        runs = evaluate.solver_runs(config, method, params, x0, labels,
                                    None if is_flow_map(config, name) else guide)
        evaluating(name, "scores")
        for row in evaluate.rows_of(config, method, runs, scorer, labels, bpd, speed[name]):
            rows.append(row)
            writer.write(int(states[name].step), row, phase="eval")
        grids.update({(name, *run): xs for run, (xs, _) in runs.items()})
    if not write_results(workdir, rows):
        return rows
    print(evaluate.format_table(rows))
    if config.plot:
        from experiments.images import plots

        plots.plot_grids(workdir, grids, config.num_classes, test_images, test_labels)
        plots.plot_metrics_vs_nfe(os.path.join(workdir, "metrics_vs_nfe.png"), rows)
        plots.plot_guidance(os.path.join(workdir, "guidance.png"), rows)
        plots.plot_losses(os.path.join(workdir, "loss.png"), writer.read(),
                          [*table.values(), *aux])
    results_in(workdir)
    return rows

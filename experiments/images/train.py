"""Class-conditional image generation: training, sampling and offline metrics.

`train_and_evaluate(config, workdir)` trains every method of the config (a
flow-matching velocity field sampled with classifier-free guidance, or a
MeanFlow flow map sampled in one or a few jumps) on a tensorflow-datasets
image set or the bundled digits, resuming from orbax checkpoints, then scores
class-balanced samples against a classifier trained on the training split
(cached in the workdir): conditional accuracy, a Fréchet distance and KID in
the classifier's feature space, each beside its noise floor (held-out vs
training images), and bits per dimension on a held-out subset.
With `config.eval.classifier_guidance_scales`, a time-dependent classifier is
also trained on noisy images (cached in the workdir) and the unconditional
field (null label) is sampled with classifier guidance at each scale, beside
classifier-free guidance. It writes
`config.json`, `metrics.jsonl`, `results.json`, sample grids per class and a
metric-vs-NFE plot.
"""

from __future__ import annotations

import functools
import importlib
import os
import time
import zlib
from typing import Callable

import diffrax
import equinox as eqx
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import serialization
from tqdm import tqdm

from experiments._devices import make_mesh, strategy, validate_sharding
from experiments._workdir import (BadInput, Preempted, check_nonfinite, restore,
                                  start_run, write_results)
from flowjax import couplings, data, losses, metrics, models, paths, sample, train
from flowjax import time as ftime

LOSSES = ("cfm", "meanflow")
COUPLINGS = ("independent", "exact_ot", "c2ot")
MODELS = ("unet", "dit", "mlp")
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
TIME_SAMPLERS = ("uniform", "logit_normal")


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
                raise ValueError(f"config.{name}.{field} must be one of {allowed}, "
                                 f"got {m[field]!r}")
        if not 0.0 <= m.cond_drop_prob < 1.0:
            raise ValueError(f"config.{name}.cond_drop_prob must lie in [0, 1), "
                             f"got {m.cond_drop_prob!r}")
        if not config.conditional and (m.coupling == "c2ot" or m.cond_drop_prob > 0
                                       or m.guidance_scale != 1.0 or m.guidance_mix != 0.0):
            raise ValueError(f"config.{name}: c2ot, label dropout and guidance need "
                             "config.conditional = True")
    if config.model.name not in MODELS:
        raise ValueError(f"config.model.name must be one of {MODELS}, got {config.model.name!r}")
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


# --------------------------------------------------------------------------- model and loss

def is_flow_map(config, method: str) -> bool:
    return config[method].loss == "meanflow"


def make_module(config, method: str):
    m, two = config.model, is_flow_map(config, method)
    common = dict(num_classes=config.num_classes if config.conditional else None, two_times=two,
                  time_scale=config[method].time_scale)
    if m.name == "unet":
        return models.UNet(channels=m.channels, channel_mult=tuple(m.channel_mult),
                           num_res_blocks=m.num_res_blocks,
                           attention_resolutions=tuple(m.attention_resolutions),
                           num_heads=m.num_heads, dropout=m.dropout, num_groups=m.num_groups,
                           dtype=DTYPES[m.dtype], **common)
    if m.name == "dit":
        return models.DiT(patch_size=m.patch_size, hidden=m.hidden, depth=m.depth,
                          num_heads=m.num_heads, dtype=DTYPES[m.dtype], **common)
    return models.MLP(hidden=tuple(m.mlp_hidden), time_dim=64, **common)


def apply_fn_of(config, method: str):
    module = make_module(config, method)
    return (models.average_model_fn if is_flow_map(config, method) else models.model_fn)(module)


def _coupling(name: str):
    return {"independent": couplings.Independent, "exact_ot": couplings.ExactOT,
            "c2ot": couplings.ConditionAwareOT}[name]()


def _time_sampler(m):
    if m.time_sampler == "uniform":
        return ftime.Uniform()
    return ftime.LogitNormal(m.logit_mean, m.logit_std)


def make_loss(config, method: str, apply_fn):
    """The bound loss `(params, key, batch) -> (loss, aux)` of a method."""
    m = config[method]
    common = dict(apply_fn=apply_fn, path=paths.RectifiedFlow(), coupling=_coupling(m.coupling),
                  cond_drop_prob=m.cond_drop_prob, null_cond=config.num_classes,
                  model_key=config.model.name != "mlp" and config.model.dropout > 0)
    if m.loss == "cfm":
        return functools.partial(losses.cfm_loss, time_sampler=_time_sampler(m), **common)
    return functools.partial(
        losses.meanflow_loss, time_sampler=ftime.OrderedPairs(
            _time_sampler(m), equal_fraction=m.equal_fraction),
        weight_power=m.weight_power, guidance_scale=m.guidance_scale,
        guidance_mix=m.guidance_mix, **common)


def _optimizer(config):
    lr = config.learning_rate
    if config.schedule == "constant":
        schedule = optax.linear_schedule(0.0, lr, max(config.warmup_steps, 1))
    else:
        schedule = optax.warmup_cosine_decay_schedule(0.0, lr, config.warmup_steps,
                                                      config.num_train_steps, end_value=0.1 * lr)
    return optax.chain(optax.clip_by_global_norm(config.grad_clip), optax.adam(schedule))


def _run_key(seed: int, method: str):
    return jax.random.fold_in(jax.random.PRNGKey(seed), zlib.crc32(method.encode()) & 0x7FFFFFFF)


def init_params(config, method: str, shape, key):
    module = make_module(config, method)
    x = jnp.zeros((1,) + tuple(shape))
    t, c = jnp.zeros(1), jnp.zeros(1, jnp.int32)
    extra = (t,) if is_flow_map(config, method) else ()
    return jax.jit(module.init)(key, x, t, c, *extra)["params"]


# --------------------------------------------------------------------------- training

def train_method(config, workdir: str, method: str, writer, source):
    """Trains one method, resuming from its latest checkpoint; returns `(state, seconds_per_step)`.

    The state lives on the run's mesh (`config.sharding`); each host reads its
    own rows of every batch (`ImagePipeline` with its process index), joined
    into one global array. Checkpoints hold the state, the pipeline position
    and the config; on SIGTERM the current step is saved and
    :class:`Preempted` raised. Steps count batches, skipped (non-finite) ones
    included; a logged or saved step that shows
    `config.max_consecutive_nonfinite` skipped steps in a row stops the run
    with :class:`NonFiniteStop` before it saves again.
    """
    apply_fn = apply_fn_of(config, method)
    loss_fn = make_loss(config, method, apply_fn)
    optimizer = _optimizer(config)
    init_key, state_key = jax.random.split(_run_key(config.seed, method))
    shape = np.asarray(source[0]["image"]).shape
    state = train.create_train_state(state_key, init_params(config, method, shape, init_key),
                                     optimizer)
    mesh = make_mesh(config)
    shardings = train.state_shardings(state, mesh, strategy(config))
    state = train.shard(state, shardings)
    k = config.steps_per_call
    rows = train.batch_sharding(mesh, leading=int(k > 1))
    make = train.make_multi_step if k > 1 else train.make_train_step
    step_fn = make(loss_fn, optimizer, ema_decay=config.ema_decay, state_sharding=shardings,
                   batch_sharding=rows)
    pipeline = data.ImagePipeline(source, config.batch_size * k, seed=config.seed,
                                  flip=config.flip)

    ckpt = train.Checkpointer(os.path.join(workdir, "checkpoints", method),
                              save_every=config.checkpoint_every, keep=config.keep_checkpoints,
                              async_save=config.async_checkpoint, catch_sigterm=True)
    restored = restore(ckpt, state)
    if restored is not None:
        state = restored.state
        pipeline.restore(restored.pipeline)
    start = int(state.step + state.nonfinite_total)  # batches used, skipped steps included
    limit = config.max_consecutive_nonfinite
    bar = tqdm(total=config.num_train_steps, initial=start, desc=f"{config.dataset} {method}",
               leave=False, dynamic_ncols=True)
    prev, timed_from, timed_steps = None, None, 0
    try:
        for step in range(start, config.num_train_steps, k):
            batch = next(pipeline)
            if not config.conditional:
                batch = {"x1": batch["x1"]}
            if k > 1:
                batch = jax.tree.map(lambda a: a.reshape((k, -1) + a.shape[1:]), batch)
            state, m = step_fn(state, train.global_batch(batch, rows))
            done = step + k
            if done % config.log_every == 0 or done == config.num_train_steps:
                if prev is not None:  # log the previous record: no host sync on this step
                    writer.write(prev[0], prev[1], **prev[2])
                    check_nonfinite(prev[1], limit, prev[0], ckpt)
                prev = (done, train.summarize_metrics(m), {"method": method})
            if timed_from is None and step > start:  # time after the first (compiling) call
                jax.block_until_ready(state.params)
                timed_from = time.perf_counter()
            elif timed_from is not None:
                timed_steps += k
            bar.update(k)
            preempted = ckpt.reached_preemption(done)
            force = preempted or done == config.num_train_steps
            if force or done % config.checkpoint_every == 0:  # a save syncs anyway
                check_nonfinite(train.summarize_metrics(m), limit, done, ckpt)
            ckpt.save(done, state, pipeline=pipeline.state(), config=config, force=force)
            if preempted:
                raise Preempted(done, ckpt.directory)
    finally:
        ckpt.close()
        bar.close()
    jax.block_until_ready(state.params)
    seconds = (time.perf_counter() - timed_from) / timed_steps if timed_steps else None
    if prev is not None:
        writer.write(prev[0], prev[1], **prev[2])
    return state, seconds


# --------------------------------------------------------------------------- classifier

class Classifier(nn.Module):
    """A small CNN; its penultimate layer is the feature space of the offline metrics."""

    num_classes: int
    width: int = 32
    features: int = 128

    @nn.compact
    def __call__(self, x, train: bool = False):
        for i, mult in enumerate((1, 2, 4)):
            x = nn.gelu(nn.Conv(self.width * mult, (3, 3))(x))
            if min(x.shape[1:3]) >= 2 and i > 0:
                x = nn.avg_pool(x, (2, 2), (2, 2))
        feats = nn.gelu(nn.Dense(self.features)(x.reshape(x.shape[0], -1)))
        feats = nn.Dropout(0.3)(feats, deterministic=not train)
        return nn.Dense(self.num_classes)(feats), feats


def _train_classifier(config, images, labels):
    module = Classifier(config.num_classes)
    key = jax.random.PRNGKey(config.seed + 17)
    params = module.init(key, jnp.asarray(images[:1]))["params"]
    opt = optax.adamw(optax.cosine_decay_schedule(1e-3, config.eval.classifier_steps), 1e-4)
    opt_state = opt.init(params)

    @jax.jit
    def step(params, opt_state, key):
        k_idx, k_noise, k_drop = jax.random.split(key, 3)
        idx = jax.random.randint(k_idx, (128,), 0, images.shape[0])
        x = jnp.asarray(images)[idx]
        x = x + 0.05 * jax.random.normal(k_noise, x.shape)  # robust to slight generator noise

        def loss(p):
            logits, _ = module.apply({"params": p}, x, train=True, rngs={"dropout": k_drop})
            return optax.softmax_cross_entropy_with_integer_labels(
                logits, jnp.asarray(labels)[idx]).mean()

        grads = jax.grad(loss)(params)
        updates, opt_state = opt.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state

    for i in range(config.eval.classifier_steps):
        params, opt_state = step(params, opt_state, jax.random.fold_in(key, i))
    return params


class NoisyClassifier(nn.Module):
    """A small CNN on noisy images `x_t` whose features are shifted by an embedding of t.

    The time-dependent classifier of classifier guidance: trained with
    `flowjax.losses.classifier_loss` on the points of the generator's path.
    """

    num_classes: int
    width: int = 32

    @nn.compact
    def __call__(self, x, t):
        emb = nn.silu(models.Conditioning(dim=4 * self.width)(t))
        for i, mult in enumerate((1, 2, 4)):
            x = nn.Conv(self.width * mult, (3, 3))(x)
            x = nn.gelu(x + nn.Dense(self.width * mult)(emb)[:, None, None, :])
            if min(x.shape[1:3]) >= 2 and i > 0:
                x = nn.avg_pool(x, (2, 2), (2, 2))
        x = nn.gelu(nn.Dense(128)(x.reshape(x.shape[0], -1)) + nn.Dense(128)(emb))
        return nn.Dense(self.num_classes)(x)


def noisy_classifier(config, workdir, images, labels):
    """`(classifier_fn, params)` of the time-dependent classifier, trained once and cached.

    `classifier_fn(params, x, t) -> logits`; trained with
    `losses.classifier_loss` on the generator's path (rectified flow) for
    `config.eval.noisy_classifier_steps` Adam steps, and stored as
    `noisy_classifier.msgpack` (flax msgpack) in the workdir.
    """
    module = NoisyClassifier(config.num_classes)

    def classifier_fn(params, x, t):
        return module.apply({"params": params}, x, t)

    path = os.path.join(workdir, "noisy_classifier.msgpack")
    key = jax.random.PRNGKey(config.seed + 29)
    init = functools.partial(module.init, key, jnp.zeros((1,) + images.shape[1:]), jnp.zeros(1))
    if os.path.exists(path):
        with open(path, "rb") as f:
            return classifier_fn, serialization.from_bytes(jax.eval_shape(init)["params"],
                                                           f.read())
    steps = config.eval.noisy_classifier_steps
    opt = optax.adam(optax.warmup_cosine_decay_schedule(0.0, 1e-3, min(100, steps // 10 + 1),
                                                        steps, end_value=1e-4))
    params = jax.jit(init)()["params"]  # one compiled program: eager init is ~7 s on CPU
    state = train.create_train_state(jax.random.fold_in(key, 1), params, opt)
    loss = functools.partial(losses.classifier_loss, apply_fn=classifier_fn,
                             path=paths.RectifiedFlow())
    step = train.make_train_step(loss, opt)
    images, labels = jnp.asarray(images), jnp.asarray(labels)
    for i in tqdm(range(steps), desc="noisy classifier", leave=False, dynamic_ncols=True):
        idx = jax.random.randint(jax.random.fold_in(key, i), (config.batch_size,), 0,
                                 images.shape[0])
        state, _ = step(state, {"x1": images[idx], "cond": labels[idx]})
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(serialization.to_bytes(state.params))
    os.replace(tmp, path)  # never a half-written cache
    return classifier_fn, state.params


def classifier_fn(config, workdir, train_images, train_labels):
    """`fn(images) -> (logits, features)` of the workdir's classifier, trained once and cached.

    The parameters are stored with flax's msgpack serialization (no pickling).
    """
    module = Classifier(config.num_classes)
    path = os.path.join(workdir, "classifier.msgpack")
    template = jax.eval_shape(lambda: module.init(jax.random.PRNGKey(0),
                                                  jnp.zeros((1,) + train_images.shape[1:])))
    if os.path.exists(path):
        with open(path, "rb") as f:
            params = serialization.from_bytes(template["params"], f.read())
    else:
        params = _train_classifier(config, train_images, train_labels)
        tmp = path + ".tmp"
        with open(tmp, "wb") as f:
            f.write(serialization.to_bytes(params))
        os.replace(tmp, path)  # never a half-written cache
    apply = jax.jit(lambda x: module.apply({"params": params}, x))
    return lambda images: _in_chunks(apply, images)


def _in_chunks(fn, images, size=512):
    outs = [fn(jnp.asarray(images[i:i + size])) for i in range(0, len(images), size)]
    return tuple(np.concatenate([np.asarray(o[j]) for o in outs]) for j in range(len(outs[0])))


def feature_fn(config, workdir, train_images, train_labels):
    """`fn(images) -> (logits or None, features)`: the classifier, or a user's extractor.

    `config.eval.features = "package.module:factory"` loads a user-supplied
    extractor, `factory(weights_path) -> fn(images [N, H, W, C] in [-1, 1]) ->
    features [N, F]` (for example Inception-v3 pool features for true FID);
    conditional accuracy then still uses the classifier.
    """
    clf = classifier_fn(config, workdir, train_images, train_labels)
    if config.eval.features == "classifier":
        return clf, clf
    module_name, _, factory = config.eval.features.partition(":")
    extractor = getattr(importlib.import_module(module_name), factory)(
        config.eval.feature_weights or None)
    return clf, lambda images: (None, np.asarray(extractor(images)))


# --------------------------------------------------------------------------- evaluation

class Scorer:
    """Scores samples against held-out and training features, with noise floors."""

    def __init__(self, config, workdir, train_images, train_labels, test_images, test_labels):
        self.classify, self.features = feature_fn(config, workdir, train_images, train_labels)
        n = config.eval.num_samples
        self.ref = self.features(train_images)[1]
        test_feats = self.features(test_images[:n])[1]
        logits = self.classify(test_images)[0]
        self.floor = {
            "classifier_accuracy": float(np.mean(np.argmax(logits, -1) == test_labels)),
            "fd_floor": metrics.frechet_distance(test_feats, self.ref),
            "kid_floor": metrics.kernel_distance(test_feats, self.ref, key=jax.random.key(0))[0],
        }

    def __call__(self, images, labels=None):
        """Metrics of samples; the conditional accuracy needs the labels they were drawn with."""
        feats = self.features(images)[1]
        fd = metrics.frechet_distance(feats, self.ref)
        accuracy = None
        if labels is not None:
            accuracy = float(np.mean(np.argmax(self.classify(images)[0], -1) == labels))
        return {"accuracy": accuracy, "fd": fd,
                "kid": metrics.kernel_distance(feats, self.ref, key=jax.random.key(0))[0],
                "fd_ratio": fd / max(self.floor["fd_floor"], 1e-12), **self.floor}


def _solver_runs(config, method, apply_fn, params, x0, labels, guide=None):
    """`{(sampler, steps, scale): (samples, nfe)}` for one method.

    `guide = (classifier_fn, classifier_params)` adds classifier guidance of
    the unconditional field at `config.eval.classifier_guidance_scales`
    (sampler `cg-euler`).
    """
    out = {}
    if is_flow_map(config, method):
        flow_map = sample.ModelFlowMap(apply_fn, params, labels)
        for n in config.eval.flow_map_steps:
            sol = sample.solve_flow_map(flow_map, x0, num_steps=n)
            scale = config[method].guidance_scale / (1 - config[method].guidance_mix)
            out[("meanflow", n, scale)] = (np.asarray(sol.samples), int(sol.nfe))
        return out
    for scale in config.eval.guidance_scales:
        if scale == 1.0:
            velocity = sample.ModelVelocity(apply_fn, params, labels)
        else:
            velocity = sample.ClassifierFreeGuidance(
                apply_fn, params, labels, null_cond=config.num_classes, guidance_scale=scale,
                interval=tuple(config.eval.guidance_interval))
        grids = [("euler", diffrax.Euler(), n) for n in config.eval.euler_steps]
        grids += [("midpoint", diffrax.Midpoint(), n) for n in config.eval.midpoint_steps]
        for name, solver, n in grids:
            sol = sample.solve_ode(velocity, x0, solver=solver, num_steps=n)
            out[(name, n, scale)] = (np.asarray(sol.samples), int(sol.nfe))
        if config.eval.adaptive:
            sol = sample.solve_ode(velocity, x0, adaptive=sample.Adaptive(config.eval.rtol,
                                                                          config.eval.rtol))
            out[("dopri5", None, scale)] = (np.asarray(sol.samples), int(sol.nfe))
    if guide is not None:
        classifier, classifier_params = guide
        null = jnp.full_like(labels, config.num_classes)  # the unconditional field
        n = config.eval.classifier_guidance_steps
        for scale in config.eval.classifier_guidance_scales:
            guided = sample.ClassifierGuidance(
                sample.ModelVelocity(apply_fn, params, null), classifier, classifier_params,
                labels, paths.RectifiedFlow(), guidance_scale=float(scale),
                interval=tuple(config.eval.classifier_guidance_interval))
            sol = sample.solve_ode(guided, x0, solver=diffrax.Euler(), num_steps=n)
            out[("cg-euler", n, float(scale))] = (np.asarray(sol.samples), int(sol.nfe))
    return out


class _Instantaneous(eqx.Module):
    """The instantaneous field `u(x, t, t)` of a flow-map model, as a velocity model."""

    apply_fn: Callable = eqx.field(static=True)

    def __call__(self, params, x, t, cond):
        return self.apply_fn(params, x, t, t, cond)


def bits_per_dim(config, method, apply_fn, params, images):
    """Mean bits/dim of `images` under the unconditional field (null label), Dopri5."""
    null = jnp.full(images.shape[:1], config.num_classes, jnp.int32) if config.conditional \
        else None
    model = _Instantaneous(apply_fn) if is_flow_map(config, method) else apply_fn
    velocity = sample.ModelVelocity(model, params, null)
    probes = config.eval.bpd_probes or None
    logp = sample.log_likelihood(velocity, jnp.asarray(images),
                                 key=jax.random.PRNGKey(config.seed + 3) if probes else None,
                                 num_probes=probes).log_prob
    bpd = sample.bits_per_dim(logp, images.shape[1:], num_bins=config.eval.bpd_bins)
    return float(jnp.mean(bpd))


def train_and_evaluate(config, workdir: str):
    """Trains and evaluates every method; returns the result rows (also in results.json)."""
    validate_config(config)
    writer = start_run(config, workdir)
    train_source, test_source = make_source(config, "train"), make_source(config, "test")

    states, speed = {}, {}
    for method in config.methods:
        states[method], speed[method] = train_method(config, workdir, method, writer,
                                                     train_source)

    train_images, train_labels = load_images(train_source, config.eval.num_reference,
                                             config.seed)
    test_images, test_labels = load_images(test_source)
    scorer = Scorer(config, workdir, train_images, train_labels, test_images, test_labels)
    n = config.eval.num_samples
    labels = None  # unconditional samples
    if config.conditional:
        labels = jnp.arange(n, dtype=jnp.int32) % config.num_classes  # class-balanced
    x0 = jax.random.normal(jax.random.PRNGKey(config.seed + 1_000_003),
                           (n,) + test_images.shape[1:])
    guide = None
    if config.eval.classifier_guidance_scales:
        guide = noisy_classifier(config, workdir, train_images, train_labels)
    rows, grids = [], {}
    for method in config.methods:
        apply_fn = apply_fn_of(config, method)
        params = states[method].ema_params
        bpd = None
        if config.eval.bpd_subset:
            bpd = bits_per_dim(config, method, apply_fn, params,
                               test_images[:config.eval.bpd_subset])
        for (sampler, steps, scale), (xs, nfe) in _solver_runs(
                config, method, apply_fn, params, x0, labels,
                None if is_flow_map(config, method) else guide).items():
            row = {"method": method, "sampler": sampler, "steps": steps, "guidance": scale,
                   "nfe": nfe, **scorer(np.clip(xs, -1.0, 1.0),
                                        None if labels is None else np.asarray(labels)),
                   "bpd": bpd, "train_seconds_per_step": speed[method]}
            rows.append(row)
            writer.write(int(states[method].step), row, phase="eval")
            grids[(method, sampler, steps, scale)] = xs
    if not write_results(workdir, rows):
        return rows
    print(format_table(rows))
    if config.plot:
        from experiments.images import plots

        plots.plot_grids(workdir, grids, config.num_classes, test_images, test_labels)
        plots.plot_metrics_vs_nfe(os.path.join(workdir, "metrics_vs_nfe.png"), rows)
        plots.plot_guidance(os.path.join(workdir, "guidance.png"), rows)
    return rows


def format_table(rows) -> str:
    """The results as a Markdown table."""
    lines = ["| method | sampler | guidance | NFE | cond. acc. | FD | FD floor | KID | "
             "KID floor | bits/dim |", "|---" * 10 + "|"]
    for r in rows:
        bpd = "" if r["bpd"] is None else f"{r['bpd']:.3f}"
        acc = "" if r["accuracy"] is None else f"{r['accuracy']:.3f}"
        steps = "" if r["steps"] is None else f"-{r['steps']}"
        lines.append(f"| {r['method']} | {r['sampler']}{steps} | {r['guidance']:g} | {r['nfe']} | "
                     f"{acc} | {r['fd']:.3f} | {r['fd_floor']:.3f} | "
                     f"{r['kid']:.4f} | {r['kid_floor']:.4f} | {bpd} |")
    return "\n".join(lines)

"""The image experiment's methods: generators and classifiers as `experiments._loop.Method`s.

Each config name maps to one object through a table (:data:`LOSSES`,
:data:`COUPLINGS`, :data:`TIME_SAMPLERS`, :data:`MODELS`, :data:`DTYPES`);
:func:`generators` builds the `Method` of every entry of `config.methods`,
:func:`classifier` and :func:`noisy_classifier` the two classifiers of the
evaluation. All of them are trained by :func:`experiments._loop.train_loop`.
"""

from __future__ import annotations

import dataclasses
import functools
import time
from collections.abc import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from experiments._loop import KeyedBatches, Method
from flowjax import couplings, data, losses, models, paths, train
from flowjax import time as ftime

PATH = paths.RectifiedFlow()
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
COUPLINGS = {"independent": couplings.Independent, "exact_ot": couplings.ExactOT,
             "c2ot": couplings.ConditionAwareOT}
TIME_SAMPLERS = {"uniform": lambda m: ftime.Uniform(),
                 "logit_normal": lambda m: ftime.LogitNormal(m.logit_mean, m.logit_std)}


@dataclasses.dataclass(frozen=True)
class Loss:
    """A generator loss: the flowjax loss, its plot name, whether the model takes two times."""

    fn: Callable
    name: str
    flow_map: bool
    options: Callable  # options(method_config) -> the loss's own keyword arguments


LOSSES = {
    "cfm": Loss(losses.cfm_loss, "CFM loss", False,
                lambda m: dict(time_sampler=TIME_SAMPLERS[m.time_sampler](m))),
    "meanflow": Loss(losses.meanflow_loss, "MeanFlow loss", True, lambda m: dict(
        time_sampler=ftime.OrderedPairs(TIME_SAMPLERS[m.time_sampler](m),
                                        equal_fraction=m.equal_fraction),
        weight_power=m.weight_power, guidance_scale=m.guidance_scale,
        guidance_mix=m.guidance_mix)),
}

MODELS = {
    "unet": lambda m, **common: models.UNet(
        channels=m.channels, channel_mult=tuple(m.channel_mult), num_res_blocks=m.num_res_blocks,
        attention_resolutions=tuple(m.attention_resolutions), num_heads=m.num_heads,
        dropout=m.dropout, num_groups=m.num_groups, dtype=DTYPES[m.dtype], **common),
    "dit": lambda m, **common: models.DiT(patch_size=m.patch_size, hidden=m.hidden, depth=m.depth,
                                          num_heads=m.num_heads, dtype=DTYPES[m.dtype], **common),
    "mlp": lambda m, **common: models.MLP(hidden=tuple(m.mlp_hidden), time_dim=64, **common),
}


def is_flow_map(config, method: str) -> bool:
    return LOSSES[config[method].loss].flow_map


def make_module(config, method: str):
    common = dict(num_classes=config.num_classes if config.conditional else None,
                  two_times=is_flow_map(config, method), time_scale=config[method].time_scale)
    return MODELS[config.model.name](config.model, **common)


def apply_fn_of(config, method: str):
    module = make_module(config, method)
    return (models.average_model_fn if is_flow_map(config, method) else models.model_fn)(module)


def optimizer(config):
    lr = config.learning_rate
    if config.schedule == "constant":
        schedule = optax.linear_schedule(0.0, lr, max(config.warmup_steps, 1))
    else:
        schedule = optax.warmup_cosine_decay_schedule(0.0, lr, config.warmup_steps,
                                                      config.num_train_steps, end_value=0.1 * lr)
    return optax.chain(optax.clip_by_global_norm(config.grad_clip), optax.adam(schedule))


def init_params(config, method: str, shape, key):
    x, t, c = jnp.zeros((1,) + tuple(shape)), jnp.zeros(1), jnp.zeros(1, jnp.int32)
    extra = (t,) if is_flow_map(config, method) else ()
    return jax.jit(make_module(config, method).init)(key, x, t, c, *extra)["params"]


def generator(config, method: str, shape) -> Method:
    """The `Method` of `config.<method>` on images of `shape` (H, W, C)."""
    m, loss = config[method], LOSSES[config[method].loss]
    apply_fn = apply_fn_of(config, method)
    bound = functools.partial(
        loss.fn, apply_fn=apply_fn, path=PATH, coupling=COUPLINGS[m.coupling](),
        cond_drop_prob=m.cond_drop_prob, null_cond=config.num_classes,
        model_key=config.model.name != "mlp" and config.model.dropout > 0, **loss.options(m))
    return Method(method, bound, optimizer(config),
                  functools.partial(init_params, config, method, tuple(shape)),
                  apply_fn=apply_fn, loss_name=loss.name)


def generators(config, shape) -> dict[str, Method]:
    """`{name: Method}` for every name of `config.methods`."""
    return {name: generator(config, name, shape) for name in config.methods}


class PipelineBatches:
    """`flowjax.data.ImagePipeline` batches shaped for the loop, timed after the first call.

    Each host reads its own rows (joined into one global array on the
    mesh); with `config.steps_per_call` K > 1 the rows are stacked as
    `[K, B, ...]`. `seconds_per_step()` is the wall time per step from the
    second call (after the compiling one) to `stop()`.
    """

    def __init__(self, config, source, mesh):
        self.k, self.conditional = config.steps_per_call, config.conditional
        self.pipeline = data.ImagePipeline(source, config.batch_size * self.k, seed=config.seed,
                                           flip=config.flip)
        self.rows = train.batch_sharding(mesh, leading=int(self.k > 1))
        self.calls, self.started, self.seconds = 0, None, None

    def __iter__(self):
        return self

    def __next__(self):
        self.calls += 1
        if self.calls == 2:
            self.started = time.perf_counter()
        batch = next(self.pipeline)
        batch = batch if self.conditional else {"x1": batch["x1"]}
        if self.k > 1:
            batch = jax.tree.map(lambda a: a.reshape((self.k, -1) + a.shape[1:]), batch)
        return train.global_batch(batch, self.rows)

    def state(self):
        return self.pipeline.state()

    def restore(self, state):
        """A saved pipeline position, or the loop's `{"next_step": s}` (one call per K steps)."""
        self.pipeline.restore(state if "position" in state
                              else {"position": int(state["next_step"]) // self.k})

    def stop(self, state):
        """Waits for `state`; the seconds per step of the timed calls (None if none was)."""
        jax.block_until_ready(state.params)
        if self.started is not None:
            steps = (self.calls - 1) * self.k
            self.seconds = (time.perf_counter() - self.started) / steps
        return self.seconds


# --------------------------------------------------------------------------- classifiers

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


def _clean_xent(params, key, batch, *, module):
    """Cross-entropy of the feature classifier on slightly noised training images."""
    k_noise, k_drop = jax.random.split(key)
    x = batch["x1"] + 0.05 * jax.random.normal(k_noise, batch["x1"].shape)  # robust to noise
    logits, _ = module.apply({"params": params}, x, train=True, rngs={"dropout": k_drop})
    xent = optax.softmax_cross_entropy_with_integer_labels(logits, batch["cond"]).mean()
    return xent, {"accuracy": jnp.mean(jnp.argmax(logits, -1) == batch["cond"])}


def _init(module, shape, *times):
    def init(key):
        return jax.jit(module.init)(key, jnp.zeros((1,) + tuple(shape)), *times)["params"]

    return init


def classifier(config, shape) -> Method:
    """The feature classifier: AdamW, cosine decay over `config.eval.classifier_steps`."""
    module = Classifier(config.num_classes)
    opt = optax.adamw(optax.cosine_decay_schedule(1e-3, config.eval.classifier_steps), 1e-4)
    return Method("classifier", functools.partial(_clean_xent, module=module), opt,
                  _init(module, shape), apply_fn=module.apply,
                  loss_name="classifier cross-entropy")


def noisy_classifier(config, shape) -> Method:
    """The time-dependent classifier of classifier guidance, on the generators' path."""
    module, steps = NoisyClassifier(config.num_classes), config.eval.noisy_classifier_steps
    opt = optax.adam(optax.warmup_cosine_decay_schedule(0.0, 1e-3, min(100, steps // 10 + 1),
                                                        steps, end_value=1e-4))

    def apply(params, x, t):
        return module.apply({"params": params}, x, t)

    loss = functools.partial(losses.classifier_loss, apply_fn=apply, path=PATH)
    return Method("noisy_classifier", loss, opt, _init(module, shape, jnp.zeros(1)),
                  apply_fn=apply, loss_name="noisy-image classifier cross-entropy")


def labelled_batches(images, labels, batch_size: int, key) -> KeyedBatches:
    """Batches drawn with replacement from `(images, labels)`: `{"x1", "cond"}`."""
    images, labels = jnp.asarray(images), jnp.asarray(labels)

    @jax.jit
    def make(call_key):
        idx = jax.random.randint(call_key, (batch_size,), 0, images.shape[0])
        return {"x1": images[idx], "cond": labels[idx]}

    return KeyedBatches(make, key, steps_per_call=1)


def classifier_config(config, steps: int):
    """The loop settings of a classifier: `steps` single steps, saved as often as the generators."""
    return ml_collections.ConfigDict({
        "seed": config.seed, "num_train_steps": int(steps), "steps_per_call": 1,
        "log_every": min(int(config.log_every), int(steps)),
        "checkpoint_every": min(int(config.checkpoint_every), int(steps)),
        "keep_checkpoints": 1, "max_consecutive_nonfinite": config.max_consecutive_nonfinite,
        "ema_decay": config.ema_decay})


def in_chunks(fn, images, size=512):
    """`fn` over `images` in chunks of `size`, its outputs concatenated as numpy arrays."""
    outs = [fn(jnp.asarray(images[i:i + size])) for i in range(0, len(images), size)]
    return tuple(np.concatenate([np.asarray(o[j]) for o in outs]) for j in range(len(outs[0])))

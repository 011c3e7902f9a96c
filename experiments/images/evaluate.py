"""The image experiment's evaluation: samplers per method, scores with noise floors, the table.

Samples are scored in a classifier's feature space (or a user's extractor,
`config.eval.features = "module:factory"`): the conditional accuracy of the
classifier on them, the Fréchet distance and KID to training images, each
beside its noise floor (held-out against training images); bits per
dimension are the Dopri5 log-likelihood of held-out images under the
unconditional field.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from experiments._loop import evaluating, named_key
from experiments.images.methods import PATH, in_chunks, is_flow_map
from flowjax import metrics, sample


def feature_fn(config, classify):
    """`fn(images) -> (logits or None, features)`: the classifier's, or a user's extractor's.

    `config.eval.features = "package.module:factory"` loads
    `factory(weights_path) -> fn(images [N, H, W, C] in [-1, 1]) -> features [N, F]`
    (for example Inception-v3 pool features for true FID); the conditional
    accuracy still uses the classifier.
    """
    if config.eval.features == "classifier":
        return classify
    module_name, _, factory = config.eval.features.partition(":")
    extractor = getattr(importlib.import_module(module_name), factory)(
        config.eval.feature_weights or None)
    return lambda images: (None, np.asarray(extractor(images)))


def classifier_fn(method, params):
    """`fn(images) -> (logits, features)` of the trained feature classifier, in chunks."""
    apply = jax.jit(lambda x: method.apply_fn({"params": params}, x))
    return lambda images: in_chunks(apply, images)


class Scorer:
    """Scores samples against held-out and training features, with noise floors."""

    def __init__(self, config, classify, train_images, test_images, test_labels, key):
        self.classify, self.features = classify, feature_fn(config, classify)
        self.key = key
        self.ref = self.features(train_images)[1]
        test_feats = self.features(test_images[:config.eval.num_samples])[1]
        logits = self.classify(test_images)[0]
        self.floor = {
            "classifier_accuracy": float(np.mean(np.argmax(logits, -1) == test_labels)),
            "fd_floor": metrics.frechet_distance(test_feats, self.ref),
            "kid_floor": metrics.kernel_distance(test_feats, self.ref, key=key)[0],
        }

    def __call__(self, images, labels=None):
        """Metrics of samples; the conditional accuracy needs the labels they were drawn with."""
        feats = self.features(images)[1]
        fd = metrics.frechet_distance(feats, self.ref)
        accuracy = None
        if labels is not None:
            accuracy = float(np.mean(np.argmax(self.classify(images)[0], -1) == labels))
        return {"accuracy": accuracy, "fd": fd,
                "kid": metrics.kernel_distance(feats, self.ref, key=self.key)[0],
                "fd_ratio": fd / max(self.floor["fd_floor"], 1e-12), **self.floor}


def _run(out, key, velocity, x0, **solve):
    sol = sample.solve_ode(velocity, x0, **solve)
    out[key] = (np.asarray(sol.samples), int(sol.nfe))


def solver_runs(config, method, params, x0, labels, guide=None, *, name=None):
    """`{(sampler, steps, scale): (samples, nfe)}` for one generator `Method`.

    `guide = (classifier_fn, classifier_params)` adds classifier guidance of
    the unconditional field at `config.eval.classifier_guidance_scales`
    (sampler `cg-euler`). Each solver prints an `evaluating` line.
    """
    out, apply_fn, name = {}, method.apply_fn, name or method.name
    if is_flow_map(config, method.name):
        flow_map = sample.ModelFlowMap(apply_fn, params, labels)
        scale = config[method.name].guidance_scale / (1 - config[method.name].guidance_mix)
        for n in config.eval.flow_map_steps:
            evaluating(name, f"flow map, {n} step(s)")
            sol = sample.solve_flow_map(flow_map, x0, num_steps=n)
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
        for solver_name, solver, n in grids:
            evaluating(name, f"{solver_name}, {n} steps, guidance {scale:g}")
            _run(out, (solver_name, n, scale), velocity, x0, solver=solver, num_steps=n)
        if config.eval.adaptive:
            evaluating(name, f"dopri5, guidance {scale:g}")
            _run(out, ("dopri5", None, scale), velocity, x0,
                 adaptive=sample.Adaptive(config.eval.rtol, config.eval.rtol))
    if guide is not None:
        classifier, classifier_params = guide
        null = jnp.full_like(labels, config.num_classes)  # the unconditional field
        n = config.eval.classifier_guidance_steps
        for scale in config.eval.classifier_guidance_scales:
            evaluating(name, f"classifier guidance {float(scale):g}, {n} Euler steps")
            guided = sample.ClassifierGuidance(
                sample.ModelVelocity(apply_fn, params, null), classifier, classifier_params,
                labels, PATH, guidance_scale=float(scale),
                interval=tuple(config.eval.classifier_guidance_interval))
            _run(out, ("cg-euler", n, float(scale)), guided, x0, solver=diffrax.Euler(),
                 num_steps=n)
    return out


class _Instantaneous(eqx.Module):
    """The instantaneous field `u(x, t, t)` of a flow-map model, as a velocity model."""

    apply_fn: Callable = eqx.field(static=True)

    def __call__(self, params, x, t, cond):
        return self.apply_fn(params, x, t, t, cond)


def bits_per_dim(config, method, params, images, key):
    """Mean bits/dim of `images` under the unconditional field (null label), Dopri5."""
    null = jnp.full(images.shape[:1], config.num_classes, jnp.int32) if config.conditional \
        else None
    model = _Instantaneous(method.apply_fn) if is_flow_map(config, method.name) \
        else method.apply_fn
    probes = config.eval.bpd_probes or None
    logp = sample.log_likelihood(sample.ModelVelocity(model, params, null), jnp.asarray(images),
                                 key=named_key(key, "probes") if probes else None,
                                 num_probes=probes).log_prob
    bpd = sample.bits_per_dim(logp, images.shape[1:], num_bins=config.eval.bpd_bins)
    return float(jnp.mean(bpd))


def rows_of(config, method, runs, scorer, labels, bpd, seconds):
    """The result rows of one method's sampler runs."""
    return [{"method": method.name, "sampler": sampler, "steps": steps, "guidance": scale,
             "nfe": nfe, **scorer(np.clip(xs, -1.0, 1.0),
                                  None if labels is None else np.asarray(labels)),
             "bpd": bpd, "train_seconds_per_step": seconds}
            for (sampler, steps, scale), (xs, nfe) in runs.items()]


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

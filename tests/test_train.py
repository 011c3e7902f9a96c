"""Training: scan-fused steps equal single steps, EMA formula, learning, metrics file."""

import functools
import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from flowjax import analytic, losses, models, paths, train


def _setup(hidden=(32, 32)):
    module = models.MLP(hidden=hidden, time_dim=16)
    params = module.init(jax.random.PRNGKey(0), jnp.zeros((1, 2)), jnp.zeros((1,)))["params"]
    loss = functools.partial(losses.cfm_loss, apply_fn=models.model_fn(module),
                             path=paths.RectifiedFlow())
    return module, params, loss


def _batches(k, b=64, seed=1):
    x1 = jax.random.normal(jax.random.PRNGKey(seed), (k, b, 2)) * 0.5 + 2.0
    return {"x1": x1}


def test_multi_step_equals_single_steps():
    _, params, loss = _setup()
    opt = optax.adam(1e-2)
    batches = _batches(5)
    single = train.make_train_step(loss, opt, ema_decay=0.9)
    state = train.create_train_state(jax.random.PRNGKey(3), params, opt)
    losses_single = []
    for i in range(5):
        state, m = single(state, jax.tree.map(lambda x: x[i], batches))
        losses_single.append(float(m["loss"]))
    multi = train.make_multi_step(loss, opt, ema_decay=0.9)
    fused, ms = multi(train.create_train_state(jax.random.PRNGKey(3), params, opt), batches)
    assert int(fused.step) == int(state.step) == 5
    np.testing.assert_allclose(ms["loss"], losses_single, rtol=1e-5)
    for a, b in zip(jax.tree.leaves(fused), jax.tree.leaves(state)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_ema_formula_and_caller_params_survive_donation():
    _, params, loss = _setup()
    opt = optax.sgd(0.1)
    step = train.make_train_step(loss, opt, ema_decay=0.75)
    state = train.create_train_state(jax.random.PRNGKey(0), params, opt)
    new, metrics = step(state, jax.tree.map(lambda x: x[0], _batches(1)))
    for e, p0, p1 in zip(jax.tree.leaves(new.ema_params), jax.tree.leaves(params),
                         jax.tree.leaves(new.params)):
        np.testing.assert_allclose(e, 0.75 * p0 + 0.25 * p1, rtol=1e-6, atol=1e-7)
    assert int(new.step) == 1
    assert set(metrics) >= {"loss", "grad_norm", "update_norm", "param_norm", "mse",
                            "coupling_cost"}
    # The update of plain SGD is -lr * grad, so the norms agree.
    assert float(metrics["update_norm"]) == pytest.approx(0.1 * float(metrics["grad_norm"]),
                                                         rel=1e-5)
    jax.tree.map(np.asarray, params)  # still readable: create_train_state copied them


@pytest.mark.slow
def test_training_learns_the_marginal_velocity():
    """After training on a Gaussian target the net is close to the exact velocity field."""
    module, params, loss = _setup(hidden=(64, 64))
    target = analytic.GaussianMixture.create(jnp.array([[2.0, -1.0]]),
                                             jnp.array([[[0.25, 0.0], [0.0, 0.25]]]))
    opt = optax.adam(3e-3)
    multi = train.make_multi_step(loss, opt, ema_decay=0.99)
    state = train.create_train_state(jax.random.PRNGKey(0), params, opt)
    path, apply_fn = paths.RectifiedFlow(), models.model_fn(module)
    x = jax.random.normal(jax.random.PRNGKey(9), (512, 2))
    t = jax.random.uniform(jax.random.PRNGKey(10), (512,), maxval=0.9)
    exact = analytic.mixture_velocity(path, target, x, t)

    def err(p):
        return float(jnp.mean(jnp.sum((apply_fn(p, x, t) - exact) ** 2, -1))
                     / jnp.mean(jnp.sum(exact ** 2, -1)))

    before = err(state.params)
    for i in range(6):
        x1 = target.sample(jax.random.PRNGKey(100 + i), 100 * 128).reshape(100, 128, 2)
        state, _ = multi(state, {"x1": x1})
    assert before > 0.5
    assert err(state.ema_params) < 0.05


def test_metrics_writer(tmp_path):
    w = train.MetricsWriter(str(tmp_path))
    w.write(10, {"loss": jnp.float32(0.5), "v": jnp.array([1.0, 2.0])}, method="icfm")
    w.write(20, {"loss": float("nan")}, method="icfm")
    rows = w.read()
    assert rows[0] == {"step": 10, "method": "icfm", "loss": 0.5, "v": [1.0, 2.0]}
    assert rows[1]["loss"] == "nan"
    for line in open(w.path):
        json.loads(line)  # strict JSON, one object a line


def test_bad_ema_decay():
    _, _, loss = _setup()
    with pytest.raises(ValueError, match="`ema_decay`"):
        train.make_train_step(loss, optax.sgd(0.1), ema_decay=1.0)


@pytest.mark.parametrize("build", [train.make_train_step, train.make_multi_step])
def test_optimizer_is_checked_when_the_step_is_built(build):
    _, params, loss = _setup(hidden=(4,))
    with pytest.raises(TypeError, match=r"`optimizer` must be an optax.GradientTransformation "
                                        r"\(e.g. optax.adam\(1e-3\)\), got the string 'adam'"):
        build(loss, "adam")
    with pytest.raises(TypeError, match=r"`optimizer` .* got the function adam; .* adam\(...\)"):
        build(loss, optax.adam)
    with pytest.raises(TypeError, match="`loss_fn` must be callable"):
        build(None, optax.adam(1e-3))
    with pytest.raises(TypeError, match="`optimizer` must be an optax.GradientTransformation"):
        train.create_train_state(jax.random.PRNGKey(0), params, "adam")


def test_create_train_state_names_the_bad_leaf():
    with pytest.raises(TypeError, match=r"the leaf at params\['b'\] is dtype int32"):
        train.create_train_state(jax.random.PRNGKey(0), {"w": jnp.ones(2), "b": jnp.arange(2)},
                                 optax.sgd(0.1))
    with pytest.raises(TypeError, match=r"the leaf at params\['f'\] is str"):
        train.create_train_state(jax.random.PRNGKey(0), {"f": "relu"}, optax.sgd(0.1))


def test_summarize_metrics_sums_counts_and_averages_floats_by_dtype():
    """No aux key is known by name: ints and bools are per-step counts, floats are averaged."""
    metrics = {"loss": jnp.array([1.0, jnp.nan, 3.0]), "fell_back": jnp.array([True, False, True]),
               "my_events": jnp.array([2, 0, 5]), "skipped": jnp.array([0, 1, 0]),
               "nonfinite_total": jnp.array([0, 1, 1]),
               "nonfinite_consecutive": jnp.array([0, 1, 0])}
    out = train.summarize_metrics(metrics)
    assert float(out["loss"]) == 2.0
    assert int(out["fell_back"]) == 2 and int(out["my_events"]) == 7 and int(out["skipped"]) == 1
    assert int(out["nonfinite_total"]) == 1 and int(out["nonfinite_consecutive"]) == 0


def test_nonfinite_steps_are_skipped_counted_and_use_fresh_keys():
    """A NaN batch leaves params, EMA, optimizer state and step as they were; counters grow."""
    _, params, loss = _setup(hidden=(16,))

    def keyed_loss(params, key, batch):  # reports each step's key
        value, aux = loss(params, key, batch)
        return value, {**aux, "key": key}

    opt = optax.adam(1e-2)
    batches = _batches(5, b=16)
    batches["x1"] = batches["x1"].at[1:3].set(jnp.nan).at[4, 0, 0].set(jnp.inf)
    multi = train.make_multi_step(keyed_loss, opt, ema_decay=0.9)
    base = jax.random.PRNGKey(3)
    state, m = multi(train.create_train_state(base, params, opt), batches)
    np.testing.assert_array_equal(m["skipped"], [0, 1, 1, 0, 1])
    np.testing.assert_array_equal(m["nonfinite_consecutive"], [0, 1, 2, 0, 1])
    np.testing.assert_array_equal(m["nonfinite_total"], [0, 1, 2, 2, 3])
    counters = (state.step, state.nonfinite_total, state.nonfinite_consecutive)
    assert tuple(int(c) for c in counters) == (2, 3, 1)
    # Each call draws a fresh key, skipped or not: fold_in(key, number of calls so far).
    expected_keys = [jax.random.fold_in(base, i) for i in range(5)]
    np.testing.assert_array_equal(m["key"], np.stack(expected_keys))
    assert np.all(np.isfinite(m["param_norm"]))
    np.testing.assert_array_equal(np.asarray(m["update_norm"])[[1, 2, 4]], 0.0)
    summary = train.summarize_metrics(m)
    assert int(summary["skipped"]) == 3 and int(summary["nonfinite_total"]) == 3
    assert np.isfinite(summary["loss"])  # the mean of the finite steps' losses
    np.testing.assert_allclose(summary["loss"], np.mean(np.asarray(m["loss"])[[0, 3]]), rtol=1e-6)

    # The same run one step at a time: after the skipped steps the state is bit-identical
    # to the state before them (only the counters differ).
    single = train.make_train_step(keyed_loss, opt, ema_decay=0.9)
    s = train.create_train_state(base, params, opt)
    s, _ = single(s, jax.tree.map(lambda x: x[0], batches))
    before = jax.tree.map(np.asarray, s)
    for i in (1, 2):
        s, _ = single(s, jax.tree.map(lambda x, i=i: x[i], batches))
    after = jax.tree.map(np.asarray, s)
    for name in ("params", "ema_params", "opt_state", "step", "key"):
        _assert_equal(getattr(before, name), getattr(after, name))
    assert (int(after.nonfinite_total), int(after.nonfinite_consecutive)) == (2, 2)
    for i in (3, 4):
        s, _ = single(s, jax.tree.map(lambda x, i=i: x[i], batches))
    for a, b in zip(jax.tree.leaves(s), jax.tree.leaves(state), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def _assert_equal(a, b):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_array_equal(x, y)

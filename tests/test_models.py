"""The MLP velocity field: shapes, time embedding, class conditioning."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from flowjax import models


def test_sinusoidal_embedding_values():
    emb = models.sinusoidal_embedding(jnp.array([0.0, 0.5]), 8, scale=1.0)
    assert emb.shape == (2, 8)
    np.testing.assert_allclose(emb[0], [1, 1, 1, 1, 0, 0, 0, 0], atol=1e-7)
    freqs = np.exp(-np.log(10_000.0) * np.arange(4) / 4)
    np.testing.assert_allclose(emb[1, :4], np.cos(0.5 * freqs), rtol=1e-6)
    with pytest.raises(ValueError, match="`dim` must be even"):
        models.sinusoidal_embedding(jnp.zeros(2), 7)


def test_mlp_shapes_time_and_classes():
    module = models.MLP(hidden=(16, 16), time_dim=8, num_classes=3)
    x = jax.random.normal(jax.random.PRNGKey(0), (4, 2, 3))  # any trailing shape
    t = jnp.full((4,), 0.3)
    params = module.init(jax.random.PRNGKey(1), x, t, jnp.zeros((4,), jnp.int32))["params"]
    # The last layer starts at zero (the field starts at v = 0); perturb it to see the inputs.
    params = jax.tree.map(lambda p: p + 0.1 * jax.random.normal(jax.random.PRNGKey(2), p.shape),
                          params)
    apply_fn = models.model_fn(module)
    out = apply_fn(params, x, t, jnp.array([0, 1, 2, 3]))
    assert out.shape == x.shape
    same_x = jnp.broadcast_to(x[:1], x.shape)
    by_class = apply_fn(params, same_x, t, jnp.array([0, 1, 2, 3]))
    assert not np.allclose(by_class[0], by_class[1])
    # No label means the "null" class index num_classes.
    np.testing.assert_allclose(apply_fn(params, same_x, t, None)[0], by_class[3], rtol=1e-6)
    by_time = apply_fn(params, same_x, jnp.array([0.0, 0.5, 1.0, 0.3]), None)
    assert not np.allclose(by_time[0], by_time[1])


def test_mlp_without_time_embedding_is_the_plain_x_t_mlp():
    """`time_dim=None`: TorchCFM's `MLP(time_varying=True)`, `Dense(act(...Dense([x, t])))`."""
    module = models.MLP(hidden=(5, 4), time_dim=None, activation=jax.nn.selu)
    x = jax.random.normal(jax.random.PRNGKey(0), (3, 2))
    t = jnp.array([0.0, 0.25, 1.0])
    params = module.init(jax.random.PRNGKey(1), x, t)["params"]
    params = jax.tree.map(lambda p: p + 0.3 * jnp.cos(jnp.arange(p.size).reshape(p.shape)),
                          params)
    h = np.concatenate([np.asarray(x), np.asarray(t)[:, None]], axis=1)
    for i in range(3):
        layer = params[f"Dense_{i}"]
        h = h @ np.asarray(layer["kernel"]) + np.asarray(layer["bias"])
        h = np.asarray(jax.nn.selu(h)) if i < 2 else h
    np.testing.assert_allclose(module.apply({"params": params}, x, t), h, rtol=1e-5, atol=1e-6)
    assert sum(p.size for p in jax.tree.leaves(params)) == 3 * 5 + 5 + 5 * 4 + 4 + 4 * 2 + 2
    two = models.MLP(hidden=(4,), time_dim=None, two_times=True)
    assert two.init(jax.random.PRNGKey(0), x, t, None, t)["params"]["Dense_0"]["kernel"].shape \
        == (4, 4)  # [x, t, h]
    with pytest.raises(ValueError, match="`num_classes` needs a time embedding"):
        models.MLP(time_dim=None, num_classes=3).init(jax.random.PRNGKey(0), x, t)


def test_fresh_mlp_outputs_zero():
    module = models.MLP(hidden=(8,))
    x = jnp.ones((2, 2))
    params = module.init(jax.random.PRNGKey(0), x, jnp.zeros(2))["params"]
    np.testing.assert_array_equal(module.apply({"params": params}, x, jnp.zeros(2)), 0.0)


IMAGE_MODELS = {  # the DiT first: its cases are the fast ones (the UNet's compile is ~15 s)
    "dit": lambda **kw: models.DiT(patch_size=2, hidden=32, depth=2, num_heads=2, num_classes=3,
                                   two_times=True, time_scale=1.0, **kw),
    "unet": lambda **kw: models.UNet(channels=16, channel_mult=(1, 2), num_res_blocks=1,
                                     attention_resolutions=(4,), num_heads=2, num_groups=8,
                                     num_classes=3, two_times=True, time_scale=1.0, **kw),
}
X = np.random.default_rng(0).normal(size=(4, 8, 8, 3)).astype(np.float32)
LABELS = jnp.array([0, 1, 2, 3])  # 3 is the null class


@pytest.fixture(scope="module")
def image_params():
    """Each image model initialised once, when a test first asks for it (the init compile
    is most of these tests' time), with its fresh output (`"<name>_fresh"`), then perturbed
    on the host so the output depends on every input."""

    class Lazy(dict):
        def __missing__(self, key):
            name = key.removesuffix("_fresh")
            module = IMAGE_MODELS[name]()
            args = (X, jnp.zeros(4), LABELS, jnp.zeros(4))
            params = jax.jit(module.init)(jax.random.PRNGKey(0), *args)["params"]
            self[name + "_fresh"] = jax.jit(module.apply)({"params": params}, *args)
            rng = np.random.default_rng(1)
            self[name] = jax.tree.map(
                lambda p: p + 0.05 * rng.normal(size=p.shape).astype(p.dtype), params)
            return self[key]

    return Lazy()


@pytest.mark.slow
@pytest.mark.fast_cases(1)
@pytest.mark.xdist_group("image_params")  # one worker: the models are initialised once
@pytest.mark.parametrize("name", list(IMAGE_MODELS))
def test_fresh_image_models_output_zero(name, image_params):
    np.testing.assert_array_equal(image_params[name + "_fresh"], 0.0)


@pytest.mark.fast_cases(1)
@pytest.mark.xdist_group("image_params")  # one worker: the models are initialised once
@pytest.mark.parametrize("name", list(IMAGE_MODELS))
def test_image_models_condition_on_time_class_and_duration(name, image_params):
    module = IMAGE_MODELS[name]()
    params = image_params[name]
    apply_fn = jax.jit(models.average_model_fn(module))  # apply_fn(params, x, r, t, cond)
    same = jnp.broadcast_to(X[:1], X.shape)
    r = jnp.full(4, 0.2)
    out = apply_fn(params, same, r, jnp.full(4, 0.7), LABELS)
    assert out.shape == X.shape and out.dtype == X.dtype
    assert not np.allclose(out[0], out[1])  # class
    np.testing.assert_allclose(apply_fn(params, same, r, jnp.full(4, 0.7), None)[0], out[3],
                               rtol=1e-5, atol=1e-6)  # no label = the null class
    assert not np.allclose(out, apply_fn(params, same, r, jnp.full(4, 0.9), LABELS))  # duration
    assert not np.allclose(out, apply_fn(params, same, jnp.full(4, 0.5), jnp.full(4, 1.0),
                                         LABELS))  # time


@pytest.mark.slow
@pytest.mark.xdist_group("image_params")  # one worker: the models are initialised once
@pytest.mark.parametrize("name", list(IMAGE_MODELS))
def test_image_models_in_bfloat16_match_float32(name, image_params):
    params = image_params[name]
    args = (X[:2], jnp.full(2, 0.4), LABELS[:2], jnp.zeros(2))
    ref = jax.jit(IMAGE_MODELS[name]().apply)({"params": params}, *args)
    low = jax.jit(IMAGE_MODELS[name](dtype=jnp.bfloat16).apply)({"params": params}, *args)
    assert low.dtype == jnp.float32
    err = float(jnp.max(jnp.abs(low - ref)) / jnp.max(jnp.abs(ref)))
    assert 0 < err < 0.1


@pytest.mark.slow
@pytest.mark.xdist_group("image_params")  # one worker: the models are initialised once
def test_unet_dropout_and_shape_errors(image_params):
    module = IMAGE_MODELS["unet"](dropout=0.5)  # dropout adds no parameters
    params = image_params["unet"]
    x, t = X[:2], jnp.full(2, 0.5)
    train = jax.jit(lambda k: module.apply({"params": params}, x, t, train=True,
                                           rngs={"dropout": k}))
    assert not np.allclose(train(jax.random.PRNGKey(3)), train(jax.random.PRNGKey(4)))
    evaluate = jax.jit(lambda: module.apply({"params": params}, x, t))
    np.testing.assert_array_equal(evaluate(), evaluate())
    # model_fn: a key means training mode with that dropout rng, none means evaluation.
    apply_fn = jax.jit(models.model_fn(module))
    np.testing.assert_allclose(apply_fn(params, x, t, None, jax.random.PRNGKey(3)),
                               train(jax.random.PRNGKey(3)), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(apply_fn(params, x, t), evaluate(), rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="divisible"):
        module.init(jax.random.PRNGKey(0), jnp.zeros((1, 7, 7, 1)), jnp.zeros(1))
    with pytest.raises(ValueError, match="patch_size"):
        IMAGE_MODELS["dit"]().init(jax.random.PRNGKey(0), jnp.zeros((1, 7, 7, 1)), jnp.zeros(1))


@pytest.mark.fast_cases(1)
@pytest.mark.parametrize("bad", [3 + 1, -1])
def test_labels_outside_num_classes_are_an_error_under_jit(bad):
    """Label num_classes + 1 would give NaN, -1 would wrap to the null class; both raise."""
    module = models.MLP(hidden=(8,), time_dim=4, num_classes=3)
    x, t = jnp.zeros((2, 2)), jnp.full((2,), 0.5)
    params = module.init(jax.random.PRNGKey(0), x, t, jnp.zeros((2,), jnp.int32))["params"]
    apply_fn = jax.jit(models.model_fn(module))
    apply_fn(params, x, t, jnp.array([0, 3]))  # 3 = num_classes: the null label is valid
    with pytest.raises(Exception, match=r"`cond` must hold class labels in \[0, num_classes\) "
                                        r"= \[0, 3\), or 3 \(num_classes\) for no label"):
        jax.block_until_ready(apply_fn(params, x, t, jnp.array([0, bad])))
    with pytest.raises(TypeError, match="`cond` must hold integer class labels"):
        apply_fn(params, x, t, jnp.array([0.0, 1.0]))


@pytest.mark.xdist_group("image_params")  # one worker: the models are initialised once
def test_image_model_labels_are_checked_under_jit(image_params):
    apply_fn = jax.jit(models.average_model_fn(IMAGE_MODELS["dit"]()))
    r, t = jnp.zeros(4), jnp.full(4, 0.5)
    with pytest.raises(Exception, match=r"`cond` must hold class labels in \[0, num_classes\)"):
        jax.block_until_ready(apply_fn(image_params["dit"], X, r, t, jnp.array([0, 1, 2, -1])))


def test_default_time_embedding_is_smooth_in_t():
    """Every default frequency is at most pi rad per unit time (DDPM's scale had 1000)."""
    for model in (models.MLP(), models.UNet(), models.DiT(), models.Conditioning(8)):
        assert model.time_scale == pytest.approx(np.pi)
    t = jnp.linspace(0.0, 1.0, 1001)
    emb = models.sinusoidal_embedding(t, 32)
    assert float(jnp.max(jnp.abs(jnp.diff(emb, axis=0)))) <= np.pi / 1000 + 1e-6
    assert float(jnp.max(jnp.abs(emb[-1] - emb[0]))) > 1.5  # the fastest feature spans [-1, 1]

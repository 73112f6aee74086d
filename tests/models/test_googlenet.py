"""GoogLeNet: the architecture of Table 1, its names, outputs, modes, loss and bad input."""
import numpy as np
import pytest

import tinygnet
import tinygnet.functional as F
from tinygnet.models import (ConvUnit, GoogLeNet, GoogLeNetLoss, GoogLeNetOutputs, Inception,
                             InceptionAux, googlenet_loss, scale_channels)

# The paper's Table 1: (ch1x1, ch3x3red, ch3x3, ch5x5red, ch5x5, pool_proj) and output depth.
TABLE1 = {
    "inception3a": ((64, 96, 128, 16, 32, 32), 256),
    "inception3b": ((128, 128, 192, 32, 96, 64), 480),
    "inception4a": ((192, 96, 208, 16, 48, 64), 512),
    "inception4b": ((160, 112, 224, 24, 64, 64), 512),
    "inception4c": ((128, 128, 256, 24, 64, 64), 512),
    "inception4d": ((112, 144, 288, 32, 64, 64), 528),
    "inception4e": ((256, 160, 320, 32, 128, 128), 832),
    "inception5a": ((256, 160, 320, 32, 128, 128), 832),
    "inception5b": ((384, 192, 384, 48, 128, 128), 1024),
}
SMALL = 1 / 16      # every channel count / 16: a network that runs in milliseconds


def conv_params(c_in, c_out, k, bias=True):
    return c_out * c_in * k * k + (c_out if bias else 0)


def expected_param_count(num_classes, aux):
    """Parameters of the width-1 network counted by hand from Table 1 (with biases)."""
    total = conv_params(3, 64, 7) + conv_params(64, 64, 1) + conv_params(64, 192, 3)
    c_in = 192
    for (a, b_red, b, c_red, c, pool_proj), c_out in TABLE1.values():
        total += (conv_params(c_in, a, 1) + conv_params(c_in, b_red, 1) + conv_params(b_red, b, 3)
                  + conv_params(c_in, c_red, 1) + conv_params(c_red, c, 5)
                  + conv_params(c_in, pool_proj, 1))
        c_in = c_out
    total += 1024 * num_classes + num_classes
    if aux:
        for c_in in (512, 528):
            total += conv_params(c_in, 128, 1) + 2048 * 1024 + 1024 + 1024 * num_classes + num_classes
    return total


def image(n, size, seed=0, dtype=np.float32):
    data = np.random.default_rng(seed).standard_normal((n, 3, size, size)).astype(dtype)
    return tinygnet.tensor(data)


def spatial_sizes(model, x):
    """Output H of each top-level layer, recorded with forward hooks."""
    sizes, handles = {}, []
    for name, child in model.named_children():
        def hook(module, inputs, y, name=name):
            sizes[name] = y.shape[2] if y.ndim == 4 else None
        handles.append(child.register_forward_hook(hook))
    with tinygnet.no_grad():
        model(x)
    for handle in handles:
        handle.remove()
    return sizes


# --------------------------------------------------------------------- architecture
def test_imagenet_width1_matches_table1():
    model = GoogLeNet(config="imagenet")
    for name, (columns, depth) in TABLE1.items():
        block = getattr(model, name)
        assert block.out_channels == depth, name
        a, b_red, b, c_red, c, pool_proj = columns
        assert block.branch1.weight.shape == (a, block.in_channels, 1, 1)
        assert block.branch2_reduce.weight.shape == (b_red, block.in_channels, 1, 1)
        assert block.branch2.weight.shape == (b, b_red, 3, 3)
        assert block.branch3_reduce.weight.shape == (c_red, block.in_channels, 1, 1)
        assert block.branch3.weight.shape == (c, c_red, 5, 5)       # a real 5x5
        assert block.branch4.weight.shape == (pool_proj, block.in_channels, 1, 1)
    assert model.conv1.weight.shape == (64, 3, 7, 7) and model.conv1.stride == (2, 2)
    assert model.conv2_reduce.weight.shape == (64, 64, 1, 1)
    assert model.conv2.weight.shape == (192, 64, 3, 3)
    assert model.aux1.conv.weight.shape == (128, 512, 1, 1)
    assert model.aux2.conv.weight.shape == (128, 528, 1, 1)
    assert model.aux1.fc1.weight.shape == (1024, 2048)
    assert model.aux2.fc2.weight.shape == (1000, 1024)
    assert model.fc.weight.shape == (1000, 1024)
    n_params = sum(p.size for p in model.parameters())
    assert n_params == expected_param_count(1000, aux=True)
    no_aux = GoogLeNet(config="imagenet", aux=False)
    assert sum(p.size for p in no_aux.parameters()) == expected_param_count(1000, aux=False)


def test_state_dict_keys_use_the_spec_names():
    keys = list(GoogLeNet(num_classes=10, config="cifar", width=SMALL).state_dict())
    for key in ["conv1.weight", "conv1.bias", "conv2_reduce.weight", "conv2.bias",
                "inception3a.branch2_reduce.weight", "inception4d.branch4.bias",
                "inception5b.branch3.weight", "aux1.conv.weight", "aux1.fc1.weight",
                "aux2.fc2.bias", "fc.weight", "fc.bias"]:
        assert key in keys, key
    assert keys[:2] == ["conv1.weight", "conv1.bias"]
    # Pools, LRN, ReLU and dropout own no keys: only weights and biases appear.
    assert all(k.rsplit(".", 1)[1] in ("weight", "bias") for k in keys)
    assert not any("pool" in k or "norm" in k or "dropout" in k for k in keys)
    branches = [k.split(".")[1] for k in keys if k.startswith("inception3a.") and k.endswith("weight")]
    assert branches == ["branch1", "branch2_reduce", "branch2", "branch3_reduce", "branch3", "branch4"]
    imagenet_keys = set(GoogLeNet(config="imagenet", width=SMALL).state_dict())
    assert imagenet_keys == set(keys)        # LRN and stem pools add no keys


def test_batchnorm_variant_keys_and_no_conv_bias():
    model = GoogLeNet(num_classes=10, config="imagenet", width=SMALL, batchnorm=True)
    sd = model.state_dict()
    for key in ["inception3a.branch1.weight", "inception3a.branch1.bn.weight",
                "inception3a.branch1.bn.bias", "inception3a.branch1.bn.running_mean",
                "inception3a.branch1.bn.running_var", "conv1.bn.running_var",
                "aux1.conv.bn.weight", "aux1.fc1.bias", "fc.bias"]:
        assert key in sd, key
    assert "inception3a.branch1.bias" not in sd and "conv1.bias" not in sd
    assert not hasattr(model, "norm1") or model.norm1 is None      # no LRN with batch norm
    assert model.norm2 is None


def test_width_scales_every_channel_count():
    assert [scale_channels(c, 0.25) for c in (64, 96, 16, 1)] == [16, 24, 4, 1]
    assert scale_channels(3, 0.5) == 2 and scale_channels(5, 0.1) == 1
    model = GoogLeNet(num_classes=7, config="cifar", width=0.5)
    assert model.conv1.weight.shape == (32, 3, 3, 3)
    assert model.inception3a.branch3.weight.shape == (16, 8, 5, 5)
    assert model.aux1.conv.weight.shape == (64, 256, 1, 1)
    assert model.aux1.fc1.weight.shape == (512, 64 * 16)
    assert model.fc.weight.shape == (7, 512)                  # num_classes is not scaled


@pytest.mark.parametrize("config, size, expected", [
    ("imagenet", 224, dict(conv1=112, pool1=56, conv2=56, pool2=28, inception3b=28, pool3=14,
                           inception4a=14, aux1=None, inception4e=14, pool4=7, inception5b=7,
                           avgpool=1)),
    ("cifar", 32, dict(conv1=32, conv2=32, inception3b=32, pool3=16, inception4e=16, pool4=8,
                       inception5b=8, avgpool=1)),
])
def test_spatial_sizes_follow_the_paper(config, size, expected):
    model = GoogLeNet(num_classes=10, config=config, width=SMALL)
    sizes = spatial_sizes(model, image(2, size))
    for name, h in expected.items():
        assert sizes[name] == h, name
    if config == "cifar":
        assert not hasattr(model, "pool1") and not hasattr(model, "norm1")


def test_stem_stride_2_halves_the_cifar_network():
    model = GoogLeNet(num_classes=10, config="cifar", width=0.25, stem_stride=2)
    assert model.conv1.stride == (2, 2)
    assert model.aux1.fc1.weight.shape == (256, 32 * 4)       # 128 * 2 * 2 inputs, scaled
    sizes = spatial_sizes(model, image(2, 32))
    assert (sizes["conv1"], sizes["inception3b"], sizes["inception4e"], sizes["inception5b"]) \
        == (16, 16, 8, 4)
    out = model(image(2, 32))
    assert out.aux1.shape == out.aux2.shape == (2, 10)
    default = GoogLeNet(num_classes=10, config="cifar", width=0.25)
    assert default.conv1.stride == (1, 1) and default.aux1.fc1.weight.shape == (256, 32 * 16)


# ------------------------------------------------------------------- outputs and modes
def test_train_mode_returns_named_outputs_in_order():
    model = GoogLeNet(num_classes=10, config="cifar", width=SMALL)
    out = model(image(3, 32))
    assert isinstance(out, GoogLeNetOutputs) and out._fields == ("logits", "aux1", "aux2")
    assert all(t.shape == (3, 10) for t in out)
    # aux1 is the head on inception4a, aux2 the head on inception4d.
    seen = {}
    for name in ("inception4a", "inception4d"):
        getattr(model, name).register_forward_hook(lambda m, i, y, name=name: seen.update({name: y}))
    model.dropout.p = model.aux1.dropout.p = model.aux2.dropout.p = 0.0
    out = model(image(3, 32))
    with tinygnet.no_grad():
        np.testing.assert_allclose(out.aux1.numpy(), model.aux1(seen["inception4a"]).numpy(), rtol=1e-6)
        np.testing.assert_allclose(out.aux2.numpy(), model.aux2(seen["inception4d"]).numpy(), rtol=1e-6)
    no_aux = GoogLeNet(num_classes=10, config="cifar", width=SMALL, aux=False)
    out = no_aux(image(2, 32))
    assert out.aux1 is None and out.aux2 is None and out.logits.shape == (2, 10)
    assert not any(k.startswith("aux") for k in no_aux.state_dict())


def test_eval_mode_returns_logits_and_never_runs_the_aux_heads():
    model = GoogLeNet(num_classes=10, config="cifar", width=SMALL)
    calls = []
    for head in (model.aux1, model.aux2):
        head.register_forward_hook(lambda m, i, y: calls.append(m))
    model.train()
    model(image(2, 32))
    assert len(calls) == 2
    model.eval()
    logits = model(image(2, 32))
    assert isinstance(logits, tinygnet.Tensor) and logits.shape == (2, 10)
    assert len(calls) == 2                       # no new calls in eval mode


def test_heads_in_eval_mode_are_all_three_heads_on_running_statistics():
    """heads(x) in eval mode: the main logits of model(x), and each aux head on its own
    Inception output, with dropout off and batch norm on its running statistics (so each
    image's logits do not depend on the rest of the batch)."""
    model = GoogLeNet(num_classes=10, config="cifar", width=SMALL, batchnorm=True)
    rng = np.random.default_rng(3)
    for name, buffer in model.named_buffers():
        values = rng.uniform(0.5, 2.0, buffer.shape) if name.endswith("var") else \
            rng.standard_normal(buffer.shape)
        buffer.data[...] = values.astype(np.float32)
    seen = {}
    for name in ("inception4a", "inception4d"):
        getattr(model, name).register_forward_hook(lambda m, i, y, name=name: seen.update({name: y}))
    model.eval()
    x = image(4, 32)
    with tinygnet.no_grad():
        out = model.heads(x)
        assert isinstance(out, GoogLeNetOutputs) and not model.training
        np.testing.assert_array_equal(out.logits.numpy(), model(x).numpy())
        np.testing.assert_allclose(out.aux1.numpy(), model.aux1(seen["inception4a"]).numpy(),
                                   rtol=1e-6)
        np.testing.assert_allclose(out.aux2.numpy(), model.aux2(seen["inception4d"]).numpy(),
                                   rtol=1e-6)
        first = model.heads(tinygnet.tensor(x.numpy()[:1]))
        for whole, alone in zip(out, first):
            np.testing.assert_allclose(alone.numpy(), whole.numpy()[:1], rtol=1e-4, atol=1e-5)
        model.train()                  # batch statistics: the first image's logits change
        assert not np.allclose(model.heads(x).aux1.numpy(), out.aux1.numpy(), atol=1e-3)
    no_aux = GoogLeNet(num_classes=10, config="cifar", width=SMALL, aux=False).eval()
    logits, aux1, aux2 = no_aux.heads(image(2, 32))
    assert logits.shape == (2, 10) and aux1 is None and aux2 is None


def test_heads_in_train_mode_is_the_training_forward():
    model = GoogLeNet(num_classes=10, config="cifar", width=SMALL, batchnorm=True, dropout=0.0,
                      aux_dropout=0.0)
    x = image(3, 32)
    with tinygnet.no_grad():
        for got, expected in zip(model.heads(x), model(x)):
            np.testing.assert_array_equal(got.numpy(), expected.numpy())
    assert model.training


def test_eval_is_deterministic_and_dropout_acts_in_train():
    model = GoogLeNet(num_classes=10, config="cifar", width=0.25)
    x = image(2, 32)
    model.eval()
    with tinygnet.no_grad():
        a, b = model(x).numpy(), model(x).numpy()
    np.testing.assert_array_equal(a, b)
    model.train()
    tinygnet.manual_seed(1)
    with tinygnet.no_grad():
        c = model(x).logits.numpy()
    assert not np.allclose(a, c)


def test_inception_concatenates_branches_in_order():
    tinygnet.manual_seed(0)
    block = Inception(6, 2, 3, 4, 2, 3, 5).to(dtype=np.float64)
    for p in block.parameters():
        p.data[...] = np.random.default_rng(p.size).standard_normal(p.shape)
    x = tinygnet.tensor(np.random.default_rng(1).standard_normal((2, 6, 5, 5)))
    y = block(x).numpy()
    assert y.shape == (2, 14, 5, 5) and block.out_channels == 14

    def unit(conv, x):         # a conv unit by hand: conv + ReLU
        return F.relu(F.conv2d(x, conv.weight, conv.bias, padding=conv.padding))

    b1 = unit(block.branch1, x)
    b2 = unit(block.branch2, unit(block.branch2_reduce, x))
    b3 = unit(block.branch3, unit(block.branch3_reduce, x))
    b4 = unit(block.branch4, F.max_pool2d(x, 3, stride=1, padding=1))
    np.testing.assert_allclose(y, np.concatenate([b.numpy() for b in (b1, b2, b3, b4)], axis=1),
                               rtol=1e-12)


def conv_by_hand(x, weight, bias, padding):
    """Cross-correlation with zero padding, stride 1, one kernel offset at a time (NumPy)."""
    O, _, KH, KW = weight.shape
    x = np.pad(x, ((0, 0), (0, 0), (padding, padding), (padding, padding)))
    OH, OW = x.shape[2] - KH + 1, x.shape[3] - KW + 1
    y = np.zeros((x.shape[0], O, OH, OW))
    for kh in range(KH):
        for kw in range(KW):
            y += np.einsum("nchw,oc->nohw", x[:, :, kh:kh + OH, kw:kw + OW], weight[:, :, kh, kw])
    return y if bias is None else y + bias.reshape(1, -1, 1, 1)


def randomise(module, rng):
    """Every parameter drawn at random (both signs), batch-norm scales kept positive."""
    for name, p in module.named_parameters():
        p.data[...] = (rng.uniform(0.5, 2.0, p.shape) if name.endswith("bn.weight")
                       else rng.standard_normal(p.shape))


@pytest.mark.parametrize("batchnorm", [False, True])
def test_conv_unit_is_relu_of_batch_norm_of_conv_in_train_and_eval(batchnorm):
    """ConvUnit = conv -> (batch norm) -> ReLU, checked against NumPy in both modes: training
    normalises with the batch's statistics and updates the running ones, evaluation uses
    the running ones and leaves them alone."""
    rng = np.random.default_rng(0)
    unit = ConvUnit(3, 4, 3, padding=1, batchnorm=batchnorm).to(dtype=np.float64)
    randomise(unit, rng)
    x = rng.standard_normal((5, 3, 6, 6))
    z = conv_by_hand(x, unit.weight.numpy(), None if batchnorm else unit.bias.numpy(), 1)
    if not batchnorm:
        for train in (True, False):
            unit.train(train)
            np.testing.assert_allclose(unit(tinygnet.tensor(x)).numpy(), np.maximum(z, 0),
                                       rtol=1e-10, atol=1e-12)
        return
    bn = unit.bn
    bn.running_mean.data[...] = rng.standard_normal(4)
    bn.running_var.data[...] = rng.uniform(0.5, 2.0, 4)
    w, b = bn.weight.numpy().reshape(1, 4, 1, 1), bn.bias.numpy().reshape(1, 4, 1, 1)
    mean_before, var_before = bn.running_mean.numpy().copy(), bn.running_var.numpy().copy()

    unit.train()
    y = unit(tinygnet.tensor(x)).numpy()
    mean, var = z.mean(axis=(0, 2, 3)), z.var(axis=(0, 2, 3))
    z_hat = (z - mean.reshape(1, 4, 1, 1)) / np.sqrt(var.reshape(1, 4, 1, 1) + bn.eps)
    np.testing.assert_allclose(y, np.maximum(z_hat * w + b, 0), rtol=1e-10, atol=1e-12)
    assert 0.2 < (y == 0).mean() < 0.8                      # the ReLU had work to do
    m = 5 * 6 * 6
    np.testing.assert_allclose(bn.running_mean.numpy(), 0.9 * mean_before + 0.1 * mean, rtol=1e-12)
    np.testing.assert_allclose(bn.running_var.numpy(), 0.9 * var_before + 0.1 * var * m / (m - 1),
                               rtol=1e-12)

    unit.eval()
    mean_run, var_run = bn.running_mean.numpy().copy(), bn.running_var.numpy().copy()
    y = unit(tinygnet.tensor(x)).numpy()
    z_hat = (z - mean_run.reshape(1, 4, 1, 1)) / np.sqrt(var_run.reshape(1, 4, 1, 1) + bn.eps)
    np.testing.assert_allclose(y, np.maximum(z_hat * w + b, 0), rtol=1e-10, atol=1e-12)
    np.testing.assert_array_equal(bn.running_mean.numpy(), mean_run)
    np.testing.assert_array_equal(bn.running_var.numpy(), var_run)


@pytest.mark.parametrize("train", [True, False])
def test_inception_aux_head_against_numpy(train):
    """pool 5x5/3 -> 1x1 conv + ReLU -> flatten -> fc1 + ReLU -> (dropout) -> fc2, by hand."""
    rng = np.random.default_rng(1)
    head = InceptionAux(6, num_classes=5, conv_channels=4, fc_channels=7, dropout=0.0)
    head = head.to(dtype=np.float64).train(train)
    randomise(head, rng)
    x = rng.standard_normal((3, 6, 14, 14))
    pooled = np.stack([np.stack([x[:, :, 3 * i:3 * i + 5, 3 * j:3 * j + 5].mean(axis=(2, 3))
                                 for j in range(4)], axis=-1) for i in range(4)], axis=-2)
    h = np.maximum(conv_by_hand(pooled, head.conv.weight.numpy(), head.conv.bias.numpy(), 0), 0)
    a = h.reshape(3, -1) @ head.fc1.weight.numpy().T + head.fc1.bias.numpy()
    assert 0.2 < (a < 0).mean() < 0.8                       # fc1's ReLU changes the result
    expected = np.maximum(a, 0) @ head.fc2.weight.numpy().T + head.fc2.bias.numpy()
    np.testing.assert_allclose(head(tinygnet.tensor(x)).numpy(), expected, rtol=1e-10, atol=1e-10)


def test_inception_aux_head_shapes():
    head = InceptionAux(12, num_classes=5, conv_channels=8, fc_channels=16)
    y = head(tinygnet.tensor(np.ones((2, 12, 14, 14), dtype=np.float32)))
    assert y.shape == (2, 5)
    assert head.fc1.weight.shape == (16, 8 * 16)


def test_float64_forward_and_reproducible_construction():
    tinygnet.manual_seed(3)
    a = GoogLeNet(num_classes=10, config="cifar", width=SMALL)
    tinygnet.manual_seed(3)
    b = GoogLeNet(num_classes=10, config="cifar", width=SMALL).to(dtype=np.float64)
    for (name, u), v in zip(a.state_dict().items(), b.state_dict().values()):
        np.testing.assert_array_equal(u.astype(np.float64), v, err_msg=name)
    b.eval()
    assert b(image(1, 32, dtype=np.float64)).dtype == np.float64


def test_state_dict_round_trip_between_models():
    tinygnet.manual_seed(0)
    source = GoogLeNet(num_classes=10, config="cifar", width=SMALL, batchnorm=True)
    source(image(4, 32))                      # changes the batch-norm running statistics
    target = GoogLeNet(num_classes=10, config="cifar", width=SMALL, batchnorm=True)
    target.load_state_dict(source.state_dict())
    source.eval(), target.eval()
    x = image(2, 32, seed=5)
    np.testing.assert_array_equal(source(x).numpy(), target(x).numpy())


# ------------------------------------------------------------------------------ loss
def test_googlenet_loss_combines_the_heads():
    model = GoogLeNet(num_classes=10, config="cifar", width=SMALL)
    out = model(image(4, 32))
    targets = np.array([0, 3, 9, 1])
    loss = googlenet_loss(out, targets, aux_weight=0.3)
    assert isinstance(loss, GoogLeNetLoss) and loss._fields == ("total", "main", "aux1", "aux2")
    parts = [F.cross_entropy(t, targets).item() for t in out]
    np.testing.assert_allclose([loss.main.item(), loss.aux1.item(), loss.aux2.item()], parts, rtol=1e-6)
    np.testing.assert_allclose(loss.total.item(), parts[0] + 0.3 * (parts[1] + parts[2]), rtol=1e-6)
    smooth = googlenet_loss(out, targets, label_smoothing=0.1)
    np.testing.assert_allclose(smooth.main.item(),
                               F.cross_entropy(out.logits, targets, label_smoothing=0.1).item(),
                               rtol=1e-6)
    # Without aux outputs (eval mode, or aux=False) total is the main loss.
    model.eval()
    eval_loss = googlenet_loss(model(image(4, 32)), targets)
    assert eval_loss.total is eval_loss.main and eval_loss.aux1 is None and eval_loss.aux2 is None
    only_main = googlenet_loss(GoogLeNetOutputs(out.logits, None, None), targets)
    assert only_main.total is only_main.main


def test_googlenet_loss_bad_arguments():
    logits = tinygnet.tensor(np.zeros((2, 3), dtype=np.float32))
    with pytest.raises(ValueError, match="aux_weight must be a number >= 0, got -0.1"):
        googlenet_loss(logits, np.array([0, 1]), aux_weight=-0.1)
    with pytest.raises(TypeError, match="GoogLeNetOutputs or a logits Tensor, got list"):
        googlenet_loss([logits], np.array([0, 1]))


# ------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("kwargs, message", [
    (dict(config="resnet"), "unknown config 'resnet'"),
    (dict(width=0), "width must be a number > 0, got 0"),
    (dict(width=-0.5), "width must be a number > 0, got -0.5"),
    (dict(num_classes=0), "num_classes must be an integer >= 1, got 0"),
    (dict(num_classes=2.5), "num_classes must be an integer >= 1, got 2.5"),
    (dict(config="cifar", stem_stride=3), "stem_stride must be 1 or 2, got 3"),
    (dict(config="imagenet", stem_stride=2), "stem_stride=2 applies to the cifar config only"),
])
def test_bad_constructor_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        GoogLeNet(**kwargs)


@pytest.mark.parametrize("config, shape, expected", [
    ("cifar", (2, 3, 224, 224), r"cifar config\): expected input of shape N x 3 x 32 x 32, "
                                r"got \(2, 3, 224, 224\)"),
    ("cifar", (2, 1, 32, 32), "N x 3 x 32 x 32"),
    ("cifar", (3, 32, 32), "N x 3 x 32 x 32"),
    ("imagenet", (1, 3, 32, 32), r"imagenet config\): expected input of shape N x 3 x 224 x 224"),
])
def test_wrong_input_size_names_the_expected_size(config, shape, expected):
    model = GoogLeNet(num_classes=10, config=config, width=SMALL)
    with pytest.raises(ValueError, match=expected):
        model(tinygnet.tensor(np.zeros(shape, dtype=np.float32)))


def test_load_state_dict_wrong_key_or_shape():
    model = GoogLeNet(num_classes=10, config="cifar", width=SMALL)
    sd = model.state_dict()
    sd["inception3a.branch5.weight"] = sd.pop("inception3a.branch4.weight")
    with pytest.raises(ValueError, match=r"missing keys: inception3a\.branch4\.weight.*"
                                         r"unexpected keys: inception3a\.branch5\.weight"):
        model.load_state_dict(sd)
    other = GoogLeNet(num_classes=100, config="cifar", width=SMALL).state_dict()
    with pytest.raises(ValueError, match=r"fc\.weight: the state dict has \(100, 64\), "
                                         r"the module has \(10, 64\)"):
        model.load_state_dict(other)

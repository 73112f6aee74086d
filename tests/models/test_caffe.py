"""The BVLC GoogLeNet caffemodel: tinygnet's reader and name table against an independent writer.

Synthetic caffemodels are written by the ``protobuf`` package (caffe_writer.py,
Caffe's messages declared at run time) in both formats, with random weights,
in a thin GoogLeNet (width 1/8, the same mapping code); the full-size file (53 MB)
is loaded and classified end to end in tests/demo/test_classify.py. They are
checked three ways: the loaded weights against the same ones
put in through ``load_state_dict``; the loaded layers against Caffe's own
definitions (correlation, pools with Caffe's rounding, LRN, flatten, concat)
computed here in NumPy from the file's raw blobs; and the bad files.
"""
import importlib.util
import os

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from tinygnet.functional.pool import pool_output_size
from tinygnet import nn
from tinygnet.models import GoogLeNet, load_caffe_googlenet
from tinygnet.models.caffemodel import parse_caffemodel, read_caffemodel
from tinygnet.tensor import Tensor, no_grad

_spec = importlib.util.spec_from_file_location(
    "caffe_writer", os.path.join(os.path.dirname(os.path.abspath(__file__)), "caffe_writer.py"))
cw = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(cw)

WIDTH = 1 / 8          # a thin GoogLeNet: conv1 has 8 filters, the aux fc1 128 units
BIAS_STD = 10.0        # not tiny: the input is on the 0-255 scale


def random_state(width, aux=True, seed=0):
    """Random weights for every GoogLeNet layer: He-scaled weights, biases of std BIAS_STD."""
    rng = np.random.default_rng(seed)
    model = GoogLeNet(config="imagenet", width=width, aux=aux)
    state = {}
    for name, tensor in model.state_dict().items():
        shape = tuple(tensor.shape)
        if name.endswith(".weight"):
            fan_in = int(np.prod(shape[1:]))
            state[name] = (rng.standard_normal(shape) * np.sqrt(2 / fan_in)).astype(np.float32)
        else:
            state[name] = (rng.standard_normal(shape) * BIAS_STD).astype(np.float32)
    return state


@pytest.fixture(scope="module")
def thin_state():
    return random_state(WIDTH)


@pytest.fixture(scope="module", params=[1, 2], ids=["V1", "V2"])
def thin_file(request, tmp_path_factory, thin_state):
    """(path, version): a thin GoogLeNet caffemodel with the aux heads, in each format."""
    path = tmp_path_factory.mktemp("caffe") / f"thin_v{request.param}.caffemodel"
    return str(cw.write(path, cw.googlenet_layers(thin_state), request.param)), request.param


@pytest.fixture(scope="module")
def thin(thin_file):
    """(model loaded from thin_file, the file's layers by name)."""
    path, _ = thin_file
    layers = {layer.name: layer for layer in read_caffemodel(path)}
    return load_caffe_googlenet(path, width=WIDTH), layers


def array(t):
    return np.asarray(t.data if isinstance(t, Tensor) else t)


def caffe_weight(layers, name):
    """A layer's raw blobs from the file, as float64, the legacy leading 1s of V1 dropped."""
    weight, bias = (b.astype(np.float64) for b in layers[name].blobs)
    if layers[name].type == "InnerProduct":
        weight = weight.reshape(weight.shape[-2:])
    return weight, bias.reshape(-1)


# --------------------------------------------------------------- Caffe's definitions, in NumPy
def caffe_conv(x, weight, bias, stride=1, pad=0):
    """Caffe's convolution of one C x H x W image: y[o, i, j] = b[o] +
    sum_{c, di, dj} W[o, c, di, dj] * x_padded[c, i*stride + di, j*stride + dj]."""
    _, H, W = x.shape
    _, _, KH, KW = weight.shape
    OH, OW = (H + 2 * pad - KH) // stride + 1, (W + 2 * pad - KW) // stride + 1
    padded = np.pad(x, ((0, 0), (pad, pad), (pad, pad)))
    out = np.zeros((weight.shape[0], OH, OW)) + bias[:, None, None]
    for di in range(KH):
        for dj in range(KW):
            taps = padded[:, di:di + stride * OH:stride, dj:dj + stride * OW:stride]
            out += np.einsum("oc,chw->ohw", weight[:, :, di, dj], taps)
    return out


def caffe_pooled_size(size, kernel, stride, pad):
    """Caffe's PoolingLayer::Reshape: round up, then drop a last window that starts in the
    bottom/right padding (only when there is padding)."""
    pooled = int(np.ceil((size + 2 * pad - kernel) / stride)) + 1
    if pad and (pooled - 1) * stride >= size + pad:
        pooled -= 1
    return pooled


def caffe_pool(x, kernel, stride, pad, method):
    """Caffe's MAX or AVE pooling of one C x H x W image, window by window."""
    C, H, W = x.shape
    OH, OW = caffe_pooled_size(H, kernel, stride, pad), caffe_pooled_size(W, kernel, stride, pad)
    out = np.empty((C, OH, OW))
    for i in range(OH):
        for j in range(OW):
            h0, w0 = i * stride - pad, j * stride - pad
            h1, w1 = min(h0 + kernel, H + pad), min(w0 + kernel, W + pad)
            size = (h1 - h0) * (w1 - w0)                 # AVE divides by the padded window
            h0, w0, h1, w1 = max(h0, 0), max(w0, 0), min(h1, H), min(w1, W)
            window = x[:, h0:h1, w0:w1]
            out[:, i, j] = window.max(axis=(1, 2)) if method == "max" else \
                window.sum(axis=(1, 2)) / size
    return out


def caffe_lrn(x, local_size=5, alpha=1e-4, beta=0.75, k=1.0):
    """Caffe's ACROSS_CHANNELS LRN: x / (k + alpha/local_size * sum of x^2 over local_size
    channels centred on each)^beta."""
    C = x.shape[0]
    half = local_size // 2
    squares = np.pad(x ** 2, ((half, half), (0, 0), (0, 0)))
    window_sums = sum(squares[d:d + C] for d in range(local_size))
    return x * (k + alpha / local_size * window_sums) ** -beta


def relu(x):
    return np.maximum(x, 0)


def run(layer, x):
    """A tinygnet layer (eval mode) on one float64 C x H x W image, back as float64."""
    with no_grad():
        return array(layer(Tensor(x[None].astype(np.float32)))).astype(np.float64)[0]


# --------------------------------------------------------------- the file against load_state_dict
def test_loaded_weights_are_the_files(thin, thin_state):
    model, _ = thin
    assert not model.training and model.aux1 is not None and model.aux2 is not None
    loaded = model.state_dict()
    assert sorted(loaded) == sorted(thin_state)
    for name, value in thin_state.items():
        assert array(loaded[name]).dtype == np.float32
        np.testing.assert_array_equal(array(loaded[name]), value, err_msg=name)


def test_heads_match_the_same_weights_put_in_by_load_state_dict(thin, thin_state, rng):
    model, _ = thin
    reference = GoogLeNet(config="imagenet", width=WIDTH).eval()
    reference.load_state_dict(thin_state)
    x = Tensor((rng.standard_normal((1, 3, 224, 224)) * 60).astype(np.float32))
    with no_grad():
        got, expected = model.heads(x), reference.heads(x)
    for name in ("logits", "aux1", "aux2"):
        assert getattr(got, name).shape == (1, 1000)
        np.testing.assert_allclose(array(getattr(got, name)), array(getattr(expected, name)),
                                   rtol=1e-5, atol=1e-4, err_msg=name)


# --------------------------------------------------------------- each layer against Caffe's maths
def test_conv1_is_caffes_correlation_of_the_bgr_input(thin, rng):
    """conv1 on a BGR image = Caffe's correlation with the file's blob, channel for channel:
    a kernel flipped, a BGR/RGB swap or a dropped bias each changes it."""
    model, layers = thin
    x = rng.standard_normal((3, 15, 17)) * 60                        # B, G, R planes
    weight, bias = caffe_weight(layers, "conv1/7x7_s2")
    np.testing.assert_allclose(run(model.conv1, x), relu(caffe_conv(x, weight, bias, 2, 3)),
                               rtol=1e-4, atol=1e-3)


def test_inception_branches_are_concatenated_in_caffes_order(thin, rng):
    """inception_3a/output = concat(1x1, 3x3, 5x5, pool_proj), each from the file's blobs."""
    model, layers = thin
    module = model.inception3a
    x = rng.standard_normal((module.in_channels, 6, 7)) * 10

    def conv(name, inputs, pad=0):
        return relu(caffe_conv(inputs, *caffe_weight(layers, f"inception_3a/{name}"), pad=pad))

    expected = np.concatenate([
        conv("1x1", x),
        conv("3x3", conv("3x3_reduce", x), pad=1),
        conv("5x5", conv("5x5_reduce", x), pad=2),
        conv("pool_proj", caffe_pool(x, 3, 1, 1, "max"))])
    np.testing.assert_allclose(run(module, x), expected, rtol=1e-4, atol=1e-3)


@pytest.mark.parametrize("loss, head", [("loss1", "aux1"), ("loss2", "aux2")])
def test_aux_head_is_caffes_loss_branch(thin, rng, loss, head):
    """ave_pool 5/3 (Caffe's rounding), 1x1 conv, ReLU, flatten in (C, H, W) order, fc, ReLU,
    dropout (off at test), classifier: from the file's blobs, on a 14 x 14 map."""
    model, layers = thin
    module = getattr(model, head)
    x = rng.standard_normal((module.conv.in_channels, 14, 14)) * 10
    pooled = caffe_pool(x, 5, 3, 0, "ave")                               # C x 4 x 4
    features = relu(caffe_conv(pooled, *caffe_weight(layers, f"{loss}/conv"))).reshape(-1)
    weight, bias = caffe_weight(layers, f"{loss}/fc")
    hidden = relu(weight @ features + bias)
    weight, bias = caffe_weight(layers, f"{loss}/classifier")
    np.testing.assert_allclose(run(module, x), weight @ hidden + bias, rtol=1e-4, atol=1e-3)


def test_pool5_and_the_classifier_are_caffes(thin, rng):
    """pool5/7x7_s1 (a 7x7 average, stride 1, on the 7x7 map) then loss3/classifier."""
    model, layers = thin
    x = rng.standard_normal((model.fc.in_features, 7, 7)) * 10
    weight, bias = caffe_weight(layers, "loss3/classifier")
    expected = weight @ caffe_pool(x, 7, 1, 0, "ave").reshape(-1) + bias
    with no_grad():
        got = model.fc(model.avgpool(Tensor(x[None].astype(np.float32))).flatten(1))
    np.testing.assert_allclose(array(got)[0], expected, rtol=1e-4, atol=1e-3)


@pytest.mark.parametrize("kernel, stride, pad", [(3, 2, 0), (3, 1, 1), (5, 3, 0), (3, 2, 1),
                                                 (2, 2, 1), (3, 3, 1)])   # the last two clip
def test_pool_output_sizes_are_caffes(kernel, stride, pad):
    """Caffe rounds a pool's output size up and drops a window that would start in the
    padding; tinygnet's ceil_mode does the same for every size where the window fits."""
    for size in range(max(kernel - 2 * pad, 1), 60):
        assert pool_output_size(size, kernel, stride, pad, True) == \
            caffe_pooled_size(size, kernel, stride, pad), size


def test_googlenet_max_pools_are_caffes_on_uneven_maps(rng):
    """GoogLeNet's 3x3/2 pools (ceil_mode) against Caffe's MAX pooling, windows hanging past
    the edge included (112 -> 56 in the stem; 15 -> 8 here)."""
    x = rng.standard_normal((2, 15, 12))
    np.testing.assert_allclose(run(nn.MaxPool2d(3, stride=2, ceil_mode=True), x),
                               caffe_pool(x, 3, 2, 0, "max"), rtol=1e-6)
    model = GoogLeNet(config="imagenet", width=WIDTH, aux=False)
    assert run(model.pool1, rng.standard_normal((1, 112, 112))).shape == (1, 56, 56)


def test_aux_average_pool_matches_caffe_at_14_pixels(thin, rng):
    """The aux heads' AvgPool2d(5, 3) rounds down, Caffe's up: the same 4 x 4 windows on the
    14 x 14 maps of the imagenet config."""
    model, _ = thin
    x = rng.standard_normal((3, 14, 14))
    np.testing.assert_allclose(run(model.aux1.pool, x), caffe_pool(x, 5, 3, 0, "ave"),
                               rtol=1e-5, atol=1e-6)


def test_lrn_is_caffes(thin, rng):
    """norm1 and norm2: Caffe divides alpha by local_size (as PyTorch's LocalResponseNorm does)."""
    model, _ = thin
    x = rng.standard_normal((7, 4, 5)) * 150          # large enough for LRN to matter
    for norm in (model.norm1, model.norm2):
        np.testing.assert_allclose(run(norm, x), caffe_lrn(x), rtol=1e-5)
    assert not np.allclose(caffe_lrn(x), x, rtol=1e-2)


# --------------------------------------------------------------- formats and files
def test_deploy_file_without_aux_layers_gives_a_model_without_aux_heads(tmp_path):
    state = random_state(WIDTH, aux=False, seed=1)
    path = cw.write(tmp_path / "deploy.caffemodel", cw.googlenet_layers(state, aux=False), 2)
    model = load_caffe_googlenet(str(path), width=WIDTH)
    assert model.aux1 is None and model.aux2 is None
    np.testing.assert_array_equal(array(model.state_dict()["fc.weight"]), state["fc.weight"])


def test_reader_keeps_every_layer_and_its_type(thin_file):
    path, _ = thin_file
    layers = read_caffemodel(path)
    assert [layer.name for layer in layers] == [name for name, _, _ in cw.bvlc_layout()]
    assert [layer.type for layer in layers] == [kind for _, _, kind in cw.bvlc_layout()]
    assert all(len(layer.blobs) == (2 if ours else 0)
               for layer, (_, ours, _) in zip(layers, cw.bvlc_layout()))


def test_unpacked_floats_and_double_data_are_read(tmp_path):
    """Older writers stored floats one field each; double_data holds float64 values."""
    values = np.arange(6, dtype=np.float32) - 2.5
    net = cw.NetParameter()
    layer = net.layer.add(name="a", type="InnerProduct")
    blob = layer.blobs.add()
    blob.shape.dim.extend([2, 3])
    blob.double_data.extend(values.tolist())
    unpacked = net.SerializeToString()
    # The same blob with its floats one fixed32 field each (key 0x2d = field 5, wire type 5).
    legacy = (b"\x08\x01\x10\x01\x18\x02\x20\x03" +
              b"".join(b"\x2d" + v.tobytes() for v in values))
    layer2 = b"\x0a\x01b" + b"\x3a" + bytes([len(legacy)]) + legacy     # name "b", blobs (7)
    data = unpacked + b"\xa2\x06" + bytes([len(layer2)]) + layer2      # field 100
    first, second = parse_caffemodel(data)
    np.testing.assert_array_equal(first.blobs[0], values.reshape(2, 3))
    np.testing.assert_array_equal(second.blobs[0], values.reshape(1, 1, 2, 3))


def test_an_empty_blob_of_impossible_dims_is_one_line():
    net = cw.NetParameter()
    net.layer.add(name="a", type="Convolution").blobs.add().shape.dim.extend([0, 2 ** 62])
    with pytest.raises(ValueError, match=r"^odd.caffemodel: not a readable caffemodel"):
        parse_caffemodel(net.SerializeToString(), source="odd.caffemodel")


def one_line_error(path, *needles):
    with pytest.raises(ValueError) as caught:
        load_caffe_googlenet(str(path), width=WIDTH)
    message = str(caught.value)
    assert "\n" not in message and str(path) in message, message
    for needle in needles:
        assert needle in message, message
    return message


@pytest.mark.parametrize("content", [b"", b"hello, world\n", b"\x89PNG\r\n\x1a\n" + bytes(100),
                                     bytes(range(256)) * 8], ids=["empty", "text", "png", "bytes"])
def test_not_a_caffemodel_is_one_line(tmp_path, content):
    path = tmp_path / "not.caffemodel"
    path.write_bytes(content)
    one_line_error(path)


@given(seed=st.integers(0, 2 ** 32 - 1), size=st.integers(1, 3000))
def test_random_bytes_never_raise_anything_but_a_value_error(seed, size):
    data = np.random.default_rng(seed).integers(0, 256, size, dtype=np.uint8).tobytes()
    try:
        parse_caffemodel(data, source="random.bin")
    except ValueError as error:
        assert "random.bin" in str(error) and "\n" not in str(error)


SMALL_NET = {version: cw.encode([("conv", "Convolution", [np.ones((2, 3, 1, 1), np.float32),
                                                           np.zeros(2, np.float32)]),
                                  ("fc", "InnerProduct", [np.ones((4, 2), np.float32),
                                                          np.zeros(4, np.float32)])], version)
             for version in (1, 2)}


@given(version=st.sampled_from([1, 2]),
       edits=st.lists(st.tuples(st.floats(0, 1, exclude_max=True), st.integers(0, 255)),
                      min_size=1, max_size=4))
def test_a_corrupted_caffemodel_never_raises_anything_but_a_value_error(version, edits):
    """A real structure with a few bytes changed reaches deeper into the reader than random
    bytes do: lengths, wire types and shapes that no longer agree."""
    data = bytearray(SMALL_NET[version])
    for where, value in edits:
        data[int(where * len(data))] = value
    try:
        layers = parse_caffemodel(bytes(data), source="corrupt.caffemodel")
    except ValueError as error:
        assert str(error).startswith("corrupt.caffemodel: ") and "\n" not in str(error)
    else:
        assert all(isinstance(b, np.ndarray) for layer in layers for b in layer.blobs)


@given(fraction=st.floats(0.0, 0.9999))
def test_a_truncated_file_is_one_line(thin_file, tmp_path_factory, fraction):
    path, _ = thin_file
    with open(path, "rb") as f:
        data = f.read()
    cut = tmp_path_factory.mktemp("cut") / "cut.caffemodel"
    cut.write_bytes(data[:int(len(data) * fraction)])
    one_line_error(cut)


def write_edited(tmp_path, state, edit, version=1):
    layers = cw.googlenet_layers(state)
    layers = edit(layers)
    return cw.write(tmp_path / "edited.caffemodel", layers, version)


def test_a_missing_layer_is_named(tmp_path, thin_state):
    path = write_edited(tmp_path, thin_state,
                        lambda layers: [l for l in layers if l[0] != "inception_4c/3x3_reduce"])
    one_line_error(path, "'inception_4c/3x3_reduce'", "inception4c.branch2_reduce")


def test_a_shape_that_differs_names_the_layer_and_both_shapes(tmp_path, thin_state):
    def widen(layers):
        return [(name, kind, [np.concatenate([arrays[0], arrays[0][:1]]), arrays[1]])
                if name == "conv2/3x3" else (name, kind, arrays) for name, kind, arrays in layers]
    weight = thin_state["conv2.weight"]
    wrong = (weight.shape[0] + 1,) + weight.shape[1:]
    one_line_error(write_edited(tmp_path, thin_state, widen), "'conv2/3x3'", str(wrong),
                   str(weight.shape))


def test_incomplete_aux_heads_wrong_types_and_missing_blobs_are_one_line(tmp_path, thin_state):
    no_fc = write_edited(tmp_path, thin_state,
                         lambda layers: [l for l in layers if l[0] != "loss2/fc"])
    one_line_error(no_fc, "'loss2/fc'")
    as_conv = write_edited(tmp_path, thin_state, lambda layers: [
        (n, "Convolution" if n == "loss3/classifier" else k, a) for n, k, a in layers])
    one_line_error(as_conv, "'loss3/classifier'", "InnerProduct")
    no_blobs = write_edited(tmp_path, thin_state, lambda layers: [
        (n, k, [] if n == "conv1/7x7_s2" else a) for n, k, a in layers])
    one_line_error(no_blobs, "'conv1/7x7_s2'", "0 blobs")
    twice = write_edited(tmp_path, thin_state, lambda layers: layers + layers[1:2])
    one_line_error(twice, "'conv1/7x7_s2'")

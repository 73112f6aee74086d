"""summary(): per-layer output shapes, parameters and MACs, checked against hand counts and Table 1."""
import numpy as np
import pytest

from tinygnet import nn
from tinygnet.backend import get_rng_state
from tinygnet.models import GoogLeNet
from tinygnet.summary import Summary, SummaryRow, summary

# Table 1 of the paper, "ops" column, in millions of multiply-adds. conv1 is left out
# (its printed 34M does not fit a 7x7 conv from 3 to 64 channels at 112x112: 118M).
TABLE1_OPS = {
    "conv2": 360,          # conv2_reduce + conv2, one row in the paper
    "inception3a": 128, "inception3b": 304,
    "inception4a": 73, "inception4b": 88, "inception4c": 100, "inception4d": 119,
    "inception4e": 170, "inception5a": 54, "inception5b": 71,
    "fc": 1,
}


def test_small_sequential_counted_by_hand():
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                          nn.Flatten(), nn.Linear(8 * 4 * 4, 10))
    s = summary(model, (3, 8, 8))
    assert isinstance(s, Summary) and all(isinstance(r, SummaryRow) for r in s.rows)
    assert [(r.name, r.output_shape, r.params, r.macs) for r in s.rows] == [
        ("0", (8, 8, 8), 8 * 27 + 8, 8 * 8 * 8 * 27),
        ("1", (8, 8, 8), 0, 0),
        ("2", (8, 4, 4), 0, 0),
        ("3", (128,), 0, 0),
        ("4", (10,), 1290, 1280),
    ]
    assert s.total_params == s.inference_params == 224 + 1290
    assert s.total_macs == s.inference_macs == 8 * 8 * 8 * 27 + 1280
    text = str(s)
    assert "Layer" in text and "Output shape" in text and "8 x 4 x 4" in text
    assert "Total (inference)" in text and "1,514" in text and "training" not in text
    assert summary(model, (1, 3, 8, 8)).rows == s.rows      # a leading batch dim is ignored


def test_imagenet_width1_matches_the_paper():
    model = GoogLeNet(config="imagenet")
    s = summary(model, (3, 224, 224))
    names = [r.name for r in s.rows]
    assert names == ["conv1", "pool1", "norm1", "conv2_reduce", "conv2", "norm2", "pool2",
                     "inception3a", "inception3b", "pool3", "inception4a", "aux1",
                     "inception4b", "inception4c", "inception4d", "aux2", "inception4e",
                     "pool4", "inception5a", "inception5b", "avgpool", "dropout", "fc"]
    rows = {r.name: r for r in s.rows}
    assert rows["conv1"].output_shape == (64, 112, 112)
    assert rows["pool2"].output_shape == (192, 28, 28)
    assert rows["inception4e"].output_shape == (832, 14, 14)
    assert rows["inception5b"].output_shape == (1024, 7, 7)
    assert rows["fc"].output_shape == (1000,) and rows["aux1"].output_shape == (1000,)
    assert [r.name for r in s.rows if r.train_only] == ["aux1", "aux2"]
    assert rows["conv1"].macs == 64 * 3 * 49 * 112 * 112

    for name, m_ops in TABLE1_OPS.items():
        layers = ("conv2_reduce", "conv2") if name == "conv2" else (name,)
        weights = sum(p.size for n, p in model.named_parameters()
                      if n.split(".")[0] in layers and n.endswith("weight"))
        macs = sum(rows[layer].macs for layer in layers)
        # Every conv of a row runs at the row's output size: MACs = weights * OH * OW.
        spatial = np.prod(rows[name].output_shape[1:], dtype=int)
        assert macs == weights * spatial, name
        # The paper's column, to 1%; but its 5a entry (54M) disagrees with its own
        # filter counts, which give 1,042,432 weights * 7 * 7 = 51.1M.
        tolerance = 0.06 if name == "inception5a" else 0.01
        assert abs(macs / 1e6 - m_ops) <= tolerance * m_ops + 0.5, name
    # The paper: about 7 million parameters and 1.5 billion multiply-adds at inference.
    assert 6.5e6 < s.inference_params < 7.1e6
    assert 1.5e9 < s.inference_macs < 1.6e9
    assert s.total_params == sum(p.size for p in model.parameters())
    assert s.total_params - s.inference_params == rows["aux1"].params + rows["aux2"].params
    assert "aux1 (train)" in str(s) and "Total (training" in str(s)


def test_cifar_width1_totals_and_stem_stride():
    s = summary(GoogLeNet(num_classes=10, config="cifar"), (3, 32, 32))
    rows = {r.name: r for r in s.rows}
    assert rows["conv1"].output_shape == (64, 32, 32)
    assert rows["inception3b"].output_shape == (480, 32, 32)
    assert rows["inception5b"].output_shape == (1024, 8, 8)
    strided = summary(GoogLeNet(num_classes=10, config="cifar", width=0.25, stem_stride=2),
                      (3, 32, 32))
    assert {r.name: r for r in strided.rows}["inception3b"].output_shape == (120, 16, 16)


def test_summary_restores_modes_and_changes_no_state():
    model = GoogLeNet(num_classes=10, config="cifar", width=1 / 16, batchnorm=True)
    model.aux1.eval()                               # a mixed state, restored exactly
    modes = [m.training for m in model.modules()]
    before = model.state_dict()
    rng_state = get_rng_state()
    summary(model, (3, 32, 32))
    assert [m.training for m in model.modules()] == modes
    for (name, a), b in zip(before.items(), model.state_dict().values()):
        np.testing.assert_array_equal(a, b, err_msg=name)
    assert get_rng_state() == rng_state              # dropout drew no random numbers


def test_summary_uses_the_model_dtype_and_rejects_bad_shapes():
    model = GoogLeNet(num_classes=10, config="cifar", width=1 / 16).to(dtype=np.float64)
    assert summary(model, (3, 32, 32)).inference_params > 0
    with pytest.raises(ValueError, match=r"summary: input_shape must be \(C, H, W\), got \(32, 32\)"):
        summary(model, (32, 32))
    with pytest.raises(ValueError, match="expected input of shape N x 3 x 32 x 32"):
        summary(model, (3, 64, 64))

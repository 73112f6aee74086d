"""``python -m tinygnet.demo classify``: the three heads' top classes, the weights, bad input."""
import hashlib
import importlib.util
import os
import re
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from tinygnet.data import imagenet_classes, load_image
from tinygnet.demo import classify
from tinygnet.models import GoogLeNet, load_caffe_googlenet
from tinygnet.tensor import Tensor, no_grad

_spec = importlib.util.spec_from_file_location("caffe_writer", os.path.join(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "models", "caffe_writer.py"))
cw = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(cw)


def photo(tmp_path, name="photo.png", seed=0):
    pixels = np.random.default_rng(seed).integers(0, 256, (300, 400, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(tmp_path / name)
    return str(tmp_path / name)


def run(argv, capsys):
    status = classify.main(argv)
    out, err = capsys.readouterr()
    return status, out, err


def test_missing_weights_say_where_to_get_them_and_where_to_put_them(tmp_path, capsys,
                                                                   monkeypatch):
    monkeypatch.setenv("TINYGNET_DATA", str(tmp_path / "data"))
    status, out, err = run([photo(tmp_path)], capsys)
    expected = os.path.join(str(tmp_path / "data"), "bvlc_googlenet.caffemodel")
    assert status == 1 and out == "" and err.count("\n") == 1
    for needle in (classify.WEIGHTS_URL, "53 MB", "405fc5acd08a3bb12de8ee5e23a96bec22f08204",
                   expected, "--weights"):
        assert needle in err
    status, _, err = run([photo(tmp_path), "--data", str(tmp_path / "elsewhere")], capsys)
    assert status == 1 and str(tmp_path / "elsewhere") in err


def test_bad_input_is_one_line(tmp_path, capsys):
    weights = tmp_path / "w.caffemodel"
    weights.write_bytes(b"\x08\x96\x01")      # never read: the photos are checked first
    text = tmp_path / "notes.jpg"
    text.write_text("not a photo")
    cases = [([str(tmp_path / "nope.jpg"), "--weights", str(weights)], 1, "nope.jpg: no such file"),
             ([str(text), "--weights", str(weights)], 1, "notes.jpg: not an image"),
             ([photo(tmp_path), "--weights", str(tmp_path / "no.caffemodel")], 1,
              "no.caffemodel: no such file"),
             ([photo(tmp_path), "--weights", photo(tmp_path, "p2.png")], 1,
              "not a readable caffemodel"),
             ([photo(tmp_path), "--top", "1001", "--weights", str(weights)], 2, "1000 classes"),
             ([photo(tmp_path), "--gradients", "--label", "unicorn"], 2, "'unicorn'"),
             ([photo(tmp_path), "--filters", photo(tmp_path, "old.png")], 2,
              "old.png: the file exists")]
    for argv, expected_status, needle in cases:
        status, out, err = run(argv, capsys)
        assert (status, err.count("\n")) == (expected_status, 1), (argv, err)
        assert needle in err and err.startswith(classify.PROG), (argv, err)
    # Not a caffemodel: its sha1 is not BVLC's, said before the load fails.
    not_weights = photo(tmp_path, "p3.png")
    with open(not_weights, "rb") as f:
        digest = hashlib.sha1(f.read()).hexdigest()
    status, out, err = run([photo(tmp_path), "--weights", not_weights], capsys)
    assert status == 1 and f"note: its sha1 is {digest}, not the BVLC release's" in out


def test_registered_as_a_subcommand():
    from tinygnet.demo.__main__ import SUBCOMMANDS, usage
    assert SUBCOMMANDS["classify"][0] == "tinygnet.demo.classify" and "classify" in usage()


def full_size_state(seed=0):
    """He-scaled random weights at width 1; the classifiers scaled down so that the
    probabilities are neither all 0 nor 1."""
    rng = np.random.default_rng(seed)
    state = {}
    for name, tensor in GoogLeNet(config="imagenet").state_dict().items():
        shape = tuple(tensor.shape)
        fan_in = int(np.prod(shape[1:])) if len(shape) > 1 else 1
        value = rng.standard_normal(shape, dtype=np.float32)
        value *= np.sqrt(2 / fan_in) if len(shape) > 1 else 1.0
        if name.split(".")[0] == "fc" or ".fc2." in name:
            value *= 0.03
        state[name] = value.astype(np.float32)
    return state


@pytest.mark.slow
def test_classify_end_to_end_on_a_synthetic_bvlc_file(tmp_path, capsys, monkeypatch):
    """A full-size V1 caffemodel (as the 2014 BVLC file, 53 MB) and two photos. The file
    loads with BVLC's parameter count, 6,998,552 in the trunk and 13,378,280 with the aux
    heads, every weight where the table puts it. Each head's top-5 column is the softmax of
    that head's logits for the preprocessed photo; --gradients prints each head's share of conv1's gradient, adding up to 100%."""
    state = full_size_state()
    path = str(cw.write(tmp_path / "bvlc_googlenet.caffemodel", cw.googlenet_layers(state), 1))
    model = load_caffe_googlenet(path)
    loaded = model.state_dict()
    assert sum(v.size for v in loaded.values()) == 13_378_280
    assert sum(v.size for k, v in loaded.items() if not k.startswith("aux")) == 6_998_552
    for name, value in state.items():
        np.testing.assert_array_equal(np.asarray(loaded[name]), value, err_msg=name)

    photos = [photo(tmp_path, "a.png", 1), photo(tmp_path, "b.png", 2)]
    with open(path, "rb") as f:                    # taken for the BVLC release: no note
        monkeypatch.setattr(classify, "WEIGHTS_SHA1", hashlib.sha1(f.read()).hexdigest())
    filters = tmp_path / "filters.png"
    status, out, err = run(photos + ["--data", str(tmp_path), "--gradients",
                                     "--filters", str(filters)], capsys)
    assert status == 0 and err == "", err
    assert filters.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "note:" not in out and "sha1 matches" in out

    names = [c.name for c in imagenet_classes()]
    blocks = out.split("\n\n")[1:]            # after the weights line, one per photo
    assert len(blocks) == 2
    for block, file in zip(blocks, photos):
        lines = block.splitlines()
        assert lines[0] == file and re.split(r"\s{2,}", lines[1].strip()) == \
            [title for _, title in classify.HEADS]
        with no_grad():
            outputs = model.heads(Tensor(load_image(file)[None]))
        for column, head in enumerate(("logits", "aux1", "aux2")):
            logits = getattr(outputs, head).data[0].astype(np.float64)
            probabilities = np.exp(logits - logits.max())
            probabilities /= probabilities.sum()
            best = np.argsort(-probabilities, kind="stable")[:5]
            assert probabilities[best[0]] < 0.999           # a real ranking, not one certainty
            cells = [re.split(r"\s{2,}", line.strip())[column] for line in lines[2:7]]
            assert cells == [f"{100 * probabilities[i]:.1f}% {names[i]}" for i in best], head
        shares = re.findall(r"(main|aux1|aux2) (-?\d+)%", lines[-1])
        assert [name for name, _ in shares] == ["main", "aux1", "aux2"]
        assert abs(sum(int(v) for _, v in shares) - 100) <= 2


def test_python_dash_m_runs_it(tmp_path):
    env = dict(os.environ, TINYGNET_DATA=str(tmp_path))
    result = subprocess.run([sys.executable, "-m", "tinygnet.demo", "classify", photo(tmp_path)],
                            capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 1 and "bvlc_googlenet.caffemodel" in result.stderr
    assert "Traceback" not in result.stderr


def test_filter_mosaic_shows_each_filter_in_rgb_on_its_own_scale():
    """5 filters of 3 x 2 x 3 (BGR input channels), 2 a row: a 3 x 2 grid of 2 x 3 tiles with
    1-pixel white gaps; each tile the filter with its channels reversed, scaled to [0, 1]."""
    weight = np.random.default_rng(0).standard_normal((5, 3, 2, 3)).astype(np.float32)
    weight[3] *= 100                                          # its own scale, not the others'
    mosaic = classify.filter_mosaic(weight, columns=2)
    assert mosaic.shape == (3 * 3 - 1, 2 * 4 - 1, 3)
    for i, filt in enumerate(weight.astype(np.float64)):
        top, left = (i // 2) * 3, (i % 2) * 4
        rgb = filt[::-1].transpose(1, 2, 0)                   # KH x KW x (R, G, B)
        expected = (rgb - rgb.min()) / (rgb.max() - rgb.min())
        np.testing.assert_allclose(mosaic[top:top + 2, left:left + 3], expected, rtol=1e-6)
    np.testing.assert_array_equal(mosaic[2], 1.0)             # a gap row
    np.testing.assert_array_equal(mosaic[6:, 4:], 1.0)        # no sixth filter

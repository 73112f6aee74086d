"""Checkpoints: exact round trip, atomic writes, clear errors on bad files."""
import os

import numpy as np
import pytest

from tinygnet import checkpoint
from tinygnet.checkpoint import CheckpointError, load_checkpoint, save_checkpoint


def _state(rng):
    generator = np.random.default_rng(7)
    return {
        "epoch": 3,
        "model": {"conv1.weight": rng.standard_normal((4, 3, 3, 3)).astype(np.float32),
                  "bn.running_mean": rng.standard_normal(4),            # float64 stays float64
                  "bn.num_batches": np.array(12, dtype=np.int64)},
        "optimizer": {"state": {0: {"momentum": rng.standard_normal(5).astype(np.float32)},
                                1: {"momentum": None}},
                      "param_groups": [{"lr": 0.1, "nesterov": True, "params": [0, 1]}]},
        "rng": generator.bit_generator.state,                         # 128-bit ints
        "shape": (2, 3),
        "step_count": np.int64(41),
        "lr": np.float32(0.05),
        "special": [float("inf"), float("nan"), -0.0, "", "ünïcode"],
        "empty": {}, "weird_keys": {"__array__": 1, (1, 2): "tuple key"},
    }


def _assert_same(a, b, where="state"):
    assert type(a) is type(b), f"{where}: {type(a)} != {type(b)}"
    if isinstance(a, dict):
        assert list(a) == list(b), where
        for k in a:
            _assert_same(a[k], b[k], f"{where}[{k!r}]")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            _assert_same(x, y, f"{where}[{i}]")
    elif isinstance(a, (np.ndarray, np.generic)):
        assert a.dtype == b.dtype and a.shape == b.shape, where
        np.testing.assert_array_equal(a, b, err_msg=where)
    elif isinstance(a, float) and np.isnan(a):
        assert np.isnan(b), where
    else:
        assert a == b, where
        if isinstance(a, float):
            assert np.copysign(1, a) == np.copysign(1, b), where


def test_round_trip_is_exact(tmp_path, rng):
    state = _state(rng)
    path = tmp_path / "ckpt.npz"
    save_checkpoint(path, state)
    _assert_same(state, load_checkpoint(path))
    # The restored generator state continues the same stream.
    restored = np.random.default_rng()
    restored.bit_generator.state = load_checkpoint(path)["rng"]
    assert restored.random() == np.random.default_rng(7).random()


def test_file_is_plain_npz_without_pickles(tmp_path, rng):
    path = tmp_path / "ckpt.npz"
    save_checkpoint(path, _state(rng))
    with np.load(path, allow_pickle=False) as archive:     # would raise on pickled objects
        assert "__meta__" in archive.files


def test_unsupported_value_is_named(tmp_path):
    with pytest.raises(TypeError, match=r"state\['model'\]\['f'\].*function"):
        save_checkpoint(tmp_path / "c.npz", {"model": {"f": lambda: 0}})
    assert os.listdir(tmp_path) == []                     # nothing written


def test_failed_write_keeps_previous_checkpoint_and_leaves_no_temp_file(tmp_path, rng, monkeypatch):
    path = tmp_path / "ckpt.npz"
    save_checkpoint(path, {"epoch": 1, "w": np.arange(3.0)})
    before = path.read_bytes()

    real_savez = np.savez

    def savez_then_die(file, **entries):
        real_savez(file, **entries)
        file.write(b"half a file")          # some bytes were written ...
        raise OSError("disk full")          # ... then the write fails

    monkeypatch.setattr(checkpoint.np, "savez", savez_then_die)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(path, {"epoch": 2, "w": np.arange(1000.0)})
    assert path.read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == ["ckpt.npz"]
    assert load_checkpoint(path)["epoch"] == 1


def test_interrupt_during_write_keeps_previous_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "ckpt.npz"
    save_checkpoint(path, {"epoch": 1})

    def interrupted(file, **entries):
        file.write(b"PK\x03\x04partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(checkpoint.np, "savez", interrupted)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(path, {"epoch": 2})
    assert load_checkpoint(path) == {"epoch": 1}
    assert os.listdir(tmp_path) == ["ckpt.npz"]


def test_overwrite_replaces(tmp_path):
    path = tmp_path / "sub" / "ckpt.npz"           # the folder is created
    save_checkpoint(path, {"epoch": 1})
    save_checkpoint(path, {"epoch": 2})
    assert load_checkpoint(path) == {"epoch": 2}
    assert os.listdir(path.parent) == ["ckpt.npz"]


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.npz"):
        load_checkpoint(tmp_path / "nope.npz")


@pytest.mark.parametrize("content", [b"", b"not a zip at all", b"\x93NUMPY garbage"])
def test_garbage_file_is_named(tmp_path, content):
    path = tmp_path / "bad.npz"
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match="bad.npz"):
        load_checkpoint(path)


def test_truncated_file_is_named(tmp_path, rng):
    path = tmp_path / "ckpt.npz"
    save_checkpoint(path, _state(rng))
    data = path.read_bytes()
    for cut in (len(data) // 3, len(data) - 10):
        path.write_bytes(data[:cut])
        with pytest.raises(CheckpointError, match="ckpt.npz"):
            load_checkpoint(path)


def test_other_npz_is_refused(tmp_path):
    path = tmp_path / "weights.npz"
    np.savez(path, w=np.zeros(3))
    with pytest.raises(CheckpointError, match="weights.npz.*not a tinygnet checkpoint"):
        load_checkpoint(path)


def test_folder_is_refused(tmp_path):
    with pytest.raises(CheckpointError, match="folder"):
        load_checkpoint(tmp_path)


@pytest.mark.parametrize("content", [bytes(range(256)) * 8, b"\x80\x04K\x01.", b"PK\x03\x04garbage"],
                         ids=["random", "a-pickle", "broken-zip"])
def test_a_file_that_is_not_a_checkpoint_gets_no_hint_to_unpickle_it(tmp_path, content):
    path = tmp_path / "renamed.npz"
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match="renamed.npz.*not a .*tinygnet checkpoint") as caught:
        load_checkpoint(path)
    assert "allow_pickle" not in str(caught.value) and "pickle.load" not in str(caught.value)


def test_an_npz_holding_pickled_objects_is_refused_in_our_words(tmp_path):
    path = tmp_path / "objects.npz"
    np.savez(path, __meta__=np.array([{"format": "tinygnet-checkpoint"}], dtype=object))
    with pytest.raises(CheckpointError, match="pickled Python objects") as caught:
        load_checkpoint(path)
    assert "allow_pickle" not in str(caught.value)


def test_stale_temporary_files_of_the_given_names_are_removed(tmp_path):
    names = [".ckpt.npz.abc123.tmp", ".metrics.csv.x.tmp", ".other.npz.y.tmp", "ckpt.npz",
             ".ckpt.npz.kept", "notes.tmp"]
    for name in names:
        (tmp_path / name).write_bytes(b"")
    removed = checkpoint.remove_stale_temp_files(tmp_path, ["ckpt.npz", "metrics.csv"])
    assert sorted(os.path.basename(p) for p in removed) == [".ckpt.npz.abc123.tmp", ".metrics.csv.x.tmp"]
    assert sorted(os.listdir(tmp_path)) == sorted([".other.npz.y.tmp", "ckpt.npz", ".ckpt.npz.kept",
                                                   "notes.tmp"])


def test_the_write_hook_sees_each_step_of_an_atomic_write(tmp_path, monkeypatch):
    seen = []

    def hook(event, path):
        temporary = [name for name in os.listdir(tmp_path) if name.startswith(".")]
        seen.append((event, os.path.basename(path), os.path.exists(path), len(temporary)))

    monkeypatch.setattr(checkpoint, "_write_hook", hook)
    checkpoint.atomic_write(tmp_path / "f.txt", lambda f: f.write(b"new"))
    # (event, file, the file exists, temporary files)
    assert seen == [("start", "f.txt", False, 0), ("written", "f.txt", False, 1),
                    ("renamed", "f.txt", True, 0)]

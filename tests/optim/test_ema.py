"""EMA: averaged values by hand, swapping in and out, buffers, checkpoints."""
import numpy as np
import pytest

import tinygnet as tg
from tinygnet.optim import EMA


def tensor(values, dtype=np.float32):
    return tg.tensor(np.asarray(values, dtype=dtype), requires_grad=True)


def test_values_by_hand():
    w = tensor([1.0, 10.0], np.float64)
    ema = EMA([w], decay=0.9)
    w.data[:] = [2.0, 10.0]
    ema.update()                       # 0.9 * 1 + 0.1 * 2 = 1.1
    w.data[:] = [3.0, 10.0]
    ema.update()                       # 0.9 * 1.1 + 0.1 * 3 = 1.29
    np.testing.assert_allclose(ema.shadow[0], [1.29, 10.0], rtol=1e-12)
    assert ema.num_updates == 2


def test_matches_a_running_average_over_many_steps(rng):
    w = tensor(rng.standard_normal(5))
    ema = EMA([w], decay=0.99)
    expected = w.data.astype(np.float64)
    for _ in range(50):
        w.data += rng.standard_normal(5).astype(np.float32)
        ema.update()
        expected = 0.99 * expected + 0.01 * w.data
    assert ema.shadow[0].dtype == np.float32
    np.testing.assert_allclose(ema.shadow[0], expected, rtol=1e-5, atol=1e-5)


def test_averaged_block_swaps_in_and_restores():
    w, running_mean = tensor([1.0]), tg.tensor(np.array([5.0], np.float32))
    ema = EMA([w], decay=0.5, buffers=[running_mean])
    w.data[:] = 3.0
    running_mean.data[:] = 7.0
    ema.update()                       # shadow 2, buffer copy 7
    running_mean.data[:] = 9.0
    trained = w.data
    with ema.averaged():
        assert w.data[0] == 2.0 and running_mean.data[0] == 7.0
        with pytest.raises(RuntimeError, match="swap"):
            ema.update()
    assert w.data is trained and w.data[0] == 3.0 and running_mean.data[0] == 9.0
    ema.swap()
    ema.swap()
    assert w.data is trained


def test_copy_to_another_model():
    w = tensor([1.0, 2.0])
    ema = EMA([w], decay=0.5)
    w.data[:] = [3.0, 4.0]
    ema.update()
    other = tensor([0.0, 0.0])
    ema.copy_to([other])
    np.testing.assert_array_equal(other.data, [2.0, 3.0])
    with pytest.raises(ValueError, match="2 tensors given, 1 averaged"):
        ema.copy_to([other, other])


def test_state_dict_round_trip():
    w = tensor([1.0, 2.0])
    ema = EMA([w], decay=0.8)
    w.data[:] = [6.0, 7.0]
    ema.update()
    saved = ema.state_dict()
    with ema.averaged():                       # saving while swapped gives the same
        assert all(np.array_equal(a, b) for a, b in zip(ema.state_dict()["shadow"], saved["shadow"]))
    w2 = tensor([6.0, 7.0])
    resumed = EMA([w2], decay=0.5)
    resumed.load_state_dict(saved)
    assert resumed.decay == 0.8 and resumed.num_updates == 1
    ema.update()
    resumed.update()
    np.testing.assert_array_equal(resumed.shadow[0], ema.shadow[0])
    assert resumed.shadow[0].dtype == np.float32
    with pytest.raises(ValueError, match="shape"):
        EMA([tensor([1.0])]).load_state_dict(saved)


def test_bad_decay():
    with pytest.raises(ValueError, match="decay"):
        EMA([tensor([1.0])], decay=1.0)


def test_load_state_dict_of_something_else_says_what_it_expected():
    ema = EMA([tg.tensor([1.0], requires_grad=True)])
    with pytest.raises(TypeError, match=r"EMA.load_state_dict: expected a dict .* got NoneType"):
        ema.load_state_dict(None)

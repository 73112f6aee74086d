"""gradcheck must pass correct gradients and catch wrong ones, saying where."""
import numpy as np
import pytest

import tinygnet as tg
from tinygnet import Function, GradcheckError, gradcheck


class SquareWithBug(Function):
    """y = x**2 with a backward that is wrong at one element."""

    def forward(self, x):
        self.x = x
        return x * x

    def backward(self, gy):
        gx = 2 * self.x * gy
        gx.reshape(-1)[3] *= 1.01
        return gx


class SoftmaxSumZeroBackward(Function):
    """Softmax whose backward returns zeros: right only for an all-ones upstream gradient."""

    def forward(self, x):
        e = np.exp(x - x.max(axis=-1, keepdims=True))
        return e / e.sum(axis=-1, keepdims=True)

    def backward(self, gy):
        return np.zeros_like(gy)


def x64(rng, *shape):
    return tg.tensor(rng.standard_normal(shape), requires_grad=True)


def test_passes_a_correct_gradient(rng):
    assert gradcheck(lambda a, b: a * b + a, [x64(rng, 3, 2), x64(rng, 2)])


def test_names_the_input_and_worst_element(rng):
    with pytest.raises(GradcheckError, match=r"input 1 .*index \(1, 1\).*analytic.*numeric"):
        gradcheck(lambda a, b: a + SquareWithBug.apply(b), [x64(rng, 2), x64(rng, 3, 2)])


def test_random_upstream_gradient_catches_a_zero_softmax_backward(rng):
    with pytest.raises(GradcheckError):
        gradcheck(lambda x: SoftmaxSumZeroBackward.apply(x), [x64(rng, 2, 4)])


def test_directional_mode_catches_the_bug_too(rng):
    assert gradcheck(lambda x: x * x, [x64(rng, 4, 4)], mode="directional")
    with pytest.raises(GradcheckError, match="directional"):
        gradcheck(lambda x: SquareWithBug.apply(x), [x64(rng, 4, 4)], mode="directional")


def test_sampled_elements(rng):
    assert gradcheck(lambda x: x.exp(), [x64(rng, 50, 50)], max_elements=20)


def test_float32_is_refused_with_a_reason():
    x = tg.tensor([1.0, 2.0], requires_grad=True)
    with pytest.raises(TypeError, match="float32.*float64.*rounding"):
        gradcheck(lambda x: x * x, [x])


def test_no_input_requiring_grad_is_an_error(rng):
    with pytest.raises(ValueError, match="no input requires grad"):
        gradcheck(lambda x: x * x, [tg.tensor(rng.standard_normal(3))])


def test_returns_false_when_asked_not_to_raise(rng):
    assert gradcheck(lambda x: SquareWithBug.apply(x), [x64(rng, 2, 3)],
                     raise_exception=False) is False


def test_an_output_that_is_not_a_tensor_is_named(rng):
    with pytest.raises(TypeError, match=r"output 0 is a numpy.ndarray, which has no gradient"):
        gradcheck(lambda x: (x * x).data, [x64(rng, 3)])
    with pytest.raises(TypeError, match=r"output 1 is a numpy.ndarray"):
        gradcheck(lambda x: (x * x, x.numpy()), [x64(rng, 3)])


@pytest.mark.parametrize("eps", [0.0, -1e-6, float("nan"), float("inf")])
def test_a_step_that_is_not_positive_is_refused(rng, eps):
    with pytest.raises(ValueError, match="eps must be a finite number > 0"):
        gradcheck(lambda x: x * x, [x64(rng, 3)], eps=eps)

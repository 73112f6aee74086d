"""Finite differences by hand against backprop, for one Inception module, step by step.

    python demos/gradcheck_walkthrough.py

Backprop computes every derivative of a scalar loss in one backward pass.
A finite difference computes one derivative from two forward passes:

    dL/dw  ~  (L(w + eps) - L(w - eps)) / (2 eps)        (central difference)

It is slow (two passes per number) but needs no calculus, so it is the
reference backprop is tested against. This script does it by hand for a
small Inception module, then shows the library's ``tinygnet.gradcheck``
doing the same, and a wrong backward being caught.
"""
import argparse

import numpy as np

import tinygnet
import tinygnet.functional as F
from tinygnet import Function, gradcheck, GradcheckError
from tinygnet.models import Inception


def shuffled_linspace(shape, rng, low=-1.0, high=1.0):
    """Distinct, evenly spaced values in random order.

    ReLU and max pool have kinks: at x = 0, or where two inputs of a pool
    window tie, the derivative jumps and a finite difference straddling
    the kink measures neither side. Well-spaced distinct values keep
    every input away from them.
    """
    values = np.linspace(low, high, int(np.prod(shape)))
    return rng.permutation(values).reshape(shape)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="(accepted for CI; the script is fast)")
    parser.parse_args(argv)
    rng = np.random.default_rng(0)

    print("1. A small Inception module, in float64.")
    print("   In float32 the rounding error of L (about 1e-7 relative) divided by a small eps\n"
          "   would swamp the differences we want to see, so gradient checks use float64.")
    tinygnet.manual_seed(0)
    #                  in, ch1x1, 3x3red, 3x3, 5x5red, 5x5, pool_proj
    module = Inception(4, 3, 2, 3, 2, 2, 2).double()
    x = tinygnet.tensor(shuffled_linspace((2, 4, 6, 6), rng), requires_grad=True)
    y = module(x)
    params = sum(p.size for p in module.parameters())
    print(f"   input {x.shape} -> output {y.shape} ({params} parameters)")

    print("\n2. A scalar to differentiate: L = sum(y * gy) with a random gy.")
    print("   gy plays the upstream gradient dL/dy. A random one matters: with gy = 1 the check\n"
          "   of, say, sum(softmax(y)) would see a gradient of exactly zero, and a backward\n"
          "   returning zeros would pass.")
    gy = tinygnet.tensor(rng.standard_normal(y.shape))

    def loss():
        return (module(x) * gy).sum()

    print("\n3. Backprop: one backward pass gives dL/d(everything).")
    L = loss()
    L.backward()
    weight = module.branch3.weight             # the 5x5 conv of branch 3
    print(f"   L = {L.item():.10f}; branch3.weight.grad has shape {weight.grad.shape}, "
          f"x.grad {x.grad.shape}")

    print("\n4. Finite differences by hand, for a few elements of the 5x5 conv's weight and of x.")
    eps = 1e-6
    print(f"   For each: nudge it by +eps and -eps (eps = {eps:g}), rerun forward, take the slope.")
    print(f"   {'element':<32} {'backprop':>14} {'numeric':>14} {'|difference|':>13}")
    worst = 0.0
    for tensor, name, index in [(weight, "branch3.weight", (0, 1, 2, 3)),
                                (weight, "branch3.weight", (1, 0, 4, 0)),
                                (x, "x", (0, 2, 3, 3)), (x, "x", (1, 0, 5, 1))]:
        original = tensor.data[index]
        tensor.data[index] = original + eps
        plus = loss().item()
        tensor.data[index] = original - eps
        minus = loss().item()
        tensor.data[index] = original             # put it back
        numeric = (plus - minus) / (2 * eps)
        analytic = tensor.grad.data[index]
        worst = max(worst, abs(analytic - numeric))
        print(f"   {name + str(index):<32} {analytic:>14.10f} {numeric:>14.10f} "
              f"{abs(analytic - numeric):>13.2e}")
    print(f"   They agree to {worst:.0e}: the O(eps^2) truncation error plus rounding error / eps.")

    print("\n5. Choosing eps: too large and the slope is not local, too small and rounding wins.")
    index = (0, 1, 2, 3)
    analytic = weight.grad.data[index]
    original = weight.data[index]
    for e in (1e-1, 1e-3, 1e-5, 1e-7, 1e-9, 1e-11):
        weight.data[index] = original + e
        plus = loss().item()
        weight.data[index] = original - e
        minus = loss().item()
        weight.data[index] = original
        print(f"   eps {e:7.0e}: |backprop - numeric| = {abs(analytic - (plus - minus) / (2 * e)):.1e}")

    print("\n6. The same, for every element, with tinygnet.gradcheck (x and all parameters):")
    inputs = [x] + list(module.parameters())

    def fn(x_, *params):           # gradcheck nudges the tensors it is given, in place
        return module(x_)
    gradcheck(fn, inputs, eps=1e-6, atol=1e-6, rtol=1e-4)
    print(f"   passed: {sum(t.size for t in inputs)} derivatives checked, "
          f"{2 * sum(t.size for t in inputs)} forward passes.")

    print("\n7. And a bug caught: a ReLU whose backward forgets to zero the gradient where x < 0.")

    class BrokenReLU(Function):
        def forward(self, x):
            self.mask = x > 0
            return x * self.mask

        def backward(self, gy):
            return gy                   # should be gy * self.mask

    def broken(x_):
        return BrokenReLU.apply(F.conv2d(x_, module.branch1.weight, module.branch1.bias))
    try:
        gradcheck(broken, [x], eps=1e-6, atol=1e-6, rtol=1e-4)
        print("   not caught (unexpected)")
        return 1
    except GradcheckError as error:
        print(f"   GradcheckError: {error}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

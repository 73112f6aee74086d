"""One Inception module built by hand from functional ops, branch by branch.

    python demos/inception_by_hand.py          # inception3a of the paper, 28 x 28 input

An Inception module runs four branches over the same input and stacks
their outputs on the channel axis (the paper's figure 2b):

    branch 1:  1x1 conv                              -> ch1x1 channels
    branch 2:  1x1 conv (reduce) -> 3x3 conv         -> ch3x3 channels
    branch 3:  1x1 conv (reduce) -> 5x5 conv         -> ch5x5 channels
    branch 4:  3x3 max pool (stride 1) -> 1x1 conv   -> pool_proj channels

each conv followed by a ReLU, every branch keeping H x W. This script
writes that with ``tinygnet.functional`` only (conv2d, relu, max_pool2d,
cat), prints each step's shape, parameters and multiply-adds, compares the
totals with the paper's Table 1, and checks the output against
``tinygnet.models.Inception`` given the same weights.
"""
import argparse

import numpy as np

import tinygnet
import tinygnet.functional as F
from tinygnet.models import Inception

# inception3a, the paper's Table 1: input 28 x 28 x 192.
IN_CHANNELS, SIZE = 192, 28
CH1X1, CH3X3RED, CH3X3, CH5X5RED, CH5X5, POOL_PROJ = 64, 96, 128, 16, 32, 32
TABLE1 = {"params": 159_000, "ops": 128_000_000}      # "159K" and "128M" in the paper


def conv_weights(rng, c_out, c_in, k):
    """He-normal weights (C_out, C_in, KH, KW) and zero biases, as tinygnet initialises a conv."""
    std = np.sqrt(2.0 / (c_in * k * k))
    weight = (rng.standard_normal((c_out, c_in, k, k)) * std).astype(np.float32)
    return tinygnet.tensor(weight), tinygnet.tensor(np.zeros(c_out, dtype=np.float32))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="(accepted for CI; the script is fast)")
    parser.parse_args(argv)

    rng = np.random.default_rng(0)
    x = tinygnet.tensor(rng.standard_normal((1, IN_CHANNELS, SIZE, SIZE)).astype(np.float32))
    print(f"input x: {x.shape}  (N x C x H x W: one image, inception3a's input in the paper)\n")

    # The weights, named as tinygnet.models.Inception names them.
    w = {}
    w["branch1"] = conv_weights(rng, CH1X1, IN_CHANNELS, 1)
    w["branch2_reduce"] = conv_weights(rng, CH3X3RED, IN_CHANNELS, 1)
    w["branch2"] = conv_weights(rng, CH3X3, CH3X3RED, 3)
    w["branch3_reduce"] = conv_weights(rng, CH5X5RED, IN_CHANNELS, 1)
    w["branch3"] = conv_weights(rng, CH5X5, CH5X5RED, 5)
    w["branch4"] = conv_weights(rng, POOL_PROJ, IN_CHANNELS, 1)

    totals = {"params": 0, "macs": 0}

    def conv_relu(name, inputs, padding=0):
        """conv2d + ReLU, printing what it costs. A conv's multiply-adds: every output value
        is a dot product of C_in * KH * KW inputs with as many weights."""
        weight, bias = w[name]
        y = F.relu(F.conv2d(inputs, weight, bias, padding=padding))
        c_out, c_in, kh, kw = weight.shape
        params = weight.size + bias.size
        macs = (y.size // y.shape[0]) * c_in * kh * kw          # per image
        totals["params"] += params
        totals["macs"] += macs
        print(f"    {name:<15} {kh}x{kw} conv {c_in:>3} -> {c_out:>3} + ReLU   output {str(y.shape):<16}"
              f"  params {params:>7,}   multiply-adds {macs / 1e6:6.1f} M")
        return y

    print("branch 1: 1x1 conv")
    b1 = conv_relu("branch1", x)
    print("branch 2: 1x1 reduce, then 3x3 conv (padding 1 keeps 28 x 28)")
    b2 = conv_relu("branch2", conv_relu("branch2_reduce", x), padding=1)
    print("branch 3: 1x1 reduce, then 5x5 conv (padding 2)")
    b3 = conv_relu("branch3", conv_relu("branch3_reduce", x), padding=2)
    print("branch 4: 3x3 max pool (stride 1, padding 1: no parameters, same size), then 1x1 conv")
    pooled = F.max_pool2d(x, 3, stride=1, padding=1)
    print(f"    {'max pool':<15} 3x3, stride 1, no weights   output {pooled.shape}")
    b4 = conv_relu("branch4", pooled)

    y = F.cat([b1, b2, b3, b4], dim=1)
    print(f"\nconcatenate on channels: {b1.shape[1]} + {b2.shape[1]} + {b3.shape[1]} + {b4.shape[1]}"
          f" = {y.shape[1]} channels -> output {y.shape}")

    print(f"\ntotal parameters {totals['params']:,}   (Table 1: {TABLE1['params'] // 1000}K)")
    print(f"total multiply-adds {totals['macs'] / 1e6:.1f} M per image   "
          f"(Table 1: {TABLE1['ops'] // 1_000_000}M)")
    weights = totals["params"] - sum(bias.size for _, bias in w.values())
    print(f"  The multiply-adds match. Without the biases the weights number {weights:,}; Table 1\n"
          f"  prints 159K (the paper does not say how it counted), so the check below compares\n"
          f"  with the library's module rather than with the table.")
    without_reduce = IN_CHANNELS * (CH3X3 * 9 + CH5X5 * 25)
    with_reduce = IN_CHANNELS * (CH3X3RED + CH5X5RED) + CH3X3RED * CH3X3 * 9 + CH5X5RED * CH5X5 * 25
    print(f"  Why the 1x1 reduces: 3x3 and 5x5 convs straight from {IN_CHANNELS} channels would need "
          f"{without_reduce:,} weights;\n  reducing to {CH3X3RED} and {CH5X5RED} channels first needs "
          f"{with_reduce:,}: {without_reduce / with_reduce:.1f}x fewer weights and multiply-adds.")

    # The same computation with the library's module, given the same weights.
    module = Inception(IN_CHANNELS, CH1X1, CH3X3RED, CH3X3, CH5X5RED, CH5X5, POOL_PROJ)
    state = {}
    for name, (weight, bias) in w.items():
        state[f"{name}.weight"], state[f"{name}.bias"] = weight, bias
    module.load_state_dict(state)             # strict: every name must match
    expected = module(x)
    module_params = sum(p.size for p in module.parameters())
    difference = float(np.abs(expected.numpy() - y.numpy()).max())
    print(f"\ntinygnet.models.Inception with the same weights: output {expected.shape}, "
          f"{module_params:,} parameters, largest difference from ours {difference:.2e}")
    ok = expected.shape == y.shape and module_params == totals["params"] and difference < 1e-4
    print("match" if ok else "MISMATCH")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())

"""Where the gradient vanishes: GoogLeNet at step 0 under each initialisation.

    python demos/vanishing_gradients.py

GoogLeNet without batch norm is 22 layers deep. Each conv + ReLU layer
multiplies the variance of the signal by n Var(w) / 2 (n: the fan-in; ReLU
keeps half of the second moment), and the gradient on its way back by about
the same factor. So:

    he        Var(w) = 2/n          factor 1: steady through every layer
    xavier    Var(w) = 1/n          factor 1/2, but the 0.2 biases hold the signal up
    gaussian  Var(w) = 0.01^2       factor n/20000, 0.001 to 0.1 a layer: it vanishes

This script builds the same small GoogLeNet under each scheme, pushes one
batch of random images through it and prints (1) the spread of each layer's
output, forward, and (2) each layer's gradient norm divided by fc's, with
and without the two auxiliary heads (weight 0.3), from the same weights. No
training, a few seconds. ``python -m tinygnet.demo gradflow`` then trains
these networks to see what the gradient profile means for learning.
"""
import argparse

import numpy as np

import tinygnet
from tinygnet.diagnostics import GradientMonitor
from tinygnet.models import INITS, GoogLeNet, googlenet_loss

AUX_WEIGHT = 0.3


def build(init, aux):
    """A small GoogLeNet; one seed gives the same trunk with and without the aux heads.

    Dropout off, so that the two differ by the aux heads' gradient alone."""
    tinygnet.manual_seed(0)
    return GoogLeNet(num_classes=10, config="cifar", width=0.25, stem_stride=2, aux=aux,
                     init=init, dropout=0.0, aux_dropout=0.0)


def output_spreads(model, x):
    """layer -> standard deviation of its output, for the top-level layers of the trunk."""
    spreads = {}

    def keep_spread(layer, inputs, output):
        spreads[names[id(layer)]] = float(output.data.std())

    names = {id(layer): name for name, layer in model.named_children()
             if name.startswith(("conv", "inception")) or name == "fc"}
    for layer in model.children():
        if id(layer) in names:
            layer.register_forward_hook(keep_spread)
    model(x)
    return spreads


def gradient_over_fc(model, x, y):
    """layer -> ||gradient of its parameters|| / ||gradient of fc's||, after one backward."""
    googlenet_loss(model(x), y, aux_weight=AUX_WEIGHT).total.backward()
    norms = {layer: row["grad_norm"] for layer, row in GradientMonitor(model).record(0).by_layer().items()}
    return {layer: norm / norms["fc"] for layer, norm in norms.items() if not layer.startswith("aux")}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="(accepted for CI; the script is fast)")
    parser.parse_args(argv)

    rng = np.random.default_rng(0)
    x = tinygnet.tensor(rng.standard_normal((32, 3, 32, 32)).astype(np.float32))  # like normalised images
    y = rng.integers(0, 10, 32)
    print("GoogLeNet, no batch norm, width 0.25, one batch of 32 random 32 x 32 images\n")

    spreads = {init: output_spreads(build(init, aux=False), x) for init in INITS}
    print("1. forward: standard deviation of each layer's output (the input's is 1)")
    print(f"  {'layer':<14}" + "".join(f"{init:>12}" for init in INITS))
    for layer in spreads["he"]:
        print(f"  {layer:<14}" + "".join(f"{spreads[init][layer]:>12.2e}" for init in INITS))

    ratios = {(init, aux): gradient_over_fc(build(init, aux), x, y)
              for init in INITS for aux in (True, False)}
    print("\n2. backward: each layer's gradient norm / fc's, with and without the aux heads "
          f"(weight {AUX_WEIGHT})")
    print(f"  {'layer':<14}" + "".join(f"{init + (' +aux' if aux else ' no aux'):>17}"
                                        for init in INITS for aux in (True, False)))
    for layer in ratios["he", True]:
        print(f"  {layer:<14}" + "".join(f"{ratios[init, aux][layer]:>17.2e}"
                                        for init in INITS for aux in (True, False)))
    print("\n  Read conv1's row: the gradient that reaches the first layer, relative to the last.\n"
          "  The aux heads join at inception4a and inception4d: below them they add a gradient\n"
          "  that has crossed fewer layers, so it has shrunk less.")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""One training step of a small GoogLeNet: its three losses, and where each one reaches.

    python demos/three_losses.py

In training, GoogLeNet has three classifiers: the main one at the top and
two auxiliary ones hanging off inception4a and inception4d (the paper's
section 5). Each gets its own cross-entropy, and the network trains on

    total = main + 0.3 * (aux1 + aux2)

This script runs one batch through a small GoogLeNet, prints the three
losses and the total, backpropagates each loss alone to show which layers
its gradient reaches (and how strongly), takes one SGD step on the total,
and shows that at inference the auxiliary heads are not even run.
"""
import argparse

import numpy as np

import tinygnet
from tinygnet.models import GoogLeNet, googlenet_loss
from tinygnet.optim import SGD

AUX_WEIGHT = 0.3


def layer_of(name):
    return name.split(".")[0]        # "inception3a.branch1.weight" -> "inception3a"


def gradient_norms_by_layer(model):
    """layer -> norm of its parameters' gradient (0 where the loss did not reach it)."""
    squares = {}
    for name, p in model.named_parameters():
        g = 0.0 if p.grad is None else float((p.grad.numpy() ** 2).sum())
        squares[layer_of(name)] = squares.get(layer_of(name), 0.0) + g
    return {layer: s ** 0.5 for layer, s in squares.items()}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="(accepted for CI; the script is fast)")
    parser.parse_args(argv)

    tinygnet.manual_seed(0)
    # An eighth of the paper's widths, stride-2 stem: small enough to run in a second.
    # No dropout, so the losses before and after the step are comparable.
    model = GoogLeNet(num_classes=10, config="cifar", width=0.125, stem_stride=2,
                      dropout=0.0, aux_dropout=0.0)
    rng = np.random.default_rng(0)
    x = tinygnet.tensor(rng.standard_normal((16, 3, 32, 32)).astype(np.float32))
    y = rng.integers(0, 10, 16)
    print(f"a batch of {x.shape[0]} random 32 x 32 images with random labels; GoogLeNet width 0.125, "
          f"{sum(p.size for p in model.parameters()):,} parameters\n")

    model.train()
    outputs = model(x)
    print("train mode: the model returns three sets of logits, in this order")
    for name, logits in zip(outputs._fields, outputs):
        print(f"  {name:<7} {logits.shape}")

    losses = googlenet_loss(outputs, y, aux_weight=AUX_WEIGHT)
    print("\nthe losses (cross-entropy; ln 10 = 2.303 is a uniform guess over 10 classes)")
    print(f"  main  {losses.main.item():.4f}")
    print(f"  aux1  {losses.aux1.item():.4f}   (classifier on inception4a)")
    print(f"  aux2  {losses.aux2.item():.4f}   (classifier on inception4d)")
    by_hand = losses.main.item() + AUX_WEIGHT * (losses.aux1.item() + losses.aux2.item())
    print(f"  total {losses.total.item():.4f} = main + {AUX_WEIGHT} * (aux1 + aux2) = {by_hand:.4f}")

    print("\nwhich layers does each loss reach? Backpropagate each one alone (aux ones weighted "
          f"by {AUX_WEIGHT})\nand look at the gradient norm it leaves in each layer:")
    terms = [("main", losses.main, 1.0), ("aux1", losses.aux1, AUX_WEIGHT),
             ("aux2", losses.aux2, AUX_WEIGHT)]
    reach = {}
    for i, (head, loss, weight) in enumerate(terms):
        model.zero_grad()
        # retain_graph: the three losses share the lower part of the graph, so the
        # first two backward passes must keep its saved values for the next ones.
        (loss * weight).backward(retain_graph=i < len(terms) - 1)
        reach[head] = gradient_norms_by_layer(model)
    print(f"  {'layer':<14}" + "".join(f"{head:>12}" for head, _, _ in terms))
    for layer in reach["main"]:
        cells = "".join(f"{reach[h][layer]:>12.4f}" if reach[h][layer] > 0 else f"{'-':>12}"
                        for h, _, _ in terms)
        print(f"  {layer:<14}{cells}")
    print("  '-': not reached. aux1's loss enters at inception4a, where its head is attached,\n"
          "  and flows down from there; aux2's enters at inception4d; only the main loss reaches\n"
          "  inception4e ... fc. From inception4a down all three add up: that is the extra\n"
          "  gradient the heads inject into the lower layers.")

    print("\none SGD step on the total loss (lr 0.01, momentum 0.9)")
    optimizer = SGD(model.parameters(), lr=0.01, momentum=0.9)
    model.zero_grad()
    googlenet_loss(model(x), y, aux_weight=AUX_WEIGHT).total.backward()
    optimizer.step()
    after = googlenet_loss(model(x), y, aux_weight=AUX_WEIGHT)
    for name, before_loss, after_loss in zip(losses._fields, losses, after):
        print(f"  {name:<6} {before_loss.item():.4f} -> {after_loss.item():.4f}")

    model.eval()
    logits = model(x)
    print(f"\neval mode: the model returns the main logits only, {logits.shape}; "
          "the auxiliary heads do not run")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

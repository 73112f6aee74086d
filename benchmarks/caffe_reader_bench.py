"""How long tinygnet takes to read a full-size BVLC GoogLeNet caffemodel, and to load it.

    PYTHONPATH=. python benchmarks/caffe_reader_bench.py [--repeats 7] [--version 1]

The real file cannot be downloaded here, so a synthetic one of the same size
is written first (random weights, every layer of the BVLC train_val net, 53 MB)
by the tests' independent encoder (``tests/models/caffe_writer.py``, which
needs the ``protobuf`` package). Then, interleaved, ``repeats`` times each:

* ``read_caffemodel``: the wire-format reader alone (bytes -> layers of arrays);
* ``load_caffe_googlenet``: the reader, building the width-1 GoogLeNet, and
  copying the weights in.

Prints the median and the range of each, and the file's size. The first
read also pays the page cache; the median does not.
"""
import argparse
import importlib.util
import os
import statistics
import sys
import tempfile
import time

import numpy as np

from tinygnet.models import GoogLeNet, load_caffe_googlenet
from tinygnet.models.caffemodel import read_caffemodel

WRITER = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                      "tests", "models", "caffe_writer.py")


def synthetic_file(path, version, seed=0):
    spec = importlib.util.spec_from_file_location("caffe_writer", WRITER)
    writer = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(writer)
    rng = np.random.default_rng(seed)
    state = {name: rng.standard_normal(tuple(t.shape)).astype(np.float32)
             for name, t in GoogLeNet(config="imagenet").state_dict().items()}
    writer.write(path, writer.googlenet_layers(state), version)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--version", type=int, choices=(1, 2), default=1,
                        help="the caffemodel format (1: as the 2014 BVLC file)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "bvlc_googlenet.caffemodel")
        synthetic_file(path, args.version)
        times = {"read_caffemodel": [], "load_caffe_googlenet": []}
        for _ in range(args.repeats):
            for name, run in (("read_caffemodel", read_caffemodel),
                              ("load_caffe_googlenet", load_caffe_googlenet)):
                started = time.perf_counter()
                run(path)
                times[name].append(time.perf_counter() - started)
        size = os.path.getsize(path)
    print(f"synthetic V{args.version} caffemodel, {size / 1e6:.1f} MB; {args.repeats} runs each, "
          f"interleaved; {os.cpu_count()} CPU cores")
    for name, seconds in times.items():
        print(f"  {name:<22} median {statistics.median(seconds):.3f} s "
              f"(min {min(seconds):.3f}, max {max(seconds):.3f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())

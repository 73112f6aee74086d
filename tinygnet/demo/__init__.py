"""Runnable demos: ``python -m tinygnet.demo SUBCOMMAND [options]``.

- ``cifar``: train GoogLeNet on CIFAR-10 (``tinygnet/demo/cifar.py``).

Each subcommand is a module with ``main(argv) -> exit status``; add one by
adding a line to ``SUBCOMMANDS`` in ``tinygnet/demo/__main__.py``.
"""

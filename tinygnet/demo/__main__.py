"""``python -m tinygnet.demo SUBCOMMAND [options]``: run one of the demos.

Each subcommand is a module of this package with ``main(argv) -> int`` (the
exit status) and a one-line description; it is imported only when chosen.
"""
import importlib
import sys

from ..kernels.workspaces import keep_freed_memory

# subcommand -> (module, what it does). Add a demo by adding a line.
SUBCOMMANDS = {
    "cifar": ("tinygnet.demo.cifar", "train GoogLeNet on CIFAR-10"),
    "gradflow": ("tinygnet.demo.gradflow", "aux heads vs vanishing gradients: the 2014 experiment"),
    "classify": ("tinygnet.demo.classify", "the trained BVLC GoogLeNet's three heads on photos"),
}


def usage() -> str:
    lines = ["usage: python -m tinygnet.demo SUBCOMMAND [options]", "", "subcommands:"]
    lines += [f"  {name:<10} {about}" for name, (_, about) in SUBCOMMANDS.items()]
    lines += ["", "`python -m tinygnet.demo SUBCOMMAND --help` explains a subcommand's options."]
    return "\n".join(lines)


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv:                     # a usage error: on stderr, as argparse does
        print(f"error: a subcommand is required\n\n{usage()}", file=sys.stderr)
        return 2
    if argv[0] in ("-h", "--help"):
        print(usage())
        return 0
    name, rest = argv[0], argv[1:]
    if name not in SUBCOMMANDS:
        print(f"error: unknown subcommand {name!r}\n\n{usage()}", file=sys.stderr)
        return 2
    # This process is a demo's: its arrays may keep their memory from step to step.
    keep_freed_memory()
    module = importlib.import_module(SUBCOMMANDS[name][0])
    return module.main(rest)


if __name__ == "__main__":
    sys.exit(main())

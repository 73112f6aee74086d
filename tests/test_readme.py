"""The README and docs/ say what is true: their examples run, their commands and links work."""
import glob
import importlib
import os
import re
import shlex

import pytest

from tinygnet.demo.__main__ import SUBCOMMANDS

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
README = os.path.join(REPO, "README.md")
PAGES = [README] + sorted(glob.glob(os.path.join(REPO, "docs", "*.md")))
README_MAX_LINES = 250        # a guide a learner reads through; measurements go to docs/
# Talk of one machine belongs in docs/ and benchmarks/, not in the guide or the library.
MACHINE_TALK = ("EPYC", "this project's", "offline machine", "make_cifar10", "2-core")


def read(path):
    with open(path, encoding="utf-8") as f:
        return f.read()


def name(path):
    return os.path.relpath(path, REPO)


def fenced_blocks(text, language):
    return re.findall(rf"^```{language}\n(.*?)^```", text, flags=re.S | re.M)


def python_blocks():
    return [(name(page), block) for page in PAGES for block in fenced_blocks(read(page), "python")]


def test_the_readme_has_examples():
    assert len(fenced_blocks(read(README), "python")) >= 3


@pytest.mark.parametrize("index", range(len(python_blocks())))
def test_every_python_example_runs(index, capsys):
    page, block = python_blocks()[index]
    exec(compile(block, f"{page}, python block {index}", "exec"), {})


def test_the_readme_test_command_is_what_ci_runs():
    lines = [line.strip() for line in read(os.path.join(REPO, ".ci", "run")).splitlines()
             if line.strip() and not line.lstrip().startswith("#")]
    install = [line for line in lines if re.search(r'pip install .*-e "', line)]    # tinygnet itself
    tests = [line for line in lines if line.startswith("python -m pytest")]
    assert len(install) == 1 and len(tests) == 1, lines
    extras = re.search(r'-e "(\.\[[a-z,]+\])"', install[0]).group(1)
    command = f'pip install -e "{extras}" && {tests[0]}'
    commands = [line.strip() for block in fenced_blocks(read(README), "bash")
                for line in block.splitlines()]
    assert command in commands, f"the README's test command is not .ci/run's: {command}"


def demo_commands():
    """Every `python -m tinygnet.demo ...` in the pages' bash blocks and inline code, once."""
    found = {}
    for page in PAGES:
        text = read(page)
        lines = [line for block in fenced_blocks(text, "bash") for line in block.splitlines()]
        lines += [" ".join(span.split()) for span in re.findall(r"`([^`\n]+(?:\n[^`\n]+)?)`", text)]
        for line in lines:
            for command in line.split("#")[0].split("&&"):
                words = shlex.split(command)
                for i in range(len(words) - 2):
                    if words[i:i + 3] == ["python", "-m", "tinygnet.demo"]:
                        found.setdefault(" ".join(words[i + 3:]), (name(page), words[i + 3:]))
    return list(found.values())


def test_the_pages_name_demo_commands():
    assert ("README.md", ["cifar"]) in demo_commands()


@pytest.mark.parametrize("page, argv", demo_commands(), ids=[" ".join(argv) for _, argv in demo_commands()])
def test_every_demo_command_parses(page, argv, capsys):
    assert argv and argv[0] in SUBCOMMANDS, f"{page}: no such demo: {argv}"
    parser = importlib.import_module(SUBCOMMANDS[argv[0]][0]).build_parser()
    try:
        parser.parse_args(argv[1:])
    except SystemExit as stop:          # --help exits 0; a bad option exits 2
        assert stop.code == 0, f"{page}: python -m tinygnet.demo {' '.join(argv)}: " \
                               f"{capsys.readouterr().err.strip()}"


def anchors(path):
    """GitHub's anchors of a Markdown file's headings."""
    headings = re.findall(r"^#+ +(.+?) *$", re.sub(r"^```.*?^```", "", read(path), flags=re.S | re.M),
                          flags=re.M)
    return {re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-") for heading in headings}


@pytest.mark.parametrize("page", PAGES, ids=name)
def test_every_relative_link_resolves(page):
    links = re.findall(r"\]\(([^)\s]+)\)", read(page))
    broken = []
    for link in links:
        if re.match(r"[a-z]+:", link):         # https:, mailto:
            continue
        target, _, anchor = link.partition("#")
        path = os.path.normpath(os.path.join(os.path.dirname(page), target)) if target else page
        if not os.path.exists(path):
            broken.append(f"{link}: no file {name(path)}")
        elif anchor and not (path.endswith(".md") and anchor in anchors(path)):
            broken.append(f"{link}: no heading #{anchor} in {name(path)}")
    assert not broken, f"{name(page)}: " + "; ".join(broken)


@pytest.mark.parametrize("page", PAGES, ids=name)
def test_every_path_named_exists(page):
    text = re.sub(r"\]\([^)]*\)", "]", read(page))                  # links: checked above
    paths = re.findall(r"(?<![\w./-])((?:tinygnet|tests|demos|benchmarks|docs|\.ci)/[\w./-]*)", text)
    missing = sorted({path for path in paths if not os.path.exists(os.path.join(REPO, path.rstrip(".")))})
    assert not missing, f"{name(page)} names files that do not exist: {missing}"


def test_the_docs_pages_the_library_names_exist():
    files = sorted(glob.glob(os.path.join(REPO, "tinygnet", "**", "*.py"), recursive=True))
    named = {(name(path), page) for path in files for page in re.findall(r"docs/[\w.-]*\w", read(path))}
    assert named, "the library names no docs/ page"
    missing = sorted(f"{path}: {page}" for path, page in named if not os.path.exists(os.path.join(REPO, page)))
    assert not missing, f"no such page: {missing}"


def test_the_readme_stays_a_guide():
    lines = read(README).count("\n")
    assert lines <= README_MAX_LINES, \
        f"README.md has {lines} lines: move measurements and long stories into docs/"


def test_machine_talk_stays_out_of_the_guide_and_the_library():
    files = [README] + sorted(glob.glob(os.path.join(REPO, "tinygnet", "**", "*.py"), recursive=True))
    found = [f"{name(path)}: {phrase!r}" for path in files for phrase in MACHINE_TALK
             if phrase.lower() in read(path).lower()]
    assert not found, "machine talk belongs in docs/: " + ", ".join(found)

"""Pieces both demos share: the output folder, signals that stop a run, how a loss is described."""
import os
import signal

import pytest

from tinygnet.demo import cifar, gradflow
from tinygnet.demo.common import Interrupted, describe_loss, exit_status, sigterm_interrupts


@pytest.mark.parametrize("demo", [cifar, gradflow], ids=["cifar", "gradflow"])
@pytest.mark.parametrize("out, words", [
    ("a-file", "--out {out} is a file, not a folder"),
    ("a-file/run", "--out {out} lies under {file}, which is a file, not a folder"),
])
def test_out_that_is_or_lies_under_a_file_is_refused_before_the_data(tmp_path, capsys, demo, out,
                                                                     words):
    (tmp_path / "a-file").write_text("notes")
    out = tmp_path / out
    # The data folder does not exist: the --out check must come first.
    assert demo.main(["--out", str(out), "--data", str(tmp_path / "no-data"), "--no-download"]) == 2
    assert capsys.readouterr().err == (f"{demo.PROG}: error: "
                                       f"{words.format(out=out, file=tmp_path / 'a-file')}; "
                                       f"choose a folder with --out DIR\n")
    assert (tmp_path / "a-file").read_text() == "notes"


BAD_VALUES = [
    (["--width", "50"], "argument --width: '50': must be a number > 0 and at most 4 (1 is the "
                        "paper's network; the parameters and their memory grow as the width "
                        "squared, 16x the paper's at 4)"),
    (["--width", "1e300"], "argument --width: '1e300': must be a number > 0 and at most 4"),
    (["--out", ""], "argument --out: an empty path names no file or folder"),
    (["--data", ""], "argument --data: an empty path names no file or folder"),
    (["--resume", ""], "argument --resume: an empty path names no file or folder"),
]


@pytest.mark.parametrize("demo, argv, words", [
    (demo, argv, words) for demo in (cifar, gradflow) for argv, words in BAD_VALUES
    if not (demo is gradflow and argv[0] == "--resume")])       # gradflow has no --resume
def test_impossible_widths_and_empty_paths_are_usage_errors_before_anything(demo, argv, words,
                                                                           tmp_path, capsys,
                                                                           monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as stop:
        demo.main(argv + ["--no-download"])
    err = capsys.readouterr().err
    assert stop.value.code == 2 and err.endswith("\n") and words in err.splitlines()[-1]
    assert os.listdir(tmp_path) == []                    # no runs/ folder, no config.json
    assert demo.build_parser().parse_args(["--width", "4"]).width == 4.0


def test_sigterm_stops_like_ctrl_c_inside_the_block_only():
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(Interrupted) as caught, sigterm_interrupts():
        signal.raise_signal(signal.SIGTERM)
    assert isinstance(caught.value, KeyboardInterrupt)
    assert exit_status(caught.value) == 143 and exit_status(KeyboardInterrupt()) == 130
    assert signal.getsignal(signal.SIGTERM) is before


def test_a_loss_is_described_with_its_parts():
    assert describe_loss([float("nan"), 2.3021, None, None]) == "nan (main 2.302)"
    assert describe_loss([float("inf"), 1.0, float("inf"), 0.5]) == "inf (main 1, aux1 inf, aux2 0.5)"

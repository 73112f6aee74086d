"""Pieces both demos share: the output folder, signals that stop a run, how a loss is described."""
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

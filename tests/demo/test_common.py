"""Pieces both demos share: signals that stop a run, and how a loss is described."""
import signal

import pytest

from tinygnet.demo.common import Interrupted, describe_loss, exit_status, sigterm_interrupts


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

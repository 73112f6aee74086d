"""``python -m tinygnet.demo``: the process that runs a demo."""
import pytest

from tinygnet.demo import __main__ as demo_main


def test_a_demo_process_keeps_its_freed_memory_before_the_demo_starts(monkeypatch, capsys):
    calls = []
    monkeypatch.setattr(demo_main, "keep_freed_memory", lambda: calls.append("kept"))
    with pytest.raises(SystemExit):                 # --help: the demo's own parser, then exit
        demo_main.main(["cifar", "--help"])
    assert calls == ["kept"] and "usage:" in capsys.readouterr().out


def test_no_demo_no_change_to_the_process(monkeypatch, capsys):
    calls = []
    monkeypatch.setattr(demo_main, "keep_freed_memory", lambda: calls.append("kept"))
    assert demo_main.main(["no-such-demo"]) == 2
    assert calls == []

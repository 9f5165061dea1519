"""moefast._util.progress: lines on stderr for pipes, nothing when not shown."""

from __future__ import annotations

from moefast._util.progress import stage, steps


def test_steps_on_a_pipe_print_zero_first_then_one_line_per_item(capsys):
    # capsys's stderr is not a terminal: the pipe's form.
    seen = []
    for item in steps(iter("abc"), 3, "work", shown=True):
        seen.append((item, capsys.readouterr().err))
    assert seen == [("a", "work: 0/3\n"), ("b", "work: 1/3\n"), ("c", "work: 2/3\n")]
    assert capsys.readouterr().err == "work: 3/3\n"


def test_nothing_is_printed_when_not_shown(capsys):
    assert list(steps(range(3), 3, "work", shown=False)) == [0, 1, 2]
    stage("starting", shown=False)
    assert capsys.readouterr().err == ""
    stage("starting", shown=True)
    assert capsys.readouterr().err == "starting\n"

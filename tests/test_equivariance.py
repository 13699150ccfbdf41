"""The `equivariance` command: exact attention vs random features under cyclic shifts."""

import pandas as pd

from relative_performer.cli import main


def test_equivariance_command_separates_exact_from_expected_relativity(tmp_path, capsys):
    out = tmp_path / "eq.csv"
    status = main(["equivariance", "--models", "RelativePerformer", "ExactRelativePerformer",
                   "--side", "6", "--draws", "2", "--output", str(out)])
    assert status == 0
    table = pd.read_csv(out)
    worst = table.groupby(["model", "attention"])["max_relative_logit_change"].max()
    # strategy 1 is relative with exact attention, but not for a fixed draw of random features
    assert worst["RelativePerformer", "exact"] < 1e-10, worst
    assert worst["RelativePerformer", "favor+"] > 1e-6, worst
    # the exactly relative model is invariant for every draw
    assert worst["ExactRelativePerformer", "favor+"] < 1e-10, worst
    assert "ExactRelativePerformer" in capsys.readouterr().out

"""Helpers of the cluster tests (tests/test_cluster*.py)."""

from __future__ import annotations


def one_error_line(capsys) -> str:
    """What `tune` printed on stderr: one line of error, and nothing else."""
    err = capsys.readouterr().err.strip()
    assert err.startswith("tune: error: ") and "\n" not in err, err
    return err

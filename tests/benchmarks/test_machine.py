"""The helpers benchmark scripts share to pass results from a child process to its parent."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

from machine import (  # noqa: E402
    child_result,
    non_negative_int,
    positive_int,
    result_line,
)


def test_the_parent_reads_the_last_result_line_among_other_output():
    out = "\n".join(["warming up", result_line({"img_s": 1.5}), "UserWarning: something",
                     result_line({"img_s": 2.5, "p50_ms": 3.0}), "done"])
    assert child_result(out) == {"img_s": 2.5, "p50_ms": 3.0}


def test_a_child_that_printed_no_result_gives_none():
    assert child_result("Traceback (most recent call last):\n  RuntimeError") is None
    assert child_result("") is None


def test_size_arguments_refuse_zero_negative_and_non_numbers():
    assert positive_int("3") == 3 and non_negative_int("0") == 0
    for bad in ("0", "-2", "x", "1.5"):
        with pytest.raises(argparse.ArgumentTypeError):
            positive_int(bad)
    with pytest.raises(argparse.ArgumentTypeError, match="0 or more"):
        non_negative_int("-1")

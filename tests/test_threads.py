"""medscope serve asks GNU OpenMP to wait passively, before torch loads; nothing else does,
and a user's own choice wins."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from medscope.threads import prefer_passive_wait


def test_sets_passive_when_nothing_chosen_and_torch_not_loaded():
    env: dict[str, str] = {}
    assert prefer_passive_wait(env, modules={}) is True
    assert env == {"OMP_WAIT_POLICY": "PASSIVE"}


def test_leaves_a_users_choice_alone():
    for chosen in ({"OMP_WAIT_POLICY": "ACTIVE"}, {"GOMP_SPINCOUNT": "10000"}):
        env = dict(chosen)
        assert prefer_passive_wait(env, modules={}) is False
        assert env == chosen


def test_does_nothing_once_torch_is_loaded():
    # libgomp has read its environment by then: setting it would only mislead
    env: dict[str, str] = {}
    assert prefer_passive_wait(env, modules={"torch": object()}) is False
    assert env == {}


def spin_count(code: str, **extra_env: str) -> str:
    """GOMP_SPINCOUNT as libgomp itself reports it when it starts (OMP_DISPLAY_ENV=VERBOSE):
    0 under the passive policy, 300000 by default."""
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    env.update(OMP_DISPLAY_ENV="VERBOSE", **extra_env)
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                          timeout=300)
    lines = [ln for ln in done.stderr.splitlines() if ln.strip().startswith("GOMP_SPINCOUNT")]
    assert lines, done.stderr[-2000:]
    return lines[0].split("=")[1].strip().strip("'")


SERVE = "from medscope import cli; cli.main(['serve', '/nonexistent-run'])"


@pytest.mark.slow
def test_serve_reaches_libgomp_before_torch_loads():
    assert spin_count(SERVE) == "0"
    assert spin_count(SERVE, GOMP_SPINCOUNT="12345") == "12345"  # the user's choice wins


@pytest.mark.slow
def test_other_commands_keep_the_default_spin():
    # passive waiting cost a quiet training run ~8 % (benchmarks/results/omp_wait.txt)
    assert spin_count("from medscope import cli; cli.main(['models'])") \
        == "300000"

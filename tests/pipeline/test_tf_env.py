"""pipeline/__init__.py: TensorFlow's oneDNN CPU kernels are on unless an admin said otherwise."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest


def _value_after_import(env: dict[str, str]) -> str:
    code = "import pipeline, os; print(os.environ.get('TF_ENABLE_ONEDNN_OPTS'))"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    return out.stdout.strip()


@pytest.mark.parametrize("given, expected", [(None, "1"), ("0", "0"), ("1", "1")])
def test_onednn_defaults_on_and_an_admins_value_wins(given: str | None, expected: str) -> None:
    env = {k: v for k, v in os.environ.items() if k != "TF_ENABLE_ONEDNN_OPTS"}
    if given is not None:
        env["TF_ENABLE_ONEDNN_OPTS"] = given
    assert _value_after_import(env) == expected

"""``source scripts/setup_env.sh`` in bash: it sets up the venv's PATH and leaves the caller's shell options alone.

A fake venv (its ``bin/python`` the running interpreter, its stamp already matching ``pyproject.toml``) keeps pip
out of the test, so each case takes well under a second.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _venv(tmp_path, python: str) -> str:
    """A venv folder whose ``bin/python`` is ``python`` and whose base stamp matches this ``pyproject.toml``."""
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    os.symlink(python, venv / "bin" / "python")
    pyproject = open(os.path.join(ROOT, "pyproject.toml"), "rb").read()
    (venv / ".mindrlhf-stamp-base").write_text(hashlib.sha256(pyproject + b"base").hexdigest() + "\n")
    return str(venv)


def _bash(script: str, venv: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "MINDRLHF_PYTHON")}
    env["MINDRLHF_VENV"] = venv
    return subprocess.run(
        ["bash", "--norc", "--noprofile", "-c", script], cwd=ROOT, env=env, text=True, capture_output=True, timeout=60
    )


# Options as an interactive shell has them (none of errexit / nounset / pipefail), and as a strict script has them.
@pytest.mark.parametrize("options", ["set +euo pipefail", "set -euo pipefail"], ids=["interactive", "strict"])
def test_sourcing_keeps_the_callers_shell_options(tmp_path, options):
    venv = _venv(tmp_path, sys.executable)
    result = _bash(
        f"""{options}
before="$(set +o; shopt -p)"
source scripts/setup_env.sh base
after="$(set +o; shopt -p)"
[[ "$before" == "$after" ]] || {{ diff <(echo "$before") <(echo "$after"); exit 3; }}
echo "python=$MINDRLHF_PYTHON virtual_env=$VIRTUAL_ENV path0=${{PATH%%:*}}"
""",
        venv,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"python={venv}/bin/python virtual_env={venv} path0={venv}/bin" in result.stdout


def test_a_failed_setup_returns_1_and_the_shell_goes_on(tmp_path):
    # bin/python exits 1: the stamp hash cannot be computed, so the setup fails; an interactive shell must survive it
    broken = tmp_path / "broken_python"
    broken.write_text("#!/bin/sh\nexit 1\n")
    broken.chmod(0o755)
    venv = _venv(tmp_path, str(broken))
    result = _bash(
        """before="$(set +o)"
source scripts/setup_env.sh base
echo "status=$?"
[[ "$before" == "$(set +o)" ]] && echo "options unchanged"
[[ -z "${MINDRLHF_PYTHON:-}" ]] && echo "not exported"
""",
        venv,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.split() == ["status=1", "options", "unchanged", "not", "exported"], result.stdout

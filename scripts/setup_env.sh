#!/usr/bin/env bash
# Idempotent environment bootstrap. Source it from other scripts, naming the mode explicitly:
#
#   source scripts/setup_env.sh base   # venv + `pip install -e .`
#   source scripts/setup_env.sh test   # also torch==2.13.0 (CPU reference) first, then `pip install -e .[test]`
#
# (A bare `source scripts/setup_env.sh` sees the caller's own arguments, so any first argument other than `test`
# means base.) The venv lives at ${MINDRLHF_VENV:-<repo>/.venv} and is created with python3.11 (else python3) when
# missing. The pip step is skipped when a stamp in the venv matches a hash of pyproject.toml and the mode, so re-runs
# take well under a second. Afterwards the venv is on PATH, VIRTUAL_ENV is set and MINDRLHF_PYTHON names its python.
set -euo pipefail

_mindrlhf_env_hash() {  # <python> <pyproject> <mode>: sha256 of the file contents plus the mode
    "$1" -c 'import hashlib, sys; print(hashlib.sha256(open(sys.argv[1], "rb").read() + sys.argv[2].encode()).hexdigest())' \
        "$2" "$3"
}

_mindrlhf_setup_env() {
    local mode="base"
    [[ "${1:-}" == "test" ]] && mode="test"
    local repo venv py
    repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
    venv="${MINDRLHF_VENV:-$repo/.venv}"

    if [[ ! -x "$venv/bin/python" ]]; then
        py="$(command -v python3.11 || command -v python3)" || { echo "setup_env: no python3 found" >&2; return 1; }
        echo "setup_env: creating venv $venv with $py" >&2
        "$py" -m venv "$venv"
    fi
    py="$venv/bin/python"

    # Several scripts may bootstrap at once; let one pip run at a time.
    local lock_fd=""
    if command -v flock >/dev/null 2>&1; then
        exec {lock_fd}>"$venv/.mindrlhf-setup.lock"
        flock "$lock_fd"
    fi

    local want_base want_test stamp_base="$venv/.mindrlhf-stamp-base" stamp_test="$venv/.mindrlhf-stamp-test"
    want_base="$(_mindrlhf_env_hash "$py" "$repo/pyproject.toml" base)"
    want_test="$(_mindrlhf_env_hash "$py" "$repo/pyproject.toml" test)"
    local have_base="" have_test=""
    [[ -f "$stamp_base" ]] && have_base="$(<"$stamp_base")"
    [[ -f "$stamp_test" ]] && have_test="$(<"$stamp_test")"

    # A test install is a superset of a base install.
    if [[ "$have_test" != "$want_test" && ( "$mode" == "test" || "$have_base" != "$want_base" ) ]]; then
        echo "setup_env: installing mindrlhf ($mode) into $venv" >&2
        if [[ "$mode" == "test" ]]; then
            # torch first: with it already present, transformers does not make pip pull a CUDA build.
            "$py" -m pip install -q "torch==2.13.0"
            (cd "$repo" && "$py" -m pip install -q -e ".[test]")
            echo "$want_test" >"$stamp_test"
        else
            (cd "$repo" && "$py" -m pip install -q -e .)
            echo "$want_base" >"$stamp_base"
        fi
    fi

    if [[ -n "$lock_fd" ]]; then
        exec {lock_fd}>&-
    fi
    export VIRTUAL_ENV="$venv"
    case ":$PATH:" in
        *":$venv/bin:"*) ;;
        *) export PATH="$venv/bin:$PATH" ;;
    esac
    export MINDRLHF_PYTHON="$py"
}

_mindrlhf_setup_env "${1:-}"
unset -f _mindrlhf_setup_env _mindrlhf_env_hash

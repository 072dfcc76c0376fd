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
# Sourcing changes nothing else in the caller's shell: no shell option is set (an interactive shell keeps its own
# errexit/nounset/pipefail settings), a failed step prints one line and makes the `source` return 1.

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
        "$py" -m venv "$venv" || { echo "setup_env: could not create $venv" >&2; return 1; }
    fi
    py="$venv/bin/python"

    # Several scripts may bootstrap at once; let one pip run at a time.
    local lock_fd=""
    if command -v flock >/dev/null 2>&1; then
        exec {lock_fd}>"$venv/.mindrlhf-setup.lock"
        flock "$lock_fd"
    fi
    _mindrlhf_install "$mode" "$repo" "$py"
    local status=$?
    if [[ -n "$lock_fd" ]]; then
        exec {lock_fd}>&-
    fi
    [[ $status -eq 0 ]] || return 1
    export VIRTUAL_ENV="$venv"
    case ":$PATH:" in
        *":$venv/bin:"*) ;;
        *) export PATH="$venv/bin:$PATH" ;;
    esac
    export MINDRLHF_PYTHON="$py"
}

_mindrlhf_install() {  # <mode> <repo> <python>: pip install unless the venv's stamp matches pyproject.toml + mode
    local mode="$1" repo="$2" py="$3" venv
    venv="$(dirname "$(dirname "$py")")"

    local want_base want_test stamp_base="$venv/.mindrlhf-stamp-base" stamp_test="$venv/.mindrlhf-stamp-test"
    want_base="$(_mindrlhf_env_hash "$py" "$repo/pyproject.toml" base)" || return 1
    want_test="$(_mindrlhf_env_hash "$py" "$repo/pyproject.toml" test)" || return 1
    local have_base="" have_test=""
    [[ -f "$stamp_base" ]] && have_base="$(<"$stamp_base")"
    [[ -f "$stamp_test" ]] && have_test="$(<"$stamp_test")"

    # A test install is a superset of a base install.
    if [[ "$have_test" != "$want_test" && ( "$mode" == "test" || "$have_base" != "$want_base" ) ]]; then
        echo "setup_env: installing mindrlhf ($mode) into $venv" >&2
        if [[ "$mode" == "test" ]]; then
            # torch first: with it already present, transformers does not make pip pull a CUDA build.
            "$py" -m pip install -q "torch==2.13.0" && (cd "$repo" && "$py" -m pip install -q -e ".[test]") \
                || { echo "setup_env: pip install failed (see above)" >&2; return 1; }
            echo "$want_test" >"$stamp_test"
        else
            (cd "$repo" && "$py" -m pip install -q -e .) \
                || { echo "setup_env: pip install failed (see above)" >&2; return 1; }
            echo "$want_base" >"$stamp_base"
        fi
    fi
}

_mindrlhf_setup_env "${1:-}"
_mindrlhf_status=$?
unset -f _mindrlhf_setup_env _mindrlhf_install _mindrlhf_env_hash
if [[ $_mindrlhf_status -ne 0 ]]; then
    unset _mindrlhf_status
    return 1 2>/dev/null || exit 1
fi
unset _mindrlhf_status

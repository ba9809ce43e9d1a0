#!/usr/bin/env bash
# The two commands of this repository:
#   ./taas.sh run  [taas up options]   create .venv if needed, install, start API + workers + Redis (SQLite)
#   ./taas.sh test [pytest options]    same environment with the dev tools, then ruff, mypy, lint-imports, pytest
# Installs use pip only and are skipped when .venv already holds this pyproject.toml's install.
# TAAS_PYTHON picks the interpreter for a new .venv (default: python3.11, else python3 if >= 3.11).
set -euo pipefail
cd "$(dirname "$0")"

VENV=.venv
TORCH=(torch==2.14.1 torchvision==0.29.1)

find_python() {
    local candidate
    for candidate in "${TAAS_PYTHON:-}" python3.11 python3; do
        [ -n "$candidate" ] || continue
        if command -v "$candidate" >/dev/null 2>&1 \
            && "$candidate" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
            echo "$candidate"
            return 0
        fi
    done
    echo "taas.sh: Python 3.11 or newer is needed: install python3.11 or set TAAS_PYTHON" >&2
    return 1
}

# setup TARGET: make .venv hold TARGET ("." or ".[dev]"), installed editable.
setup() {
    local target=$1 python stamp want
    if [ ! -x "$VENV/bin/python" ]; then
        python=$(find_python)
        echo "taas.sh: creating $VENV with $("$python" --version)"
        "$python" -m venv "$VENV"
    fi
    stamp="$VENV/.taas-installed"
    want="$("$VENV/bin/python" -c 'import hashlib; print(hashlib.sha256(open("pyproject.toml", "rb").read()).hexdigest())') $target ${TORCH[*]}"
    if [ -f "$stamp" ] && grep -qxF -- "$want" "$stamp"; then
        return 0
    fi
    echo "taas.sh: installing into $VENV (skipped next time while pyproject.toml is unchanged)"
    "$VENV/bin/python" -m pip install --disable-pip-version-check "${TORCH[@]}"
    "$VENV/bin/python" -m pip install --disable-pip-version-check -e "$target"
    echo "$want" >>"$stamp"
}

usage() {
    echo "usage: ./taas.sh run [--host H] [--port P] [--workers N] [--state-dir DIR]" >&2
    echo "       ./taas.sh test [pytest arguments]" >&2
    exit 2
}

[ $# -ge 1 ] || usage
command=$1
shift
case "$command" in
    run)
        setup .
        exec "$VENV/bin/taas" up "$@"
        ;;
    test)
        setup ".[dev]"
        status=0
        echo "taas.sh: ruff check ." && "$VENV/bin/ruff" check . || status=1
        echo "taas.sh: mypy" && "$VENV/bin/mypy" || status=1
        echo "taas.sh: lint-imports (the import contract)" && "$VENV/bin/lint-imports" || status=1
        echo "taas.sh: pytest $*" && "$VENV/bin/pytest" "$@" || status=1
        [ $status -eq 0 ] && echo "taas.sh: all checks passed" || echo "taas.sh: some checks failed" >&2
        exit $status
        ;;
    *)
        usage
        ;;
esac

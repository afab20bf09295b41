# Sourced by scripts/serve and scripts/test: make .venv and install the project into it.
# Usage: ensure_venv EXTRAS   (e.g. "" or "test,train")
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${MAMMOSEG_VENV:-$ROOT/.venv}"

ensure_venv() {
    local extras="$1" spec="$ROOT" stamp
    [ -n "$extras" ] && spec="$ROOT[$extras]"
    local py="${PYTHON:-}"
    if [ -z "$py" ]; then
        for candidate in python3.11 python3; do
            if command -v "$candidate" >/dev/null 2>&1; then py="$candidate"; break; fi
        done
    fi
    [ -n "$py" ] || { echo "mammoseg: Python 3.11 is needed (python3.11 or python3 on PATH)" >&2; exit 1; }
    if [ ! -x "$VENV/bin/python" ]; then
        echo "mammoseg: creating $VENV with $py" >&2
        "$py" -m venv "$VENV"
        "$VENV/bin/python" -m pip install -q --upgrade pip
    fi
    # Reinstall only when pyproject.toml, constraints.txt or the extras changed.
    stamp="$VENV/.mammoseg-installed-$(echo "$extras" | tr ',' '-')"
    if [ ! -f "$stamp" ] || [ "$ROOT/pyproject.toml" -nt "$stamp" ] || [ "$ROOT/constraints.txt" -nt "$stamp" ]; then
        echo "mammoseg: installing $spec (versions from constraints.txt)" >&2
        "$VENV/bin/python" -m pip install -q -c "$ROOT/constraints.txt" -e "$spec"
        touch "$stamp"
    fi
}

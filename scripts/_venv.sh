# Shared by scripts/serve and scripts/test: make .venv and install a requirements file
# into it, skipping pip when that file has not changed since the last install.

# The oldest Python the service runs on: requires-python in pyproject.toml says the same.
PYTHON_MINIMUM="3.11"

ensure_venv() {
    local requirements="$1"
    local python="${PYTHON:-python3}"
    if ! command -v "$python" >/dev/null 2>&1; then
        echo "error: $python not found; install Python $PYTHON_MINIMUM or newer" >&2
        exit 1
    fi
    if ! "$python" -c "import sys; sys.exit(sys.version_info < tuple(map(int, '$PYTHON_MINIMUM'.split('.'))))" 2>/dev/null; then
        echo "error: Python $PYTHON_MINIMUM or newer is needed, $("$python" --version 2>&1) found" >&2
        exit 1
    fi
    if [ ! -x .venv/bin/python ]; then
        if ! "$python" -c 'import ensurepip, venv' 2>/dev/null; then
            echo "error: $python cannot create a virtualenv; on Debian/Ubuntu: apt-get install python3-venv" >&2
            exit 1
        fi
        echo "creating .venv" >&2
        "$python" -m venv .venv
    fi
    local stamp=".venv/.installed-$(basename "$requirements")"
    local want
    want=$(cat requirements*.txt | .venv/bin/python -c 'import hashlib,sys; print(hashlib.sha256(sys.stdin.buffer.read()).hexdigest())')
    if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
        echo "installing $requirements into .venv" >&2
        .venv/bin/python -m pip install --quiet --disable-pip-version-check -r "$requirements"
        echo "$want" > "$stamp"
    fi
}

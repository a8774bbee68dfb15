# Helpers shared by scripts/serve and scripts/test. Sourced, not run.

# Install the Debian/Ubuntu packages named, if any is missing (uses sudo when not root).
ensure_debian_packages() {
    local missing=()
    for package in "$@"; do
        dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" \
            || missing+=("$package")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    local sudo=""
    [ "$(id -u)" -ne 0 ] && sudo="sudo"
    echo "Installing Debian packages: ${missing[*]}" >&2
    $sudo apt-get update -q
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q --no-install-recommends "${missing[@]}"
}

# Create .venv with Python 3.11 or newer and install Radnode into it (editable),
# with the extras named in $1 (e.g. "test").
ensure_venv() {
    local extras="${1:-}"
    local python="${PYTHON:-python3}"
    if ! "$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
        echo "Radnode needs Python 3.11 or newer; $python is $("$python" --version 2>&1)." >&2
        echo "Use Debian 12, Ubuntu 24.04 or newer, or set PYTHON=/path/to/python3.11." >&2
        exit 1
    fi
    [ -x .venv/bin/python ] || "$python" -m venv .venv
    local spec="."
    [ -n "$extras" ] && spec=".[${extras}]"
    .venv/bin/python -m pip install -q --upgrade pip
    .venv/bin/python -m pip install -q -e "$spec"
}

# The graphical console's tests (crates/vmgate/tests/vnc.rs): Debian's
# Chromium driven by playwright-core (npm, no browser download), vncdotool
# (PyPI) in a venv under target/, and noVNC from npm (embedded by the
# gateway's build.rs). Run as root on Debian bookworm; idempotent.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
export DEBIAN_FRONTEND=noninteractive
pkgs=(chromium python3 python3-venv)
# Node.js may come from elsewhere than Debian (its npm then conflicts with
# Debian's): install Debian's only where there is none.
command -v node >/dev/null 2>&1 || pkgs+=(nodejs)
command -v npm >/dev/null 2>&1 || pkgs+=(npm)
missing=()
for p in "${pkgs[@]}"; do
    dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
if ((${#missing[@]})); then
    apt-get update -qq
    apt-get install -y -qq "${missing[@]}"
fi
npm ci --no-audit --no-fund --prefix "$root/web"
npm ci --no-audit --no-fund --prefix "$root/crates/vmgate/tests/browser"
if [ ! -x "$root/target/vnc-venv/bin/vncdo" ]; then
    python3 -m venv "$root/target/vnc-venv"
    "$root/target/vnc-venv/bin/pip" install -q vncdotool
fi

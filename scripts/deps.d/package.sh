# Packaging: cargo-deb builds the .deb; systemd-analyze checks its units.
set -euo pipefail
if ! command -v cargo-deb >/dev/null 2>&1; then
  echo "[package] cargo install cargo-deb"
  cargo install -q cargo-deb --locked --version "^3"
fi
if ! command -v systemd-analyze >/dev/null 2>&1; then
  echo "[package] apt-get install systemd"
  DEBIAN_FRONTEND=noninteractive ${SUDO:-} apt-get install -y -qq systemd >/dev/null
fi

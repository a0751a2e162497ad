# bench/run (the benchmark harness): a Python venv for websockify from
# PyPI. Idempotent; run as root by scripts/setup on Debian bookworm.
for p in python3 python3-venv; do
  dpkg -s "$p" >/dev/null 2>&1 && continue
  DEBIAN_FRONTEND=noninteractive ${SUDO:-} apt-get install -y -qq --no-install-recommends python3 python3-venv >/dev/null
  break
done

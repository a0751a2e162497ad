# bench/run (the benchmark harness): a Python venv for websockify from
# PyPI, and `perf` for the gateway's flamegraph (Debian: linux-perf).
# Idempotent; run as root by scripts/setup on Debian bookworm.
for p in python3 python3-venv linux-perf; do
  dpkg -s "$p" >/dev/null 2>&1 && continue
  DEBIAN_FRONTEND=noninteractive ${SUDO:-} apt-get install -y -qq --no-install-recommends python3 python3-venv linux-perf >/dev/null
  break
done

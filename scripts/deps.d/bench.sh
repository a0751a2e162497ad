# bench/run (the benchmark harness): a Python venv for websockify from
# PyPI. Idempotent; run as root by scripts/setup on Debian bookworm.
apt-get install -y --no-install-recommends python3 python3-venv

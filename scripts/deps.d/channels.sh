# Guest channels (issue 4): the `--listen` end-to-end test drives the
# forward with an unmodified third-party client, socat.
if ! command -v socat >/dev/null 2>&1; then
    apt-get install -y --no-install-recommends socat
fi

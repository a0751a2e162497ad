# security (issue 6): cargo-fuzz for fuzz/run. Idempotent; run as root by
# scripts/setup. The fuzz targets build on the stable toolchain with
# RUSTC_BOOTSTRAP=1 (fuzz/run sets it). Nothing else: the security tests use
# 127.0.0.2, which Linux loopback answers without configuration.
if command -v cargo >/dev/null 2>&1 && ! cargo fuzz --version >/dev/null 2>&1; then
    cargo install cargo-fuzz --locked
fi

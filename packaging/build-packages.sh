#!/usr/bin/env bash
# Build the .deb and the .rpm into target/packages/: the binary (profile $PROFILE, default
# `dist`, as shipped), its man pages and shell completions, then cargo-deb and
# cargo-generate-rpm with the metadata in Cargo.toml. Needs cargo-deb and cargo-generate-rpm
# (`cargo install --locked cargo-deb cargo-generate-rpm`).
set -euo pipefail
cd "$(dirname "$0")/.."

profile=${PROFILE:-dist}
deb_revision=${DEB_REVISION:-1}
# Without the dev cluster (the `dev-cluster` feature): an edge node needs no in-memory API
# server or simulated kubelet.
cargo build --locked --profile "$profile" --no-default-features --bin staticpod-puller

out=target/packaging
rm -rf "$out"
mkdir -p "$out/man" "$out/completions" target/packages
# Shipped stripped: the line tables are for local debugging, and would make the binary ~10x.
bin=$out/staticpod-puller
strip --strip-unneeded -o "$bin" "target/$profile/staticpod-puller"
"$bin" man --out "$out/man"
gzip -9n "$out"/man/*.1
"$bin" completions bash >"$out/completions/staticpod-puller.bash"
"$bin" completions zsh >"$out/completions/_staticpod-puller"
"$bin" completions fish >"$out/completions/staticpod-puller.fish"

cargo deb --no-build --deb-revision "$deb_revision" --output target/packages/
cargo generate-rpm --output target/packages/
ls -l target/packages/

#!/usr/bin/env bash
# Checks that this copy is the published kurrentdb 1.2.0 plus the one change VENDORED.md
# describes (tcp-nodelay.patch), nothing else: fetches the published crate with cargo (crates.io),
# applies the patch to its src/ and compares the result, and the README, with the files here.
# Run by .ci/run; a difference fails with the diff.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
version=1.2.0
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/probe/src"
cat >"$work/probe/Cargo.toml" <<TOML
[package]
name = "vendored-probe"
version = "0.0.0"
edition = "2021"
publish = false

[dependencies]
kurrentdb = "=$version"
TOML
: >"$work/probe/src/lib.rs"
# Outside this workspace (no [patch.crates-io]): cargo resolves and downloads the published crate.
(cd "$work/probe" && cargo fetch --quiet)
crate=$(find "${CARGO_HOME:-$HOME/.cargo}/registry/cache" -name "kurrentdb-$version.crate" | head -1)
[ -n "$crate" ] || { echo "kurrentdb-$version.crate not found after cargo fetch" >&2; exit 1; }
tar -xzf "$crate" -C "$work"
published=$work/kurrentdb-$version
(cd "$published" && git apply -p1 "$here/tcp-nodelay.patch")
diff -ru "$published/src" "$here/src"
diff -u "$published/README.md" "$here/README.md"
echo "host/vendor/kurrentdb: the published kurrentdb $version plus tcp-nodelay.patch, nothing else"

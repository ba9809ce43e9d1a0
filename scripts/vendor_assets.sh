#!/usr/bin/env bash
# The dashboard's and the API docs' third-party files, fetched from npm at pinned versions into
# app/dashboard/static/vendor/<package>-<version>/. The committed files are what runs (no CDN, no build chain); this
# script says where they come from and reproduces them byte for byte.
#
#   scripts/vendor_assets.sh          fetch, check each tarball's and each file's checksum, write the files
#   scripts/vendor_assets.sh --check  fetch again and compare with the committed files (writes nothing)
#
# Upgrading a package: change its version and integrity in PACKAGES (`npm view <package>@<version>
# dist.integrity`), run the script (it refuses files whose SHA-256 differs from FILES and prints the new
# ones: review the files, then update FILES), and update the versioned paths in app/dashboard/static/*.html (folders
# carry the version, so browsers may cache them for good). Needs npm (`npm pack`), openssl and sha256sum.
#
# ReDoc is not among them: it loads its logo from cdn.redoc.ly and runs its search in a blob: Worker, both
# refused by the Content-Security-Policy; /redoc sends browsers to /docs (Swagger UI) instead.
set -euo pipefail
cd "$(dirname "$0")/.."

VENDOR=app/dashboard/static/vendor
CHECK=false
[ "${1:-}" = "--check" ] && CHECK=true

# package version integrity (npm's dist.integrity: the tarball's SHA-512)
PACKAGES=(
    "uplot 1.6.32 sha512-KIMVnG68zvu5XXUbC4LQEPnhwOxBuLyW1AHtpm6IKTXImkbLgkMy+jabjLgSLMasNuGGzQm/ep3tOkyTxpiQIw=="
    "swagger-ui-dist 5.35.0 sha512-U06rpMtW9V3XPGOBeamTUSr0Z09jMX4IJuANpE/EZbAhw0G8CgwrzU4YmXkn/h0wCDNsXdGarTNNHC3sU8yVUQ=="
)

# package path-in-the-tarball sha256: each file lands as <package>-<version>/<its base name>.
FILES=(
    "uplot dist/uPlot.iife.min.js 19c8d4c6ad88929a79f4ae49d6f7161566dfd0ba3d15cc495e974f787eb78f1f"
    "uplot dist/uPlot.min.css df630c6a8d6f8eeaff264b50f73ce5b114f646ffd9a0bb74f049b0a00135fa04"
    "uplot LICENSE 8f989229699b4fe2f1a0432d0e9edc338a8a911e250e2d1b01ecd770a5f5b1bd"
    "swagger-ui-dist swagger-ui-bundle.js e6a898692f2d768e807c3ba4626068a69a2c5dd960dd6c76f3e4d3a3de180af2"
    "swagger-ui-dist swagger-ui-bundle.js.LICENSE.txt 37eb6e7e59aed57b2c1acf076574b818ea07b74265717e0bd67b59e0baf9abbb"
    "swagger-ui-dist swagger-ui.css 5ed08757e53da3e026d6cbecc61fe5d43585c9560b302d534ad56692519a273d"
    "swagger-ui-dist LICENSE cfc7749b96f63bd31c3c42b5c471bf756814053e847c10f3eb003417bc523d30"
    "swagger-ui-dist NOTICE 0d20d1adef18aee3f40dd258172155521ce702ac445cb5f7b7d60ed32dad2fb2"
)

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
status=0

for entry in "${PACKAGES[@]}"; do
    read -r package version integrity <<<"$entry"
    tarball="$work/$package-$version.tgz"
    # npm pack checks the tarball against the registry's integrity; this checks it against the pinned one.
    (cd "$work" && npm pack --silent "$package@$version" >/dev/null)
    got="sha512-$(openssl dgst -sha512 -binary "$tarball" | base64 -w0)"
    if [ "$got" != "$integrity" ]; then
        echo "vendor_assets: $package@$version: tarball integrity $got, pinned $integrity" >&2
        exit 1
    fi
    mkdir -p "$work/$package"
    tar -xzf "$tarball" -C "$work/$package"
    dest="$VENDOR/$package-$version"
    if ! $CHECK; then
        rm -rf "$VENDOR/$package"-[0-9]*  # an older version's folder, and any file no longer taken
        mkdir -p "$dest"
    fi
    for file in "${FILES[@]}"; do
        read -r owner path sha <<<"$file"
        [ "$owner" = "$package" ] || continue
        source="$work/$package/package/$path"
        actual=$(sha256sum "$source" | cut -c1-64)
        if [ "$actual" != "$sha" ]; then
            echo "vendor_assets: $package@$version $path: sha256 $actual, pinned $sha" >&2
            status=1
            continue
        fi
        target="$dest/$(basename "$path")"
        if $CHECK; then
            if ! cmp -s "$source" "$target"; then
                echo "vendor_assets: $target differs from $package@$version's $path" >&2
                status=1
            fi
        else
            cp "$source" "$target"
            echo "$(printf '%9d' "$(stat -c %s "$target")")  $target"
        fi
    done
done

if [ $status -eq 0 ]; then
    $CHECK && echo "vendor_assets: the committed files are the pinned packages' files" \
        || echo "vendor_assets: written under $VENDOR"
fi
exit $status

#!/bin/sh
# An SBOM generator for BuildKit (attest:sbom=generator=<image>): its SBOM scanner protocol,
# around syft. Scans $BUILDKIT_SCAN_SOURCE, and each directory in $BUILDKIT_SCAN_SOURCE_EXTRAS
# when that is set, and writes each result to $BUILDKIT_SCAN_DESTINATION/<name>.spdx.json as an
# in-toto statement whose predicate is the SPDX document (BuildKit fills in the subjects).
set -eu
: "${BUILDKIT_SCAN_DESTINATION:?BuildKit sets BUILDKIT_SCAN_DESTINATION}"
: "${BUILDKIT_SCAN_SOURCE:?BuildKit sets BUILDKIT_SCAN_SOURCE}"
export SYFT_CHECK_FOR_APP_UPDATE=false

scan() {
    name=$(basename "$1")
    spdx=$(mktemp)
    syft scan "dir:$1" --quiet --source-name "$name" --output "spdx-json=$spdx"
    {
        printf '{"_type":"https://in-toto.io/Statement/v0.1","predicateType":"https://spdx.dev/Document","subject":[],"predicate":'
        cat "$spdx"
        printf '}\n'
    } >"$BUILDKIT_SCAN_DESTINATION/$name.spdx.json"
    rm -f "$spdx"
}

scan "$BUILDKIT_SCAN_SOURCE"
if [ -n "${BUILDKIT_SCAN_SOURCE_EXTRAS:-}" ] && [ -d "$BUILDKIT_SCAN_SOURCE_EXTRAS" ]; then
    for dir in "$BUILDKIT_SCAN_SOURCE_EXTRAS"/*; do
        if [ -d "$dir" ]; then
            scan "$dir"
        fi
    done
fi

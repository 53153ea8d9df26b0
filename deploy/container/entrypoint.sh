#!/bin/sh
# The image's entrypoint: before `run`, `check --kernel` loads every eBPF
# program into this host's kernel without attaching it, so a kernel that
# refuses one is reported by program name with the verifier's reason
# before anything is attached. Exit 3 means no BPF privileges here at all:
# `run` then says so itself. Every other command goes straight through.
set -e
# SDM_AGENT: another binary, for the deploy check's test of this script.
AGENT=${SDM_AGENT:-/usr/local/bin/sdm-agent}
if [ "${1:-}" = "run" ]; then
    shift
    status=0
    "$AGENT" check --kernel "$@" || status=$?
    if [ "$status" -ne 0 ] && [ "$status" -ne 3 ]; then
        echo "sdm-agent: not starting: this kernel refuses the programs (see above)" >&2
        exit "$status"
    fi
    exec "$AGENT" run "$@"
fi
exec "$AGENT" "$@"

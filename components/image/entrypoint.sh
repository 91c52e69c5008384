#!/bin/sh
# The component image's entrypoint.
# - Dataflow starts a worker container with flags only (--id=... --provision_endpoint=...):
#   those go to Beam's worker boot program.
# - Anything else is a command, run as given (PID 1, so it receives SIGTERM itself):
#   docker run IMAGE twotower serve --store /store --host 0.0.0.0
# KFP and Vertex AI set the container command, so they never come through here.
set -e
BOOT=/opt/apache/beam/boot
case "${1:-}" in
  --*)
    if [ -x "$BOOT" ]; then exec "$BOOT" "$@"; fi
    echo "twotower-entrypoint: flags only ($1 ...) start a Beam worker, but $BOOT is absent:" >&2
    cat /opt/apache/beam/BOOT_PROGRAM_ABSENT >&2 2>/dev/null || true
    exit 64 ;;
  "")
    exec twotower --help ;;
  *)
    exec "$@" ;;
esac

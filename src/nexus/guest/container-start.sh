# Start a container's entrypoint in a Nexus guest, fast: run by busybox sh as
#   busybox sh /opt/nexus/lib/nexus/guest/container-start.sh [start options] -- ARGV...
# (the options of `python3 -m nexus.guest.container start`). It starts
# `nexus.guest.container boot` as PID 1 of a new PID namespace in a session of its own (one
# Python start on the way to the entrypoint, where `start` + `init` took two), then waits
# for the state line marked with this start's token and prints it -- or prints the error
# `boot` left in err.TOKEN and fails. The environment carries PYTHONPATH (and, in tests,
# NEXUS_CTR_BUSYBOX / NEXUS_CTR_BASE / NEXUS_CTR_PYTHON).
BB=${NEXUS_CTR_BUSYBOX:-/usr/local/bin/busybox}
B=${NEXUS_CTR_BASE:-/run/nexus-ctr}
PY=${NEXUS_CTR_PYTHON:-/usr/bin/python3}
T="$$x$RANDOM$RANDOM"
$BB mkdir -p "$B" && $BB chmod 700 "$B" || exit 1
MAIN="import sys; from nexus.guest.container import main; sys.exit(main(sys.argv[1:]))"
$BB setsid $BB unshare -p -f -- "$PY" -S -c "$MAIN" boot --token "$T" "$@" \
  </dev/null >/dev/null 2>&1 &
i=0
while [ "$i" -lt 500 ]; do
  if [ -f "$B/err.$T" ]; then
    $BB cat "$B/err.$T" >&2
    $BB rm -f "$B/err.$T"
    exit 1
  fi
  line=""
  [ -f "$B/state" ] && read -r line <"$B/state"
  case " $line " in
    *" token=$T "*)
      case "$line" in
        state=running* | state=exited*) echo "$line"; exit 0 ;;
      esac ;;
  esac
  $BB usleep 20000
  i=$((i + 1))
done
echo "nexus-container: the container's init did not start within 10 s" >&2
exit 1

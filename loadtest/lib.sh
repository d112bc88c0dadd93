# Sourced by the loadtest scripts: start the shardmail they test and stop it by its
# process id (never by name). Expects BIN (the directory holding `shardmail`).

SERVER_PID=

# wait_ready LOG: waits (30 s at most) until LOG says every shard is listening.
wait_ready() {
  for _ in $(seq 600); do
    grep -q "ready: every shard is listening" "$1" 2>/dev/null && return 0
    sleep 0.05
  done
  echo "shardmail did not start: $1" >&2
  tail "$1" >&2
  return 1
}

# start_server LOG ARGS...: runs `shardmail ARGS serve` in the background, logging to
# LOG, and waits until it is ready (exits the script if it never is).
start_server() {
  local log=$1
  shift
  "$BIN/shardmail" "$@" serve >"$log" 2>&1 &
  SERVER_PID=$!
  wait_ready "$log" || exit 1
}

# stop_server: SIGTERM to the server start_server started, then up to 30 s for it
# to exit (a graceful shutdown flushes and checkpoints).
stop_server() {
  if [ -n "$SERVER_PID" ] && kill -0 "$SERVER_PID" 2>/dev/null; then
    kill -TERM "$SERVER_PID"
    for _ in $(seq 300); do kill -0 "$SERVER_PID" 2>/dev/null || break; sleep 0.1; done
  fi
  SERVER_PID=
}

# cpu_ticks PID...: user+system clock ticks of these processes, their reaped children
# included (a forking server's exited workers count through their parent).
cpu_ticks() {
  local total=0 p
  for p in "$@"; do
    [ -r "/proc/$p/stat" ] || continue
    total=$((total + $(awk '{print $14+$15+$16+$17}' "/proc/$p/stat")))
  done
  echo "$total"
}

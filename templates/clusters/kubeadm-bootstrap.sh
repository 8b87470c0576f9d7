#!/bin/bash
# Pacific Lab: turn this VM into a Kubernetes node with kubeadm, the way
# Cluster API's kubeadm bootstrap provider does, and say how it went on the
# serial console.
#
# cloud-init writes this file to /usr/local/sbin/pacific-kubeadm-bootstrap
# (appliance/clusters/bootstrap.py) and runs it from runcmd:
#
#   pacific-kubeadm-bootstrap init|join [verbosity]
#
# init: kubeadm init --config /run/kubeadm/kubeadm.yaml
# join: kubeadm join --config /run/kubeadm/kubeadm-join-config.yaml, retried
#       (with kubeadm reset in between) like CABPK's useExperimentalRetryJoin.
# On success it writes CAPI's sentinel /run/cluster-api/bootstrap-success.complete.
#
# Progress and outcome are reported as one line each, written once to
# /dev/console and once to /dev/ttyS0 (when it exists), which the host agent
# reads from the VM's serial console log:
#
#   PACIFIC-BOOTSTRAP {"status": "Running|Failed|Succeeded", "reason": "...", "message": "..."}
#
# kubeadm's own output goes to /var/log/pacific-kubeadm.log (mode 0600), never
# to the console (it can hold tokens). Exit status: 0 on success, 1 on failure, so
# the runcmd line that calls it can skip postKubeadmCommands.
#
# For tests only: PACIFIC_REPORT_TO (colon-separated files) replaces the
# console targets and PACIFIC_KUBEADM_LOG the log file.

set -u

ROLE="${1:-}"
VERBOSITY="${2:-}"
INIT_CONFIG=/run/kubeadm/kubeadm.yaml
JOIN_CONFIG=/run/kubeadm/kubeadm-join-config.yaml
SENTINEL_DIR=/run/cluster-api
SENTINEL="$SENTINEL_DIR/bootstrap-success.complete"
LOG="${PACIFIC_KUBEADM_LOG:-/var/log/pacific-kubeadm.log}"
JOIN_ATTEMPTS=5
JOIN_PAUSE_SECONDS=15
MESSAGE_MAX=300
IMAGE_HINT="use a node image from a Ready TanzuKubernetesRelease"

# A JSON string: control characters other than tab/newline/CR dropped, capped
# at MESSAGE_MAX characters, then backslashes, quotes, tabs, newlines and
# carriage returns escaped.
json_string() {
  local s
  s=$(printf '%s' "$1" | tr -d '\000-\010\013\014\016-\037\177')
  s=${s:0:MESSAGE_MAX}
  s=${s//\\/\\\\}
  s=${s//\"/\\\"}
  s=${s//$'\t'/\\t}
  s=${s//$'\n'/\\n}
  s=${s//$'\r'/\\r}
  printf '"%s"' "$s"
}

log() {
  printf '+++ [%(%Y-%m-%dT%H:%M:%S%z)T] %s\n' -1 "$*" >>"$LOG" 2>/dev/null || true
}

# report STATUS REASON MESSAGE: one line, one write per target.
report() {
  local line target
  local -a targets
  line="PACIFIC-BOOTSTRAP {\"status\": $(json_string "$1"), \"reason\": $(json_string "$2"), \"message\": $(json_string "$3")}"
  if [ -n "${PACIFIC_REPORT_TO:-}" ]; then
    IFS=: read -r -a targets <<<"$PACIFIC_REPORT_TO"
  else
    targets=(/dev/console)
    if [ -e /dev/ttyS0 ]; then
      targets+=(/dev/ttyS0)
    fi
  fi
  for target in "${targets[@]}"; do
    printf '%s\n' "$line" >>"$target" 2>/dev/null || true
  done
  log "reported: $1 $2"
}

fail() {
  report Failed "$1" "$2"
  log "failed: $1"
  exit 1
}

require() {  # require COMMAND REASON
  if ! command -v "$1" >/dev/null 2>&1; then
    fail "$2" "$1 is not installed in the node image (no $1 on PATH); $IMAGE_HINT"
  fi
}

# run_kubeadm ARGS...: runs kubeadm with its output appended to the log;
# sets RC and LAST_LINE (the last non-blank line of that output).
RC=0
LAST_LINE=""
run_kubeadm() {
  local out
  log "running: $*"
  out=$(mktemp) || fail BootstrapScriptFailed "cannot create a temporary file"
  "$@" >"$out" 2>&1
  RC=$?
  cat "$out" >>"$LOG" 2>/dev/null
  LAST_LINE=$(grep -v '^[[:space:]]*$' "$out" | tail -n 1)
  rm -f "$out"
  log "exit code $RC"
}

# kubeadm prints the join command, token included: the log is root's alone.
(umask 077 && : >>"$LOG") 2>/dev/null

case "$ROLE" in
  init | join) ;;
  *) fail BootstrapScriptFailed "usage: pacific-kubeadm-bootstrap init|join [verbosity]" ;;
esac
VERBOSITY_FLAG=""
if [ -n "$VERBOSITY" ]; then
  if ! [[ "$VERBOSITY" =~ ^[0-9]+$ ]]; then
    fail BootstrapScriptFailed "verbosity must be a number, not '$VERBOSITY'"
  fi
  VERBOSITY_FLAG="--v=$VERBOSITY"
fi

report Running BootstrapStarted "checking the node image and running kubeadm $ROLE"
require kubeadm KubeadmNotFound
require kubelet KubeletNotFound
require containerd ContainerRuntimeNotFound

if [ "$ROLE" = init ]; then
  run_kubeadm kubeadm init --config "$INIT_CONFIG" ${VERBOSITY_FLAG:+"$VERBOSITY_FLAG"}
  if [ "$RC" -ne 0 ]; then
    fail KubeadmInitFailed "kubeadm init failed with exit code $RC: $LAST_LINE"
  fi
else
  attempt=1
  while :; do
    run_kubeadm kubeadm join --config "$JOIN_CONFIG" ${VERBOSITY_FLAG:+"$VERBOSITY_FLAG"}
    if [ "$RC" -eq 0 ]; then
      break
    fi
    if [ "$RC" -eq 3 ]; then  # kubeadm: the configuration is invalid; retrying cannot help
      fail KubeadmJoinFailed "kubeadm join rejected its configuration (exit code 3): $LAST_LINE"
    fi
    if [ "$attempt" -ge "$JOIN_ATTEMPTS" ]; then
      fail KubeadmJoinFailed "kubeadm join failed $attempt times, last with exit code $RC: $LAST_LINE"
    fi
    report Running KubeadmJoinRetrying "kubeadm join attempt $attempt of $JOIN_ATTEMPTS failed with exit code $RC: $LAST_LINE"
    log "resetting the node before the next attempt"
    kubeadm reset -f >>"$LOG" 2>&1 || true
    sleep "$JOIN_PAUSE_SECONDS"
    attempt=$((attempt + 1))
  done
fi

if ! { mkdir -p "$SENTINEL_DIR" && echo success >"$SENTINEL"; } 2>/dev/null; then
  fail SentinelNotWritten "kubeadm $ROLE succeeded, but $SENTINEL could not be written"
fi
report Succeeded KubeadmSucceeded "kubeadm $ROLE succeeded"
exit 0

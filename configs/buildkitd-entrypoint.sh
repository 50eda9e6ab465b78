#!/bin/sh
# Install the build network's egress policy, run buildkitd, take the policy away when it stops.
# BUILD_NETWORK, BUILD_SUBNET, BUILD_BRIDGE and BUILD_EGRESS_ALLOW configure the policy.
set -eu
state=/var/lib/buildkit/buildnet
python3 /usr/local/lib/hubfly/buildnet.py apply --state-dir "$state"
buildkitd "$@" &
pid=$!
trap 'kill -TERM "$pid" 2>/dev/null' TERM INT
status=0
# A signal interrupts wait; keep waiting until buildkitd has really stopped.
while kill -0 "$pid" 2>/dev/null; do
  status=0
  wait "$pid" || status=$?
done
python3 /usr/local/lib/hubfly/buildnet.py remove --state-dir "$state" >/dev/null || true
exit "$status"

# buildkitd for docker-compose.yml: BuildKit's binaries on Debian, with what the build network
# needs (runc, the CNI plugins, iptables, iproute2) and the egress policy tool (infra/buildnet.py,
# standard library only). The entrypoint installs the policy, runs buildkitd, and removes the
# policy when buildkitd stops.
FROM moby/buildkit:v0.32.2 AS buildkit

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends runc containernetworking-plugins iptables \
      iproute2 python3 git ca-certificates pigz \
    && rm -rf /var/lib/apt/lists/*
COPY --from=buildkit /usr/bin/buildkitd /usr/bin/buildctl /usr/local/bin/
COPY infra/buildnet.py /usr/local/lib/hubfly/buildnet.py
COPY configs/buildkitd-entrypoint.sh /usr/local/bin/buildkitd-entrypoint
ENTRYPOINT ["/usr/local/bin/buildkitd-entrypoint"]

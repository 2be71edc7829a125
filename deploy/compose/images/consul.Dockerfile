# Consul as pinned in deploy/tools/go.mod, built with CGO_ENABLED=0.
# The data directory is a tmpfs the compose file mounts at /consul/data.
FROM scratch
LABEL io.sidemesh.compose=1
COPY consul /bin/consul
USER 65532:65532
ENTRYPOINT ["/bin/consul"]

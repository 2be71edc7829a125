# Jaeger v2 as pinned in deploy/tools/jaeger/go.mod, built with
# CGO_ENABLED=0, storing traces in memory (config/jaeger.yaml).
FROM scratch
LABEL io.sidemesh.compose=1
COPY jaeger /bin/jaeger
COPY jaeger.yaml /etc/jaeger/config.yaml
USER 65532:65532
ENTRYPOINT ["/bin/jaeger"]
CMD ["--config", "file:/etc/jaeger/config.yaml"]

# The shop's apps (examples/catalog, examples/frontend as web,
# examples/cart), static binaries, one image; the service picks its command.
FROM scratch
LABEL io.sidemesh.compose=1
COPY catalog frontend cart /bin/
USER 65532:65532

# sidemesh: nothing but the static binary. Context: a folder holding it
# (make compose-images stages it).
FROM scratch
LABEL io.sidemesh.compose=1
COPY sidemesh /sidemesh
USER 65532:65532
ENTRYPOINT ["/sidemesh"]
CMD ["run", "-c", "/etc/sidemesh/sidemesh.yaml"]

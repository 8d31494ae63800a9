# syntax=docker/dockerfile:1
# sluice as a sidecar container.
#   docker build -t sluice .
#   docker run --rm -p 8080:8080 -v "$PWD/proxy.yaml:/etc/sluice/proxy.yaml:ro" sluice
# The config lives at /etc/sluice/proxy.yaml (mount a file or a directory over it;
# with `watch: true` a changed ConfigMap is reloaded). See docs/operations.md "Container".

# The two base images are build arguments so the image can be built where their
# registries are out of reach (CI builds it against local stand-ins: .ci/container).
# The defaults are what a release uses.
ARG BUILDER_IMAGE=rust:1.95-slim-bookworm
ARG RUNTIME_IMAGE=gcr.io/distroless/cc-debian12:nonroot

# ---- build stage -----------------------------------------------------------
FROM ${BUILDER_IMAGE} AS build
WORKDIR /src

# Dependencies first, in their own layer: it is rebuilt only when Cargo.toml or
# Cargo.lock change, not on every source edit.
COPY Cargo.toml Cargo.lock ./
RUN mkdir src \
    && echo 'fn main() {}' > src/main.rs \
    && touch src/lib.rs \
    && cargo build --release --locked \
    && rm -rf src target/release/.fingerprint/sluice-* target/release/deps/sluice-* target/release/deps/libsluice-*

COPY src ./src
RUN cargo build --release --locked \
    && strip target/release/sluice

# ---- runtime stage ---------------------------------------------------------
# distroless/cc: glibc and libgcc only (what this glibc-linked Rust binary needs),
# no shell, no package manager, about 25 MB; :nonroot runs as UID 65532.
# Not distroless/static: that needs a musl build, whose allocator is measurably
# slower for a proxy. Not debian-slim: a shell and apt are attack surface a
# sidecar doesn't use.
FROM ${RUNTIME_IMAGE}

LABEL org.opencontainers.image.title="sluice" \
      org.opencontainers.image.description="Zero-copy TCP (layer 4) reverse proxy for Linux: mio event loops, splice pipe pairs" \
      org.opencontainers.image.licenses="MIT OR Apache-2.0" \
      org.opencontainers.image.version="0.1.0" \
      org.opencontainers.image.source="https://github.com/sluice-proxy/sluice"

COPY --from=build /src/target/release/sluice /usr/local/bin/sluice
COPY proxy.yaml /etc/sluice/proxy.yaml

# A fixed non-root UID/GID (distroless "nonroot"); ports below 1024 would need
# CAP_NET_BIND_SERVICE, so the example listens on 8080. 9901: the admin port
# (/metrics, /readyz), on loopback in the shipped proxy.yaml.
USER 65532:65532
EXPOSE 8080 9901

# No curl in the image: the binary asks its own admin port (exit 0 on 200).
HEALTHCHECK --interval=10s --timeout=3s --start-period=5s --retries=3 \
    CMD ["/usr/local/bin/sluice", "-c", "/etc/sluice/proxy.yaml", "probe", "/readyz"]

# SIGTERM: /readyz 503, accept for drain_grace more, then running sessions get drain_timeout.
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/sluice"]
CMD ["-c", "/etc/sluice/proxy.yaml"]

# syntax=docker/dockerfile:1
# sluice as a sidecar container.
#   docker build -t sluice .
#   docker run --rm --network host -v "$PWD/proxy.yaml:/etc/sluice/proxy.yaml:ro" sluice

# ---- build stage -----------------------------------------------------------
FROM rust:1.95-slim-bookworm AS build
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
# distroless/cc: glibc and libgcc only (what a Rust binary links against), no
# shell, no package manager; about 25 MB, and the :nonroot tag runs as UID 65532.
FROM gcr.io/distroless/cc-debian12:nonroot

COPY --from=build /src/target/release/sluice /usr/local/bin/sluice
COPY proxy.yaml /etc/sluice/proxy.yaml

# A fixed non-root UID/GID (distroless "nonroot"); ports below 1024 would need
# CAP_NET_BIND_SERVICE, so the example listens on 8080.
USER 65532:65532
EXPOSE 8080

# SIGTERM starts a drain: no new clients, running sessions get drain_timeout.
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/sluice"]
CMD ["-c", "/etc/sluice/proxy.yaml"]

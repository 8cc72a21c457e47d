# The ota image: one binary, `ota`, that runs the controller (`ota controller`) and the
# update servers it deploys (`ota server`).
#
#   docker build -t registry.example.com/ota-operator:0.1.0 .
#
# Stage 1 builds the dependencies alone, from Cargo.toml and Cargo.lock with empty sources, so a
# change to src/ rebuilds only this crate. Stage 2 is distroless: glibc, CA certificates, no shell,
# running as the unprivileged user 65532.

FROM rust:1.95-bookworm AS builder
WORKDIR /build

# The dependency layer: the manifest, the lock file, build.rs, and empty targets in place of the
# real ones (cargo reads every target the manifest declares, benches included).
COPY Cargo.toml Cargo.lock build.rs ./
RUN mkdir -p src/bin benches \
    && echo 'fn main() {}' > src/main.rs \
    && echo 'fn main() {}' > src/bin/kubectl-ota.rs \
    && touch src/lib.rs \
    && echo 'fn main() {}' > benches/update_server.rs \
    && echo 'fn main() {}' > benches/bundle_sync.rs \
    && echo 'fn main() {}' > benches/controller.rs \
    && echo 'fn main() {}' > benches/fleet.rs \
    && echo 'fn main() {}' > benches/durability.rs \
    && cargo build --release --locked --bin ota \
    && rm -rf src benches

COPY src ./src
COPY benches ./benches
# COPY keeps the files' own modification times, which may be older than the empty stand-ins
# built above; touching them makes cargo rebuild this crate for certain.
RUN touch src/main.rs src/lib.rs \
    && cargo build --release --locked --bin ota \
    && install -D -m 0755 target/release/ota /out/ota

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=builder /out/ota /usr/local/bin/ota
USER 65532:65532
ENTRYPOINT ["ota"]
CMD ["--help"]

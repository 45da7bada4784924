# Multi-stage build: compile in the Rust image, run in a slim Debian with only the binary.
FROM rust:1-slim-bookworm AS build
WORKDIR /src
# Dependencies first, in a layer of their own: built against stub sources, so a change to the
# project's code rebuilds only the project (the same idea as cargo-chef, without the extra tool).
COPY Cargo.toml Cargo.lock ./
RUN mkdir -p src benches examples \
    && echo 'fn main() {}' > src/main.rs && touch src/lib.rs \
    && echo 'fn main() {}' > benches/callback.rs && echo 'fn main() {}' > examples/loadtest.rs \
    && cargo build --release --locked --bin wecom-gateway \
    && rm -rf src benches examples
COPY src ./src
COPY benches ./benches
COPY examples ./examples
# touch: the copied sources may be older than the stubs' build.
RUN touch src/main.rs src/lib.rs \
    && cargo build --release --locked --bin wecom-gateway \
    && strip target/release/wecom-gateway

FROM debian:bookworm-slim
# TLS roots are compiled in (rustls + webpki-roots), so no ca-certificates package is needed.
RUN useradd --system --uid 10001 --home-dir /app --create-home wecom \
    && mkdir -p /app/data && chown wecom /app/data
# The working directory makes the default data_dir (./data) /app/data, and is where a mounted
# .env is read from. No ENV defaults here: an ENV line would silently beat a mounted config.yaml.
WORKDIR /app
COPY --from=build /src/target/release/wecom-gateway /usr/local/bin/wecom-gateway
COPY config.yaml.example /app/config.yaml.example
USER wecom
# The message store and received files: mount a volume here so they survive a new container.
VOLUME ["/app/data"]
EXPOSE 8645
HEALTHCHECK --interval=30s --timeout=5s --start-period=5s --retries=3 \
    CMD ["wecom-gateway", "health"]
ENTRYPOINT ["wecom-gateway"]
CMD ["serve"]

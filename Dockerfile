# Multi-stage build: compile in the Rust image, run in a slim Debian with only the binary.
FROM rust:1-slim-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY benches ./benches
COPY examples ./examples
RUN cargo build --release --locked --bin wecom-gateway \
    && strip target/release/wecom-gateway

FROM debian:bookworm-slim
# TLS roots are compiled in (rustls + webpki-roots), so no ca-certificates package is needed.
RUN useradd --system --uid 10001 --home-dir /app --create-home wecom \
    && mkdir -p /app/data && chown wecom /app/data
WORKDIR /app
COPY --from=build /src/target/release/wecom-gateway /usr/local/bin/wecom-gateway
COPY config.yaml.example /app/config.yaml.example
USER wecom
ENV WECOM_CALLBACK_HOST=0.0.0.0 \
    WECOM_CALLBACK_PORT=8645 \
    WECOM_CALLBACK_DATA_DIR=/app/data \
    RUST_LOG=info
# The message store: mount a volume here so messages survive a new container.
VOLUME ["/app/data"]
EXPOSE 8645
HEALTHCHECK --interval=30s --timeout=5s --start-period=5s --retries=3 \
    CMD ["wecom-gateway", "health"]
ENTRYPOINT ["wecom-gateway"]
CMD ["serve"]

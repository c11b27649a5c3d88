# Switchboard's container image: built from this repository in a Rust image, run from
# a slim Debian image as a non-root user, with a health check on /health/ready.
#   docker build -t switchboard .
#   docker run -p 7400:7400 -p 127.0.0.1:7401:7401 switchboard     # dev mode, memory only
# Production: mount a config (tuning/*.toml) and pass the secrets as SWITCHBOARD_*
# variables (deploy/compose.yaml runs two nodes with Redis and PostgreSQL).

FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bin switchboard \
 && cp target/release/switchboard /usr/local/bin/switchboard

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --home-dir /var/lib/switchboard --create-home switchboard
COPY --from=build /usr/local/bin/switchboard /usr/local/bin/switchboard
COPY tuning/ /etc/switchboard/
USER switchboard
WORKDIR /var/lib/switchboard
ENV SWITCHBOARD_ENGINE__LISTEN=0.0.0.0:7400 \
    SWITCHBOARD_ADMIN__LISTEN=0.0.0.0:7401 \
    SWITCHBOARD_STORE__PATH=/var/lib/switchboard/switchboard.db
EXPOSE 7400 7401
VOLUME ["/var/lib/switchboard"]
# Ready: every shard accepts and the store can write (503 otherwise). bash's /dev/tcp
# keeps curl out of the image.
HEALTHCHECK --interval=10s --timeout=3s --start-period=20s --retries=3 \
  CMD ["bash", "-c", "exec 3<>/dev/tcp/127.0.0.1/7401 && printf 'GET /health/ready HTTP/1.0\\r\\n\\r\\n' >&3 && head -1 <&3 | grep -q ' 200 '"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/switchboard"]
CMD ["serve"]

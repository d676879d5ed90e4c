# sipcraft container image: `make docker` (docker build -t sipcraft:VERSION .).
# The supervisor runs as PID 1 (it reaps every exit and stops in order on SIGTERM), as the
# unprivileged user sipcraft. See README.md, "Installing and running in production".

# Build stage: the release binary, from the locked dependency set.
FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked \
 && install -D -m 0755 target/release/sipcraft /out/sipcraft \
 && strip --strip-unneeded /out/sipcraft

# Runtime stage: Debian slim, the binary and its configuration; nothing else.
FROM debian:bookworm-slim
RUN groupadd --system sipcraft \
 && useradd --system --gid sipcraft --home-dir /var/lib/sipcraft --no-create-home \
        --shell /usr/sbin/nologin --comment "sipcraft SIP server" sipcraft \
 && install -d -m 0700 -o sipcraft -g sipcraft /run/sipcraft \
 && install -d -m 0750 -o sipcraft -g sipcraft /var/lib/sipcraft \
 && install -d -m 0755 /etc/sipcraft
COPY --from=build /out/sipcraft /usr/bin/sipcraft
COPY docker/sipcraft.toml /etc/sipcraft/sipcraft.toml

USER sipcraft:sipcraft
# The extension cache and write journal: what lets a restarted container serve while the
# database is away. /run/sipcraft (control and bus sockets) lives and dies with the container.
VOLUME ["/var/lib/sipcraft"]
# SIP over UDP and TCP; 5061 for TLS (not served yet).
EXPOSE 5060/udp 5060/tcp 5061/tcp
# Healthy while every child (dbagent, workers) is ready; a crash loop fails the check.
HEALTHCHECK --interval=30s --timeout=5s --start-period=15s --retries=3 \
    CMD ["sipcraft", "ctl", "-c", "/etc/sipcraft/sipcraft.toml", "status", "--check"]
# SIGTERM (docker stop) is an orderly stop within [supervisor] stop_timeout_s (5 s), well
# inside docker's 10 s grace period.
STOPSIGNAL SIGTERM
ENTRYPOINT ["sipcraft", "run"]
CMD ["-c", "/etc/sipcraft/sipcraft.toml"]

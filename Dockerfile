# dropnet: the server (dropnet-server) and the command line client (dropnet) in one small image.
#
#   docker build -t dropnet .                       (or: buildah bud --format docker -t dropnet .)
#   docker run -p 50051:50051 -v dropnet-store:/var/lib/dropnet dropnet
#   docker run --rm --network host --entrypoint dropnet dropnet health
#
# Configuration is by environment (every dropnet-server flag has a DROPNET_* variable, see
# README.md), e.g. DROPNET_READ_ONLY=true DROPNET_POLL_INTERVAL=2 for a serving replica.
# DROPNET_PLAINTEXT=true: a container listens on 0.0.0.0 and TLS usually ends at the platform;
# mount a certificate and set DROPNET_TLS_CERT and DROPNET_TLS_KEY to serve TLS instead.

# ---- builder: Debian 12 with the -dev packages; builds only the two programs ----
FROM debian:bookworm AS builder
ARG DEBIAN_FRONTEND=noninteractive
RUN apt-get update \
 && apt-get install -y --no-install-recommends \
      build-essential cmake ninja-build pkg-config \
      libeigen3-dev librandom123-dev zlib1g-dev \
      libgrpc++-dev libprotobuf-dev protobuf-compiler protobuf-compiler-grpc grpc-proto \
      libspdlog-dev libfmt-dev libcli11-dev nlohmann-json3-dev \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
# At most two compile jobs: a Release build of the engine takes about 1 GiB per job.
ARG JOBS=2
# Only what the image ships: no tests, no benchmarks (their packages are not installed here).
RUN cmake -S . -B /build -G Ninja -DCMAKE_BUILD_TYPE=Release \
      -DDROPNET_BUILD_TESTS=OFF -DDROPNET_BUILD_BENCH=OFF -DDROPNET_FUZZ=OFF \
 && cmake --build /build --target dropnet-server dropnet -j "${JOBS}" \
 && strip /build/bin/dropnet-server /build/bin/dropnet

# ---- runtime: bookworm-slim with only the shared libraries the two programs load ----
FROM debian:bookworm-slim
ARG DEBIAN_FRONTEND=noninteractive
# ldd + dpkg -S on the two binaries: libgrpc++1.51 (pulls libgrpc29, absl, c-ares, re2, ssl),
# libprotobuf32, libspdlog1.10 (pulls libfmt9), zlib1g; libstdc++6/libgcc-s1/libc6 are in the base.
RUN apt-get update \
 && apt-get install -y --no-install-recommends libgrpc++1.51 libprotobuf32 libspdlog1.10 libfmt9 zlib1g \
 && apt-get clean \
 && rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin /var/log/apt /var/log/dpkg.log \
 && groupadd --system --gid 10001 dropnet \
 && useradd --system --uid 10001 --gid dropnet --home-dir /var/lib/dropnet --no-create-home \
      --shell /usr/sbin/nologin dropnet \
 && install -d -o dropnet -g dropnet -m 0750 /var/lib/dropnet
COPY --from=builder /build/bin/dropnet-server /build/bin/dropnet /usr/local/bin/
# Example model specs and the small CSV data sets, for the compose client and for ImportDataset.
COPY examples/ /usr/share/dropnet/examples/
COPY data/ /usr/share/dropnet/data/
# Fail the build here, not at run time, when a shared library is missing.
RUN ! ldd /usr/local/bin/dropnet-server /usr/local/bin/dropnet | grep -q 'not found' \
 && dropnet-server --help >/dev/null && dropnet --help >/dev/null

ENV DROPNET_LISTEN=0.0.0.0:50051 \
    DROPNET_STORE=/var/lib/dropnet \
    DROPNET_DATA_ROOT=/usr/share/dropnet/data \
    DROPNET_LOG_LEVEL=info \
    DROPNET_PLAINTEXT=true \
    DROPNET_SERVER=127.0.0.1:50051
USER 10001:10001
WORKDIR /var/lib/dropnet
VOLUME ["/var/lib/dropnet"]
EXPOSE 50051
# grpc.health.v1 through the client that ships in the image; NOT_SERVING while draining.
HEALTHCHECK --interval=10s --timeout=5s --start-period=10s --retries=3 \
  CMD ["dropnet", "--timeout", "3", "health"]
# Exec form: the server is PID 1 and receives SIGTERM itself (health NOT_SERVING, trainings
# save their last epoch, in-flight calls get --shutdown-grace seconds, then exit 0).
STOPSIGNAL SIGTERM
ENTRYPOINT ["dropnet-server"]
CMD []

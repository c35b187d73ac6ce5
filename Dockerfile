# Image for docker-compose.kafka.yml. librdkafka is built from source by rdkafka's cmake-build feature.
FROM rust:1-bookworm AS build
RUN apt-get update && apt-get install -y --no-install-recommends cmake libcurl4-openssl-dev libssl-dev \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bin activity-pipeline

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates libssl3 libcurl4 \
    && rm -rf /var/lib/apt/lists/*
COPY --from=build /src/target/release/activity-pipeline /usr/local/bin/activity-pipeline
COPY config /app/config
USER 65532:65532
ENTRYPOINT ["activity-pipeline"]

# activity-pipeline: the two commands a newcomer needs are `make run` and `make test`.
# Everything else here is a building block of those two.

SHELL := /bin/bash
CARGO ?= cargo
DEV_CONFIG := config/dev.toml
BIN := target/debug/activity-pipeline

.PHONY: run test lint fmt build build-deps browser-deps stack-up stack-down stack-status stack-reset cluster-up cluster-down cluster-status cluster-reset redis-cluster-up dc-up dc-down dc-status dc-reset topics unit integration faults cluster-drill dc-drill bench bench-micro

## run: start the local stack, build, create the topics, run `produce`, `consume` and `console` with the
## dev config (prints the console's address and the dev operator's token).
run: build stack-up
	@scripts/run-dev.sh

## test: start the local stack, then lint and run the whole test suite (unit + integration, and the
## fault-injection suite's short profile on a private stack of its own).
test: build-deps browser-deps stack-up redis-cluster-up lint
	$(CARGO) test --all-targets --locked

## lint: formatting and clippy, warnings denied.
lint: build-deps
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --all-targets --locked -- -D warnings

fmt:
	$(CARGO) fmt --all

## unit: the pure tests only (no services needed).
unit: build-deps
	$(CARGO) test --lib --locked

## integration: the integration tests only (the stack must be up).
integration: build-deps browser-deps stack-up redis-cluster-up
	$(CARGO) test --test integration --locked

## faults: the fault-injection suite on a private stack (tests/faults). Knobs: PROFILE=short|long,
## SEED=<n> (repeat a run), DURATION=150s|30m, FAULTS=all|none|proxy|<kind>,..., TARGETS=kafka,mongo,redis.
faults: build-deps
	$(CARGO) test --locked --test faults -- --profile $(or $(PROFILE),short) \
		$(if $(SEED),--seed $(SEED)) $(if $(DURATION),--duration $(DURATION)) \
		$(if $(FAULTS),--faults $(FAULTS)) $(if $(TARGETS),--targets $(TARGETS))

## cluster-drill: the fault suite's cluster drill on a private cluster of its own (three brokers,
## two APIs, two then three consumers): broker, controller, consumer, Redis master and two-broker
## kills under load, checked like `make faults`. Not part of `make test`; 3-4 minutes.
## Knobs: SEED=<n>, DURATION=300s (the longest the load may run), REDIS=single|cluster.
cluster-drill: build-deps
	$(CARGO) test --locked --test faults -- --profile cluster-drill \
		$(if $(SEED),--seed $(SEED)) $(if $(DURATION),--duration $(DURATION)) \
		$(if $(REDIS),--redis $(REDIS))

## dc-drill: the fault suite's datacenter drill on a private two-datacenter stack of its own
## (scripts/dc.sh at a free port offset): clients homed in east and west, every east process
## SIGKILLed and brought back, MirrorMaker 2 killed and restarted, keys raced in both datacenters;
## both stores checked against the ledger and against each other, RPO, RTO and replication lag
## reported. Not part of `make test`; about 6 minutes. Knobs: SEED=<n>, DURATION=240s (the longest
## the load may run).
dc-drill: build-deps
	$(CARGO) test --locked --test faults -- --profile dc-drill \
		$(if $(SEED),--seed $(SEED)) $(if $(DURATION),--duration $(DURATION))

## bench: the pipeline bench on a private stack, release build (BENCH_ARGS="--rounds 1" etc.;
## scripts/bench.sh --help). Not part of `make test`. See BENCHMARKS.md.
bench: build-deps
	@scripts/bench.sh $(BENCH_ARGS)

## bench-micro: criterion benchmarks of the hot pure code (validation, envelope, document).
bench-micro: build-deps
	$(CARGO) bench --locked --bench hot_paths

build: build-deps
	$(CARGO) build --locked

## browser-deps: Debian's chromium and chromium-driver, for the console's browser tests.
browser-deps:
	@scripts/install-chromium.sh

## build-deps: the system packages the build needs (cmake and curl headers for librdkafka).
build-deps:
	@scripts/install-build-deps.sh

stack-up:
	@scripts/stack.sh up

stack-down:
	@scripts/stack.sh down

stack-status:
	@scripts/stack.sh status

stack-reset:
	@scripts/stack.sh reset

## cluster-up / cluster-down / cluster-status / cluster-reset: the cluster profile (three Kafka brokers
## on 9192-9194 with RF 3 and min.insync.replicas 2, a Redis Cluster on 7001-7006, FerretDB on 27017);
## see scripts/cluster.sh. Not used by `make run` or `make test`.
cluster-up:
	@scripts/stack.sh up --profile cluster

cluster-down:
	@scripts/stack.sh down --profile cluster

cluster-status:
	@scripts/stack.sh status --profile cluster

cluster-reset:
	@scripts/stack.sh reset --profile cluster

## redis-cluster-up: only the cluster profile's Redis Cluster (7001-7006), for the Redis Cluster
## integration tests that `make test` runs.
redis-cluster-up:
	@scripts/stack.sh up --profile cluster redis

## dc-up / dc-down / dc-status / dc-reset: the two-datacenter profile (east and west, each with its
## Kafka, FerretDB, Redis, produce and consume, MirrorMaker 2 between them; ports and layout in
## scripts/dc.sh). dc-up builds the binary and waits until an activity posted in each datacenter is
## stored in the other. Not used by `make run` or `make test`.
dc-up: build
	@scripts/stack.sh up --profile dc

dc-down:
	@scripts/stack.sh down --profile dc

dc-status:
	@scripts/stack.sh status --profile dc

dc-reset:
	@scripts/stack.sh reset --profile dc

topics: build stack-up
	$(BIN) --config $(DEV_CONFIG) topics create

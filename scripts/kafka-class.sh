#!/usr/bin/env bash
# Runs a Java class from the cached Kafka 4.4 classpath with quiet logging (WARN to stderr).
#
# Usage: scripts/kafka-class.sh CLASS [ARGS...]
#   scripts/kafka-class.sh org.apache.kafka.tools.TopicCommand --bootstrap-server 127.0.0.1:9092 --list
#   scripts/kafka-class.sh org.apache.kafka.tools.ProducerPerformance --topic t --num-records 100000 \
#       --record-size 200 --throughput -1 --producer-props bootstrap.servers=127.0.0.1:9092
#   scripts/kafka-class.sh org.apache.kafka.tools.consumer.group.ConsumerGroupCommand \
#       --bootstrap-server 127.0.0.1:9092 --describe --group G
# Fetches the jars (Maven Central, into AP_CACHE_DIR) first when they are absent.
# AP_KAFKA_JAVA_OPTS adds JVM options (default: -Xmx512m).
set -euo pipefail

# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

if [[ $# -lt 1 || "$1" == -h || "$1" == --help ]]; then
    sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "${BASH_SOURCE[0]}" >&2
    exit 2
fi
class=$1
shift

ap_require_java
ap_ensure_kafka_libs

read -r -a java_opts <<<"${AP_KAFKA_JAVA_OPTS:--Xmx512m}"
exec java "${java_opts[@]}" -Djava.awt.headless=true \
    -Dlog4j2.configurationFile="${AP_SCRIPTS_DIR}/kafka/log4j2-tools.xml" \
    -cp "${AP_KAFKA_LIBS}/*" "${class}" "$@"

#!/bin/bash
# The featurelib image's entrypoint: the first argument picks the role (deploy/docker/README.md).
#
#   driver ARGS...     Spark on Kubernetes, driver pod: spark-submit --deploy-mode client ARGS
#                      (what spark-submit --master k8s://... and spark-operator start the pod with)
#   executor           Spark on Kubernetes, executor pod: the executor backend, configured by the
#                      SPARK_* variables Spark sets on the pod
#   --FLAG...          a Beam SDK harness: Beam's boot program with these flags (a Beam runner starts
#                      a custom container with --id=... --control_endpoint=... or --worker_pool)
#   anything else      run as given: featurize run ..., spark-submit ..., python ..., bash
#
# SPARK_HOME, JAVA_HOME and BEAM_BOOT (default /opt/apache/beam/boot) come from the environment.
set -eo pipefail

: "${BEAM_BOOT:=/opt/apache/beam/boot}"

# tini (when installed) forwards signals to the JVM and reaps Spark's child processes: a SIGTERM
# from Kubernetes reaches featurelib, which stops its workers and exits 143.
init=()
if command -v tini > /dev/null; then
  init=(tini -s --)
fi

case "${1:-}" in
  driver)
    shift
    : "${SPARK_DRIVER_BIND_ADDRESS:?the driver pod sets SPARK_DRIVER_BIND_ADDRESS}"
    exec "${init[@]}" "$SPARK_HOME/bin/spark-submit" \
      --conf "spark.driver.bindAddress=$SPARK_DRIVER_BIND_ADDRESS" \
      --conf "spark.executorEnv.SPARK_DRIVER_POD_IP=$SPARK_DRIVER_BIND_ADDRESS" \
      --deploy-mode client \
      "$@"
    ;;
  executor)
    shift
    classpath="${SPARK_CONF_DIR:-$SPARK_HOME/conf}:$SPARK_HOME/jars/*"
    if [ -n "${SPARK_EXTRA_CLASSPATH:-}" ]; then
      classpath="$classpath:$SPARK_EXTRA_CLASSPATH"
    fi
    if [ -n "${SPARK_CLASSPATH:-}" ]; then
      classpath="$SPARK_CLASSPATH:$classpath"
    fi
    classpath="$classpath:$PWD"
    # Spark passes the executor's Java options as SPARK_JAVA_OPT_0, SPARK_JAVA_OPT_1, ...
    java_opts=()
    for name in $(compgen -v SPARK_JAVA_OPT_ | sort -t_ -k4 -n); do
      java_opts+=("${!name}")
    done
    exec "${init[@]}" "${JAVA_HOME:?JAVA_HOME is not set}/bin/java" \
      "${java_opts[@]}" \
      -Xms"${SPARK_EXECUTOR_MEMORY:?}" -Xmx"${SPARK_EXECUTOR_MEMORY}" \
      -cp "$classpath" \
      org.apache.spark.scheduler.cluster.k8s.KubernetesExecutorBackend \
      --driver-url "${SPARK_DRIVER_URL:?}" \
      --executor-id "${SPARK_EXECUTOR_ID:?}" \
      --cores "${SPARK_EXECUTOR_CORES:?}" \
      --app-id "${SPARK_APPLICATION_ID:?}" \
      --hostname "${SPARK_EXECUTOR_POD_IP:?}" \
      --resourceProfileId "${SPARK_RESOURCE_PROFILE_ID:-0}" \
      --podName "${SPARK_EXECUTOR_POD_NAME:-$HOSTNAME}" \
      "$@"
    ;;
  --*)
    exec "$BEAM_BOOT" "$@"
    ;;
  "")
    exec featurize --help
    ;;
  *)
    exec "$@"
    ;;
esac

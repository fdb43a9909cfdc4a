#!/usr/bin/env bash
# Entry point of the components-spark image (components/Dockerfile.spark). Spark on Kubernetes, and so the
# Kubeflow Spark Operator, starts the driver pod with arguments `driver --properties-file F --class C <app> ...`
# and each executor pod with `executor`, the executor's identity and sizes in SPARK_* environment variables the
# driver sets on the pod. Anything else runs as given (`docker run IMAGE python3 -m ...`, a shell for debugging).
set -euo pipefail

: "${SPARK_HOME:?spark-entrypoint: SPARK_HOME is not set: the image sets it to the pyspark install}"
: "${JAVA_HOME:?spark-entrypoint: JAVA_HOME is not set: the image sets it to its Java 17}"

# The driver's properties, the executors' java options and the classpath: the image's Spark conf first (if one
# is mounted), then every jar of this Spark (pyspark's own plus hadoop-aws and the AWS SDK added by the image).
classpath="${SPARK_HOME}/jars/*"
if [[ -n "${SPARK_CONF_DIR:-}" ]]; then
  classpath="${SPARK_CONF_DIR}:${classpath}"
fi
if [[ -n "${HADOOP_CONF_DIR:-}" ]]; then
  classpath="${HADOOP_CONF_DIR}:${classpath}"
fi
if [[ -n "${SPARK_EXTRA_CLASSPATH:-}" ]]; then
  classpath="${classpath}:${SPARK_EXTRA_CLASSPATH}"
fi

# The driver passes the executors' JVM options (spark.executor.extraJavaOptions, Java 17's --add-opens list that
# Spark adds itself) as SPARK_JAVA_OPT_0, SPARK_JAVA_OPT_1, ...: keep their numeric order, one argument each.
executor_java_opts() {
  local name
  while IFS= read -r name; do
    printf '%s\0' "${!name}"
  done < <(compgen -v SPARK_JAVA_OPT_ | sort -t_ -k4 -n)
}

need() {
  local name
  for name in "$@"; do
    if [[ -z "${!name:-}" ]]; then
      echo "spark-entrypoint: executor pod lacks ${name} (set by the Spark driver when it creates executors)" >&2
      exit 64
    fi
  done
}

mode="${1:-}"
case "${mode}" in
  driver)
    shift
    # The operator already submitted the application in cluster mode; inside the driver pod it runs in client
    # mode, bound to the pod's IP, which executors reach through the driver's headless Service.
    : "${SPARK_DRIVER_BIND_ADDRESS:?spark-entrypoint: driver pod lacks SPARK_DRIVER_BIND_ADDRESS (the pod IP, set by Spark)}"
    cmd=(
      "${SPARK_HOME}/bin/spark-submit"
      --conf "spark.driver.bindAddress=${SPARK_DRIVER_BIND_ADDRESS}"
      --conf "spark.executorEnv.SPARK_DRIVER_POD_IP=${SPARK_DRIVER_BIND_ADDRESS}"
      --deploy-mode client
      "$@"
    )
    ;;
  executor)
    shift
    need SPARK_DRIVER_URL SPARK_EXECUTOR_ID SPARK_EXECUTOR_CORES SPARK_APPLICATION_ID SPARK_EXECUTOR_POD_IP \
      SPARK_EXECUTOR_MEMORY SPARK_EXECUTOR_POD_NAME
    java_opts=()
    while IFS= read -r -d '' opt; do
      java_opts+=("${opt}")
    done < <(executor_java_opts)
    # The executor is a plain JVM (no spark-submit): the heap is the pod's executor memory, as Spark sized it.
    cmd=(
      "${JAVA_HOME}/bin/java"
      "${java_opts[@]}"
      "-Xms${SPARK_EXECUTOR_MEMORY}"
      "-Xmx${SPARK_EXECUTOR_MEMORY}"
      -cp "${classpath}${SPARK_DIST_CLASSPATH:+:${SPARK_DIST_CLASSPATH}}"
      org.apache.spark.scheduler.cluster.k8s.KubernetesExecutorBackend
      --driver-url "${SPARK_DRIVER_URL}"
      --executor-id "${SPARK_EXECUTOR_ID}"
      --cores "${SPARK_EXECUTOR_CORES}"
      --app-id "${SPARK_APPLICATION_ID}"
      --hostname "${SPARK_EXECUTOR_POD_IP}"
      --resourceProfileId "${SPARK_RESOURCE_PROFILE_ID:-0}"
      --podName "${SPARK_EXECUTOR_POD_NAME}"
    )
    ;;
  "")
    echo "spark-entrypoint: no command: expected driver, executor, or a command to run" >&2
    exit 64
    ;;
  *)
    cmd=("$@")
    ;;
esac

# MLWF_SPARK_ENTRYPOINT_DRY_RUN=1 prints the command instead of running it (tests check the argument contract
# without a JVM or a cluster).
if [[ "${MLWF_SPARK_ENTRYPOINT_DRY_RUN:-}" == "1" ]]; then
  printf '%s\0' "${cmd[@]}"
  exit 0
fi
# tini as PID 1: forwards SIGTERM from the kubelet to the JVM (so Spark's shutdown hooks run) and reaps the
# Python workers the JVM forks; -s makes it a subreaper should anything else be PID 1.
exec /usr/bin/tini -s -- "${cmd[@]}"

"""The Spark engine's local session, and the preflight that says what is missing before any work starts.

The data steps run on Spark when MLWF_ENGINE=spark (components/core/settings.py): each step starts a
`local[*]` SparkSession in its own process. Spark needs two things pip alone cannot vouch for: the
pyspark package (pinned in constraints.txt) and a Java runtime on the machine; `require_spark` checks
both and raises one line naming what to install, so a step fails before it reads anything.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

PYSPARK_PIN = "pyspark==4.1.4"  # GX 1.24.1 needs < 4.2, Feast 0.67's Spark store >= 4.0 (shared/FACTS.md)
JAVA_HINT = "a Java 17 runtime (e.g. apt-get install openjdk-17-jre-headless, or set JAVA_HOME)"


class SparkUnavailable(RuntimeError):
    """The Spark engine was asked for, but pyspark or Java is missing."""


def java_executable() -> str | None:
    """The `java` pyspark will launch: $JAVA_HOME/bin/java when JAVA_HOME is set (as spark-submit does), else PATH's."""
    home = os.environ.get("JAVA_HOME", "").strip()
    if home:
        candidate = Path(home) / "bin" / "java"
        return str(candidate) if candidate.is_file() and os.access(candidate, os.X_OK) else None
    return shutil.which("java")


def require_spark() -> None:
    """Raise SparkUnavailable (one line, naming what to install) unless pyspark imports and Java runs."""
    try:
        import pyspark  # noqa: F401  (only whether it imports)
    except ImportError as err:
        raise SparkUnavailable(f"MLWF_ENGINE=spark needs pyspark: pip install {PYSPARK_PIN} (make install pins it) ({err})") from err
    java = java_executable()
    if java is None:
        where = "JAVA_HOME/bin/java" if os.environ.get("JAVA_HOME", "").strip() else "java on PATH"
        raise SparkUnavailable(f"MLWF_ENGINE=spark needs {JAVA_HINT}: no {where}")
    try:
        # `java -version` exits 0 on a working runtime; a broken install (missing libjvm) fails here, not in Spark.
        done = subprocess.run([java, "-version"], capture_output=True, timeout=60, check=False)  # noqa: S603
    except (OSError, subprocess.TimeoutExpired) as err:
        raise SparkUnavailable(f"MLWF_ENGINE=spark needs {JAVA_HINT}: {java} does not run ({err})") from err
    if done.returncode != 0:
        tail = (done.stderr or done.stdout).decode(errors="replace").strip().splitlines()
        raise SparkUnavailable(f"MLWF_ENGINE=spark needs {JAVA_HINT}: {java} -version failed: {tail[-1] if tail else done.returncode}")


def local_session(master: str = "local[*]", shuffle_partitions: int = 4, app_name: str = "mlwf") -> Any:
    """A SparkSession on this machine (getOrCreate: a second call in the process reuses the first's).

    - UTC session time zone: timestamps read and written as the pandas engine's (UTC) ones.
    - ANSI mode off: a cast of bad text gives null (validation decides what a bad value is), not an error.
    - few shuffle partitions: the data steps shuffle only for the compound-key check; the default 200
      would be 200 tiny tasks on a laptop.
    - no UI and the driver bound to 127.0.0.1: nothing listens beyond this machine.
    - executors' Python is this interpreter (the project's virtualenv), so they import the same code.
    """
    require_spark()
    os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")  # else Spark looks up the host's address (and warns)
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
    from pyspark.sql import SparkSession

    session = (
        SparkSession.builder.master(master)
        .appName(app_name)
        .config("spark.sql.session.timeZone", "UTC")
        .config("spark.sql.ansi.enabled", "false")
        .config("spark.sql.shuffle.partitions", str(shuffle_partitions))
        .config("spark.default.parallelism", str(shuffle_partitions))
        .config("spark.sql.execution.arrow.pyspark.enabled", "true")
        .config("spark.ui.enabled", "false")
        .config("spark.ui.showConsoleProgress", "false")
        .config("spark.driver.host", "127.0.0.1")
        .config("spark.driver.bindAddress", "127.0.0.1")
        .getOrCreate()
    )
    session.sparkContext.setLogLevel("ERROR")
    # py4j logs every connection it opens and closes at INFO: noise in the step's log
    logging.getLogger("py4j").setLevel(logging.WARNING)
    return session

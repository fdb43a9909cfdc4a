"""The batch scoring step: resolve the model, read and validate the rows, score them, write scores and quarantine.

Called by pipelines/ops.py `score_op`, which the scoring pipeline runs (on a schedule, or once with
`mlwf score --local`). Reading the rows into the data stage's shape and validating them is the data stage's work;
it comes in as `DataStage` (pipelines/scoring_data.py builds it), because a stage imports only core and itself.

Bad input (a model reference that resolves to nothing, rows without a feature column) fails before anything is
written, in one line. The quarantine file is written before the scores, each atomically (temporary name, then
rename), so a complete scores file means both are there.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from components.core import storage
from components.core.bundle import Bundle
from components.core.spec import EVENT_TIMESTAMP, DatasetSpec
from components.scoring.batch import (
    PARQUET_SUFFIXES,
    Checked,
    InputFile,
    ScoringError,
    check_columns,
    check_conservation,
    input_fingerprint,
    parquet_bytes,
    quarantine_uri,
    read_columns,
    read_text,
    score,
    scored_table,
    scoring_run_id,
)

log = logging.getLogger("mlwf")


@dataclass(frozen=True)
class ScoringRequest:
    model_ref: str  # NAME@ALIAS, NAME/VERSION or models:/...
    data_uri: str  # a CSV or Parquet file, or a directory / s3:// prefix of them
    out_uri: str  # the scores' Parquet file; the quarantine goes beside it
    dataset_spec: str = ""  # empty: the dataset the model was trained on (its bundle's lineage)


@dataclass(frozen=True)
class DataStage:
    """The data stage's part, handed in: list a source's files; load the spec's suite (its version; raises when it is
    missing or stale); turn read files into validated rows."""

    list_files: Callable[[str], list[str]]
    suite_version: Callable[[DatasetSpec, str], str]
    # (spec, spec ref, files, input has a label column, run id, now) -> valid and quarantined rows
    check: Callable[[DatasetSpec, str, list[InputFile], bool, str, datetime], Checked]


@dataclass(frozen=True)
class ScoringResult:
    model_name: str
    model_version: str
    dataset: str
    rows_in: int
    scored: int
    quarantined: int
    has_label: bool
    input_fingerprint: str
    suite_version: str
    scores_uri: str
    quarantine_uri: str
    scores_sha256: str

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@contextmanager
def resolved_model(ref: str, settings: Any) -> Iterator[tuple[Any, Bundle]]:
    """The registry's model version `ref` names and its loaded bundle (verified digests), or a one-line ScoringError."""
    from components.core import bundle as bundle_lib
    from components.core import lineage, tracking

    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # a progress bar on stderr per download
    if not lineage.is_model_ref(ref):
        raise ScoringError(f"{ref!r} names no model version: use NAME@ALIAS (e.g. transactions_classifier@champion) or NAME/VERSION")
    try:
        client = tracking.configure(settings)
        version = lineage.model_version(client, ref)
    except Exception as err:  # MlflowException (unknown model, version or alias), or the tracking store unreachable
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise ScoringError(f"no model version {ref!r} in the registry at {settings.mlflow_tracking_uri}: {first}") from err
    with tempfile.TemporaryDirectory(prefix="mlwf-score-model-") as tmp:
        try:
            loaded = bundle_lib.load(tracking.download_bundle(client, version, tmp))
        except Exception as err:  # a bundle that fails its digests, or an artifact store that does not answer
            first = (str(err).strip().splitlines() or [type(err).__name__])[0]
            raise ScoringError(f"model {ref!r} (version {version.version}): {first}") from err
        yield version, loaded


def model_spec(dataset_spec: str, bundle: Bundle) -> tuple[DatasetSpec, str]:
    """The dataset spec to validate with: the one given, else the one the model was trained on."""
    from components.core.spec import SpecError, load_spec

    ref = dataset_spec or str(bundle.signature.get("lineage", {}).get("dataset") or "")
    if not ref:
        raise ScoringError("the model's bundle names no dataset: give the dataset spec (--dataset)")
    try:
        spec = load_spec(ref)
    except (SpecError, ValueError, OSError) as err:
        raise ScoringError(f"dataset spec {ref!r}: {str(err).strip().splitlines()[0]}") from err
    missing = [f for f in bundle.feature_names if f not in spec.feature_names]
    if missing:
        raise ScoringError(f"dataset spec {ref!r} does not describe the model's feature(s) {missing}")
    return spec, ref


def _local_files(request: ScoringRequest, data: DataStage) -> list[str]:
    try:
        files = data.list_files(request.data_uri)
    except ValueError as err:  # the data stage's IngestError: nothing there, or an unsupported file
        raise ScoringError(str(err).strip().splitlines()[0]) from err
    if not files:
        raise ScoringError(f"no CSV or Parquet files at {request.data_uri}")
    return files


def read_inputs(spec: DatasetSpec, request: ScoringRequest, data: DataStage, workdir: str) -> tuple[list[InputFile], bool]:
    """Every input file read (text), its columns checked; returns them and whether they carry the label column."""
    files: list[InputFile] = []
    labelled: set[bool] = set()
    for uri in _local_files(request, data):
        local = storage.local_copy(uri, workdir)
        frame = read_text(local, uri)
        labelled.add(check_columns(spec, list(frame.columns), uri))
        files.append(InputFile(uri, storage.sha256_file(local), frame, Path(local).suffix.lower() in PARQUET_SUFFIXES))
    if len(labelled) > 1:
        raise ScoringError(f"some input files under {request.data_uri} have the label column {spec.label!r} and others not")
    if sum(len(f.frame) for f in files) == 0:
        raise ScoringError(f"scoring input has no rows (a header only?): {request.data_uri}")
    return files, labelled.pop()


def preflight(request: ScoringRequest, data: DataStage, settings: Any = None) -> str:
    """What `mlwf score` checks before any step starts (and writes nothing): the model resolves and loads, the
    dataset spec fits it and its suite is current, every input file has its columns. Returns the model version."""
    from components.core.settings import get_settings

    settings = settings or get_settings()
    check_target(request.out_uri)
    with resolved_model(request.model_ref, settings) as (version, bundle), tempfile.TemporaryDirectory() as tmp:
        spec, spec_ref = model_spec(request.dataset_spec, bundle)
        check_suite(data, spec, spec_ref)
        for uri in _local_files(request, data):
            check_columns(spec, read_columns(storage.local_copy(uri, tmp), uri), uri)
    return str(version.version)


def check_suite(data: DataStage, spec: DatasetSpec, spec_ref: str) -> str:
    """The version of the spec's suite, or a one-line ScoringError when it is missing, malformed or stale."""
    try:
        return data.suite_version(spec, spec_ref)
    except ValueError as err:  # the data stage's SuiteError
        raise ScoringError(str(err).strip().splitlines()[0]) from err


def check_target(out_uri: str) -> None:
    if not out_uri:
        raise ScoringError("no output given: name the scores' Parquet file (--out)")
    if not storage.is_s3(out_uri) and Path(out_uri).is_dir():
        raise ScoringError(f"the output {out_uri} is a directory: name the scores' Parquet file")


def first_seen(state_dir: str, dataset: str, digests: list[tuple[str, str]]) -> datetime:
    """The time these input files were first scored, kept in the state store: a row is "in the future" against it,
    so a rerun on the same input judges the same rows (and writes the same bytes) whenever it runs."""
    from components.core import lineage, paths

    key = hashlib.sha256(json.dumps(sorted(digests)).encode()).hexdigest()[:32]
    record = lineage.write_once(paths.scoring_first_seen_path(state_dir, dataset, key), {"first_seen": datetime.now(UTC).isoformat()})
    return datetime.fromisoformat(str(record["first_seen"]))


def score_batch(request: ScoringRequest, data: DataStage, settings: Any = None, now: datetime | None = None) -> ScoringResult:
    """Validate and score the input; write the scores to `out_uri` and the quarantine beside it."""
    from components.core.settings import get_settings

    settings = settings or get_settings()
    check_target(request.out_uri)
    with resolved_model(request.model_ref, settings) as (version, bundle), tempfile.TemporaryDirectory(prefix="mlwf-score-") as tmp:
        spec, spec_ref = model_spec(request.dataset_spec, bundle)
        check_suite(data, spec, spec_ref)
        files, has_label = read_inputs(spec, request, data, tmp)
        digests = [(f.uri, f.sha256) for f in files]
        model = (str(version.name), str(version.version))
        now = now or first_seen(settings.state_dir, spec.name, digests)
        checked = data.check(spec, spec_ref, files, has_label, scoring_run_id(digests, *model), now)
        fingerprint = input_fingerprint(digests, checked.suite_version)
        probabilities = score(bundle, checked.valid_table)
        table = scored_table(
            spec, checked.valid_table, probabilities, bundle.threshold, has_label, model, fingerprint, [f.uri for f in files]
        )
    rows_in = sum(len(f.frame) for f in files)
    check_conservation(rows_in, table.num_rows, len(checked.quarantined))
    metadata = {
        "mlwf.model": model[0],
        "mlwf.model_version": model[1],
        "mlwf.dataset": spec.name,
        "mlwf.input_fingerprint": fingerprint,
        "mlwf.suite_version": checked.suite_version,
        "mlwf.rows_in": str(rows_in),
    }
    # Columns scoring added for the data stage's reader (not the input's) stay out of the quarantine record.
    added = [c for c in (*([] if has_label else [spec.label]), *spec.audit_only) if all(c not in f.frame.columns for f in files)]
    if spec.timestamp is None:
        added.append(EVENT_TIMESTAMP)  # the scoring time stood in for it: not the row's, and not the same next run
    quarantined = checked.quarantined.drop(columns=[c for c in added if c in checked.quarantined.columns])
    scores = parquet_bytes(table, metadata)
    where = quarantine_uri(request.out_uri)
    storage.write_bytes(where, parquet_bytes(quarantined, metadata))
    storage.write_bytes(request.out_uri, scores)
    result = ScoringResult(
        model_name=model[0],
        model_version=model[1],
        dataset=spec.name,
        rows_in=rows_in,
        scored=table.num_rows,
        quarantined=len(quarantined),
        has_label=has_label,
        input_fingerprint=fingerprint,
        suite_version=checked.suite_version,
        scores_uri=request.out_uri,
        quarantine_uri=where,
        scores_sha256=hashlib.sha256(scores).hexdigest(),
    )
    log.info("score: %s v%s, %d rows in, %d scored, %d quarantined -> %s", *model, rows_in, result.scored, result.quarantined, where)
    return result


def score_step(request: ScoringRequest, data: DataStage, scores: Any, quarantine: Any, summary: Any) -> int:
    """The KFP step: score to `request.out_uri` (or, when empty, to the `scores` artifact), copy both files into the
    step's output artifacts (what the Kubeflow UI shows), write a Markdown summary. Returns the rows scored."""
    from components.core.logs import setup_logging

    setup_logging()
    with tempfile.TemporaryDirectory(prefix="mlwf-score-out-") as tmp:
        # Without out_uri the output artifacts are the only copies: score into a scratch folder, then copy both files
        # into the artifacts (a file written beside an artifact's path is never uploaded from a cluster's pod).
        target = request.out_uri or str(Path(tmp, "scores.parquet"))
        result = score_batch(ScoringRequest(request.model_ref, request.data_uri, target, request.dataset_spec), data)
        kept = {}
        for artifact, uri in ((scores, result.scores_uri), (quarantine, result.quarantine_uri)):
            storage.write_bytes(artifact.path, storage.read_bytes(uri))
            kept[artifact.path] = uri if request.out_uri else str(artifact.uri)
            artifact.metadata.update({k: v for k, v in result.as_dict().items() if not k.endswith("_uri")} | {"uri": kept[artifact.path]})
    storage.write_bytes(
        summary.path,
        (
            f"# Batch scoring: {result.model_name} v{result.model_version}\n\n"
            f"- rows in: {result.rows_in:,} = scored {result.scored:,} + quarantined {result.quarantined:,}\n"
            f"- scores: `{kept[scores.path]}` (sha256 {result.scores_sha256[:16]})\n"
            f"- quarantine: `{kept[quarantine.path]}`\n"
            f"- input fingerprint: `{result.input_fingerprint}` (suite {result.suite_version})\n"
        ).encode(),
    )
    return result.scored

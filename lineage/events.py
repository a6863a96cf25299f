"""OpenLineage run events for microdb jobs (sync, synth, provision), via openlineage-python.

``LineageEmitter.run(...)`` is a context manager: START on enter, COMPLETE on a normal
exit, FAIL (with an error-message facet) when the body raises, ABORT on interrupts.
Events go to a JSON-lines file (the client's FileTransport, one event per line, no
network) and/or to an OpenLineage HTTP endpoint such as Marquez. The ``microdb`` run
facet carries what a bundle manifest needs to be reproduced: policy hash, generator,
parameters, seed, source watermark.
"""

from __future__ import annotations

import traceback
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from types import TracebackType
from typing import Any, ClassVar

import attr
import pyarrow as pa
from openlineage.client.event_v2 import InputDataset, Job, OutputDataset, Run, RunEvent, RunState
from openlineage.client.facet_v2 import RunFacet, error_message_run, schema_dataset
from openlineage.client.transport.file import FileConfig, FileTransport
from openlineage.client.transport.http import HttpConfig, HttpTransport
from openlineage.client.transport.transport import Transport
from openlineage.client.uuid import generate_new_uuid

from microdb.errors import AuditError, ConfigError

PRODUCER = "https://github.com/microdb/microdb/tree/0.1.0/lineage"
MICRODB_FACET = "microdb"
MICRODB_FACET_SCHEMA_URL = "https://github.com/microdb/microdb/blob/0.1.0/spec/MicrodbRunFacet.json#/$defs/MicrodbRunFacet"


@attr.define
class MicrodbRunFacet(RunFacet):
    """Custom run facet ``microdb``: what produced a run's outputs, enough to reproduce them."""

    policy_hash: str | None = attr.field(default=None)
    generator: str | None = attr.field(default=None)
    parameters: dict[str, Any] = attr.field(factory=dict)
    seed: int | None = attr.field(default=None)
    source_watermark: str | None = attr.field(default=None)
    bundle: str | None = attr.field(default=None)

    _additional_skip_redact: ClassVar[list[str]] = ["policy_hash", "generator", "seed", "bundle"]

    def __attrs_post_init__(self) -> None:
        if not self._producer:
            self._producer = PRODUCER
        super().__attrs_post_init__()

    @staticmethod
    def _get_schema() -> str:
        return MICRODB_FACET_SCHEMA_URL


@dataclass(frozen=True)
class DatasetRef:
    """A dataset a job reads or writes; ``fields`` (name, type) become a schema facet."""

    namespace: str
    name: str
    fields: tuple[tuple[str, str], ...] | None = None

    def __post_init__(self) -> None:
        if self.fields is not None:
            object.__setattr__(self, "fields", tuple((str(n), str(t)) for n, t in self.fields))

    @classmethod
    def from_arrow(cls, namespace: str, name: str, schema: pa.Schema) -> DatasetRef:
        """A reference whose fields are an Arrow schema's column names and types."""
        return cls(namespace, name, tuple((f.name, str(f.type)) for f in schema))

    def _facets(self) -> dict[str, Any]:
        if self.fields is None:
            return {}
        facet = schema_dataset.SchemaDatasetFacet(
            fields=[
                schema_dataset.SchemaDatasetFacetFields(name=n, type=t, ordinal_position=i)
                for i, (n, t) in enumerate(self.fields, 1)
            ],
            producer=PRODUCER,
        )
        return {"schema": facet}

    def as_input(self) -> InputDataset:
        return InputDataset(namespace=self.namespace, name=self.name, facets=self._facets())

    def as_output(self) -> OutputDataset:
        return OutputDataset(namespace=self.namespace, name=self.name, facets=self._facets())


class LineageEmitter:
    """Emits run events for jobs in ``namespace`` to a file, an HTTP endpoint, or both.

    ``http_url`` is the server root (Marquez: ``http://host:5000``); events are POSTed
    to ``http_endpoint`` under it. Emission failures raise AuditError.
    """

    def __init__(
        self,
        namespace: str,
        file_path: Path | None = None,
        http_url: str | None = None,
        *,
        http_endpoint: str = "api/v1/lineage",
        http_timeout: float = 5.0,
        api_key: str | None = None,
    ) -> None:
        if not namespace:
            raise ConfigError("lineage: namespace must not be empty")
        self.namespace = namespace
        self._transports: list[Transport] = []
        if file_path is not None:
            path = Path(file_path)
            path.parent.mkdir(parents=True, exist_ok=True)
            self._transports.append(FileTransport(FileConfig(log_file_path=str(path), append=True)))
        if http_url is not None:
            params: dict[str, Any] = {"url": http_url, "endpoint": http_endpoint, "timeout": http_timeout}
            if api_key:
                params["auth"] = {"type": "api_key", "apiKey": api_key}
            try:
                self._transports.append(HttpTransport(HttpConfig.from_dict(params)))
            except ValueError as e:
                raise ConfigError(f"lineage.http_url {http_url!r}: {e}") from e
        if not self._transports:
            raise ConfigError("lineage: give a file path, an HTTP URL, or both")

    def run(
        self,
        job_name: str,
        inputs: list[DatasetRef] | None = None,
        outputs: list[DatasetRef] | None = None,
        facets: dict[str, RunFacet] | None = None,
    ) -> LineageRun:
        """A run of ``job_name``; use as ``with emitter.run(...) as run:``."""
        return LineageRun(self, job_name, list(inputs or []), list(outputs or []), dict(facets or {}))

    def emit(self, event: RunEvent) -> None:
        """Send one event to every transport; raises AuditError when one fails."""
        for transport in self._transports:
            try:
                transport.emit(event)
            except (OSError, RuntimeError, ValueError) as e:  # requests errors are OSError subclasses
                raise AuditError(
                    f"lineage: cannot emit {event.eventType.value if event.eventType else 'event'} "
                    f"for job {event.job.namespace}/{event.job.name} via {transport.kind}: {e}"
                ) from e

    def close(self) -> None:
        """Release transport resources (HTTP sessions)."""
        for transport in self._transports:
            transport.close()

    def __enter__(self) -> LineageEmitter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class LineageRun:
    """One run of a job; its ``run_id`` (UUIDv7) is what manifests record."""

    def __init__(
        self,
        emitter: LineageEmitter,
        job_name: str,
        inputs: list[DatasetRef],
        outputs: list[DatasetRef],
        facets: dict[str, RunFacet],
    ) -> None:
        if not job_name:
            raise ConfigError("lineage: job name must not be empty")
        self.emitter = emitter
        self.job_name = job_name
        self.run_id = str(generate_new_uuid())
        self.inputs = inputs
        self.outputs = outputs
        self.facets = facets
        self.state: RunState | None = None

    def add_input(self, ref: DatasetRef) -> None:
        self.inputs.append(ref)

    def add_output(self, ref: DatasetRef) -> None:
        """Record an output found during the run; it appears on the COMPLETE (or FAIL) event."""
        self.outputs.append(ref)

    def set_facet(self, name: str, facet: RunFacet) -> None:
        """Attach or replace a run facet (e.g. ``"microdb"``) for the events still to come."""
        if not isinstance(facet, RunFacet):
            raise ConfigError(f"lineage: run facet {name!r} must be an OpenLineage RunFacet, got {type(facet).__name__}")
        self.facets[name] = facet

    def _event(self, state: RunState, extra_facets: dict[str, RunFacet] | None = None) -> RunEvent:
        return RunEvent(
            eventType=state,
            eventTime=datetime.now(timezone.utc).isoformat(timespec="microseconds"),
            run=Run(runId=self.run_id, facets={**self.facets, **(extra_facets or {})}),
            job=Job(namespace=self.emitter.namespace, name=self.job_name),
            inputs=[ref.as_input() for ref in self.inputs],
            outputs=[ref.as_output() for ref in self.outputs],
            producer=PRODUCER,
        )

    def _emit(self, state: RunState, extra_facets: dict[str, RunFacet] | None = None) -> None:
        self.emitter.emit(self._event(state, extra_facets))
        self.state = state

    def __enter__(self) -> LineageRun:
        if self.state is not None:
            raise ConfigError(f"lineage: run {self.run_id} of {self.job_name} was already started")
        self._emit(RunState.START)
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> bool:
        if exc is None:
            self._emit(RunState.COMPLETE)
            return False
        state = RunState.FAIL if isinstance(exc, Exception) else RunState.ABORT
        error = error_message_run.ErrorMessageRunFacet(
            message=f"{type(exc).__name__}: {exc}",
            programmingLanguage="PYTHON",
            stackTrace="".join(traceback.format_exception(exc_type, exc, tb)),
            producer=PRODUCER,
        )
        try:
            self._emit(state, {"errorMessage": error})
        except AuditError as lineage_error:
            exc.add_note(f"lineage {state.value} event was not emitted: {lineage_error}")
        return False

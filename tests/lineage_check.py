"""Validation of emitted OpenLineage events with the openlineage client's own classes
(shared by the lineage, synthesis and provisioning tests)."""

from __future__ import annotations

import uuid
from typing import Any

from dateutil import parser as dateparser
from openlineage.client.event_v2 import InputDataset, Job, OutputDataset, Run, RunEvent, RunState
from openlineage.client.facet_v2 import error_message_run, schema_dataset
from openlineage.client.serde import Serde

from lineage.events import PRODUCER, MicrodbRunFacet


def _schema_facet(d: dict[str, Any]) -> schema_dataset.SchemaDatasetFacet:
    return schema_dataset.SchemaDatasetFacet(
        fields=[schema_dataset.SchemaDatasetFacetFields(**f) for f in d["fields"]], producer=d["_producer"]
    )


def rebuild(d: dict[str, Any]) -> RunEvent:
    """Rebuild an emitted event with the client's own classes: their constructors and validators
    reject unknown fields, a non-UUID runId, a date-time without time or an unknown eventType."""
    run_facets: dict[str, Any] = {}
    for name, facet in d["run"].get("facets", {}).items():
        body = {k: v for k, v in facet.items() if not k.startswith("_")}
        cls = {"microdb": MicrodbRunFacet, "errorMessage": error_message_run.ErrorMessageRunFacet}[name]
        run_facets[name] = cls(**body, producer=facet["_producer"])
        assert facet["_schemaURL"] == run_facets[name]._schemaURL
    datasets = {
        key: [
            cls(namespace=ds["namespace"], name=ds["name"],
                facets={"schema": _schema_facet(ds["facets"]["schema"])} if ds.get("facets") else {})
            for ds in d.get(key, [])
        ]
        for key, cls in (("inputs", InputDataset), ("outputs", OutputDataset))
    }
    return RunEvent(
        eventType=RunState(d["eventType"]),
        eventTime=d["eventTime"],
        run=Run(runId=d["run"]["runId"], facets=run_facets),
        job=Job(namespace=d["job"]["namespace"], name=d["job"]["name"], facets=d["job"].get("facets", {})),
        inputs=datasets["inputs"],
        outputs=datasets["outputs"],
        producer=d["producer"],
    )


def assert_valid(d: dict[str, Any]) -> None:
    assert Serde.to_dict(rebuild(d)) == Serde.to_dict(d)
    assert d["schemaURL"].startswith("https://openlineage.io/spec/") and d["schemaURL"].endswith("/RunEvent")
    assert d["producer"] == PRODUCER
    assert dateparser.isoparse(d["eventTime"]).tzinfo is not None
    uuid.UUID(d["run"]["runId"])
    assert d["job"]["namespace"] and d["job"]["name"]
    for ds in d.get("inputs", []) + d.get("outputs", []):
        assert ds["namespace"] and ds["name"]
        if not ds.get("facets"):  # a dataset without known fields (e.g. a model folder)
            continue
        schema = ds["facets"]["schema"]
        assert schema["_schemaURL"].endswith("SchemaDatasetFacet.json#/$defs/SchemaDatasetFacet")
        assert schema["_producer"] == PRODUCER

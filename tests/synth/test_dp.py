"""Entity-level DP-SGD for the neural generator: one entity is one privacy unit."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from opacus import GradSampleModule

from synth.generators import get_generator, load_generator
from synth.integrity import check_integrity
from synth.tree import prepare

from test_generators import bank_data

EPSILON = 1.0
DELTA = 1e-5


@pytest.fixture(scope="module")
def private():
    schema, tables, references = bank_data(300, seed=5)
    gen = get_generator("neural", epochs=4, batch_size=32, lr=1e-2, dp_epsilon=EPSILON, dp_delta=DELTA,
                        max_children=16, max_grad_norm=5.0)
    gen.fit(schema, tables, references, seed=2, constraints=["transactions.ts >= accounts.opened_at"])
    return gen, (schema, tables, references)


def test_epsilon_is_reported_and_within_target(private):
    gen, _ = private
    privacy = gen.privacy
    assert privacy["unit"] == "entity"
    assert 0 < privacy["epsilon"] <= EPSILON * 1.01
    assert privacy["delta"] == DELTA and privacy["max_children"] == 16
    assert privacy["noise_multiplier"] > 0.5


def test_per_sample_gradients_are_per_entity(private):
    gen, _ = private
    steps = gen.dp_steps
    assert len(steps) >= 4 * 5
    assert all(s["grad_sample_rows"] == s["entities"] for s in steps)
    # batches hold many more child rows than entities, yet gradients come one per entity
    assert all(s["child_rows"] > 3 * s["entities"] for s in steps)
    assert len({s["entities"] for s in steps}) > 1  # Poisson sampling: batch sizes vary


def test_grad_sample_batch_dimension_is_the_entity(private):
    """Independently of the training loop: opacus's per-sample gradients of the model,
    fed k entities with far more rows, have k rows."""
    gen, (schema, tables, references) = private
    _, data = prepare(schema, tables, references, learn=True, n_bins=gen.params["n_bins"])
    arrays, sizes = gen._padded(data, np.random.default_rng(0))
    tensors = [torch.from_numpy(a) for a in arrays]
    idx = np.arange(7)
    batch = gen._batch(tensors, sizes, idx)
    model = GradSampleModule(gen.net)
    model.train()
    model(*batch).mean().backward()
    rows = sum(int(batch[i].sum()) for i in range(1, len(batch), 4))
    assert rows > 7 * 5
    shapes = {p.grad_sample.shape[0] for p in model.parameters() if p.grad_sample is not None}
    assert shapes == {7}
    model._close()


def test_private_model_still_learns_and_samples_valid_entities(private, tmp_path):
    gen, (schema, _, references) = private
    assert gen.history[-1] < gen.history[0]
    out = gen.sample(100, seed=3)
    report = check_integrity(schema, out, references)
    assert report.ok and report.ri_percent == 100.0
    loaded = load_generator(str(gen.save(tmp_path / "dp")))
    assert loaded.privacy == gen.privacy

"""``neural``: an autoregressive model over the entity tree (torch), optionally trained
with entity-level DP-SGD (opacus).

Each tree table has a small network that writes a row feature by feature (numbers as
equal-probability quantile bins plus a uniform draw inside the bin, categories as
tokens with embeddings), conditioned on a context vector: the representation of the
parent row. A table's child counts are features of the parent row, so they are
conditioned on it too. Sequence tables (``order_by``) add a GRU state over the earlier
siblings, and store gaps between siblings rather than timestamps.

Training examples are whole entities: the root row and all its descendants, at most
``max_children`` rows per entity and table (the first ones in order; counts are still
learned uncapped), padded into tensors whose first dimension is the entity. The loss
is summed per entity, so under DP-SGD (``dp_epsilon``) each per-sample gradient is one
entity's gradient: **one entity is one privacy unit**. The accountant's ε is stored
in ``privacy``. Not covered by the DP guarantee: the encoders' quantile grids, category
lists and reference-key frequencies, computed from the data without noise.
"""

from __future__ import annotations

import contextlib
import time
from typing import Any

import numpy as np

from microdb.errors import ConfigError
from synth.generators.base import Features, Generator
from synth.transform import CategoricalCodec, NumericCodec
from synth.tree import BoundCondition, TableData, expand

try:
    import torch
    from torch import nn
    from torch.nn import functional as F
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ConfigError("generator 'neural' needs torch: pip install 'microdb[neural]'") from exc


def _opacus():
    """opacus, imported only when DP training is asked for."""
    try:
        import opacus
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ConfigError("generator 'neural' with dp_epsilon needs opacus: pip install 'microdb[neural]'") from exc
    return opacus


# ------------------------------------------------------------------ networks


class GRUCell(nn.Module):
    """A GRU cell of plain linear layers (opacus computes per-sample gradients for them)."""

    def __init__(self, size: int) -> None:
        super().__init__()
        self.x2h = nn.Linear(size, 3 * size)
        self.h2h = nn.Linear(size, 3 * size)

    def forward(self, x: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        xr, xz, xn = self.x2h(x).chunk(3, dim=-1)
        hr, hz, hn = self.h2h(h).chunk(3, dim=-1)
        r = torch.sigmoid(xr + hr)
        z = torch.sigmoid(xz + hz)
        n = torch.tanh(xn + r * hn)
        return (1 - z) * n + z * h


class TableNet(nn.Module):
    """Writes one table's rows feature by feature given a context (and sibling state)."""

    def __init__(self, vocab: list[int], hidden: int, emb: int, sequence: bool, represented: bool,
                 dropout: float = 0.0) -> None:
        super().__init__()
        self.vocab = vocab
        self.drop = nn.Dropout(dropout)
        self.sequence = sequence
        self.represented = represented or sequence
        base = hidden * (2 if sequence else 1)
        # every parameter must shape the loss (opacus needs a per-sample gradient for each):
        # a row nobody reads (a leaf table) has no representation and no last embedding
        embedded = len(vocab) if self.represented else max(len(vocab) - 1, 0)
        self.embeddings = nn.ModuleList([nn.Embedding(v, emb) for v in vocab[:embedded]])
        self.heads = nn.ModuleList([nn.Sequential(nn.Linear(base + j * emb, hidden), nn.ReLU(),
                                                  nn.Linear(hidden, v)) for j, v in enumerate(vocab)])
        self.row = nn.Linear(hidden + len(vocab) * emb, hidden) if self.represented else None
        self.gru = GRUCell(hidden) if sequence else None

    def represent(self, ctx: torch.Tensor, embedded: list[torch.Tensor]) -> torch.Tensor | None:
        """The row's representation: context for its children and input for the next sibling."""
        if self.row is None:
            return None
        return torch.relu(self.row(torch.cat([ctx, *embedded], dim=-1)))


class TreeNet(nn.Module):
    """One ``TableNet`` per tree table; ``forward`` gives each entity's negative log-likelihood.

    Per table the batch holds, for each entity, its rows of that table in (parent, order)
    order: tokens [B, R, C], mask [B, R], the slot of each row's parent among the
    parent table's rows of the same entity [B, R], and whether the row is its parent's
    first child [B, R] (the sibling state restarts there).
    """

    def __init__(self, tables: list[tuple[str, str | None, list[int], bool]], hidden: int, emb: int,
                 dropout: float = 0.0) -> None:
        super().__init__()
        self.order = [(name, parent) for name, parent, _, _ in tables]
        self.hidden = hidden
        parents = {parent for _, parent, _, _ in tables}
        self.nets = nn.ModuleDict({name: TableNet(vocab, hidden, emb, seq, name in parents, dropout)
                                   for name, _, vocab, seq in tables})

    def forward(self, *arrays: torch.Tensor) -> torch.Tensor:
        batch = arrays[0].shape[0]
        loss = torch.zeros(batch, dtype=torch.float32)
        reps: dict[str, torch.Tensor] = {}
        for i, (name, parent) in enumerate(self.order):
            tokens, mask, parent_slot, first = arrays[4 * i: 4 * i + 4]
            net = self.nets[name]
            if parent is None:
                ctx = torch.zeros((*mask.shape, self.hidden))
            else:
                up = reps[parent]
                ctx = torch.gather(up, 1, parent_slot.unsqueeze(-1).expand(-1, -1, up.shape[-1]))
            embedded = [e(tokens[..., j]) for j, e in enumerate(net.embeddings)]
            rep = net.represent(ctx, embedded)
            base = ctx
            if net.sequence:
                h = torch.zeros((batch, self.hidden))
                keep = (~first).to(torch.float32).unsqueeze(-1)
                states = []
                for s in range(mask.shape[1]):
                    h = h * keep[:, s]
                    states.append(h)
                    if s + 1 < mask.shape[1]:
                        h = net.gru(rep[:, s], h)
                base = torch.cat([ctx, torch.stack(states, dim=1)], dim=-1)
            weight = mask.to(torch.float32)
            for j, head in enumerate(net.heads):
                logits = head(net.drop(torch.cat([base, *embedded[:j]], dim=-1)))
                nll = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), tokens[..., j].reshape(-1),
                                      reduction="none").reshape(mask.shape)
                loss = loss + (nll * weight).sum(dim=1)
            reps[name] = rep
        return loss


# ------------------------------------------------------------------ generator


class NeuralGenerator(Generator):
    """Autoregressive entity-tree model; DP-SGD per entity when ``dp_epsilon`` is set."""

    name = "neural"
    defaults: dict[str, Any] = {
        "epochs": 15, "batch_size": 64, "lr": 3e-3, "hidden": 64, "embedding": 16, "n_bins": 32,
        "max_children": 64, "validation": 0.1, "patience": 4, "dropout": 0.0,
        "dp_epsilon": None, "dp_delta": 1e-5, "max_grad_norm": 1.0, "threads": None,
    }
    """``max_children``: rows per entity and table kept for training (the first ones in
    (parent, order) order; counts are learned uncapped) — bounds padding and, under DP,
    what one entity contributes. ``validation``: share of entities held out for early
    stopping (not under DP, which trains on every entity for the accounted epochs)."""

    def __init__(self, **params: Any) -> None:
        super().__init__(**params)
        self.net: TreeNet | None = None
        self.privacy: dict | None = None
        self.history: list[float] = []
        self.val_history: list[float] = []
        self.dp_steps: list[dict] = []
        self.fit_seconds: float | None = None

    # ------------------------------------------------------------------ data to tensors

    def _tables_spec(self) -> list[tuple[str, str | None, list[int], bool]]:
        return [(t.name, t.parent, [f.codec.n_tokens for f in self.plan.tables[t.name].features],
                 bool(t.order_by)) for t in self.schema.tables]

    def _tokens(self, table: str, values: dict[str, np.ndarray], n: int, rng: np.random.Generator) -> np.ndarray:
        feats = self.plan.tables[table].features
        out = np.zeros((n, max(len(feats), 1)), dtype=np.int64)
        for j, f in enumerate(feats):
            x = values[f.name]
            out[:, j] = f.codec.to_tokens(x, rng) if isinstance(f.codec, NumericCodec) else x
        return out[:, : len(feats)]

    def _padded(self, data: dict[str, TableData], rng: np.random.Generator) -> tuple[list[np.ndarray], np.ndarray]:
        """Per table: tokens [N, R, C], mask, parent slot, first-sibling flag (N entities, R
        rows per entity at most ``max_children``); and rows kept per entity and table [T, N]."""
        cap = int(self.params["max_children"])
        n_entities = data[self.schema.root].n
        entity: dict[str, np.ndarray] = {}
        slot: dict[str, np.ndarray] = {}
        keep: dict[str, np.ndarray] = {}
        arrays: list[np.ndarray] = []
        sizes = []
        for t in self.schema.tables:
            td = data[t.name]
            tokens = self._tokens(t.name, td.features, td.n, rng)
            if t.parent is None:
                entity[t.name], slot[t.name], keep[t.name] = np.arange(td.n), np.zeros(td.n, dtype=np.int64), \
                    np.ones(td.n, dtype=bool)
                parent_slot, first, width = np.zeros(td.n, dtype=np.int64), np.ones(td.n, dtype=bool), 1
            else:
                owner = entity[t.parent][td.parent]
                starts = np.searchsorted(owner, np.arange(n_entities), side="left")
                position = np.arange(td.n) - starts[owner]
                per_entity = np.bincount(owner, minlength=n_entities)
                width = max(2 if t.order_by else 1, min(cap, int(per_entity.max()) if td.n else 1))
                entity[t.name], slot[t.name] = owner, position
                keep[t.name] = keep[t.parent][td.parent] & (position < width)
                parent_slot = slot[t.parent][td.parent]
                sibling_start = np.searchsorted(td.parent, td.parent, side="left")
                first = np.arange(td.n) == sibling_start
            k = keep[t.name]
            index = (entity[t.name][k], slot[t.name][k])
            padded = np.zeros((n_entities, width, tokens.shape[1]), dtype=np.int64)
            mask = np.zeros((n_entities, width), dtype=bool)
            parents = np.zeros((n_entities, width), dtype=np.int64)
            firsts = np.ones((n_entities, width), dtype=bool)
            padded[index], mask[index], parents[index], firsts[index] = tokens[k], True, parent_slot[k], first[k]
            arrays += [padded, mask, parents, firsts]
            sizes.append(mask.sum(axis=1))
        return arrays, np.stack(sizes)

    def _batch(self, tensors: list[torch.Tensor], sizes: np.ndarray, idx: np.ndarray) -> list[torch.Tensor]:
        """The entities ``idx``, each table trimmed to the widest entity of the batch (at least
        two slots for sequences, so that the sibling state always shapes the loss)."""
        out = []
        pick = torch.from_numpy(idx)
        for i, t in enumerate(self.schema.tables):
            least = 2 if t.order_by else 1
            width = max(least, int(sizes[i, idx].max()) if len(idx) else least)
            out += [t[pick, :width] for t in tensors[4 * i: 4 * i + 4]]
        return out

    # ------------------------------------------------------------------ fit

    @contextlib.contextmanager
    def _torch_state(self, seed: int):
        threads = self.params.get("threads")
        previous = torch.get_num_threads()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            if threads:
                torch.set_num_threads(int(threads))
            try:
                yield
            finally:
                torch.set_num_threads(previous)

    def _fit(self, data: dict[str, TableData], seed: int) -> None:
        started = time.perf_counter()
        rng = np.random.default_rng([seed, 41])
        arrays, sizes = self._padded(data, rng)
        with self._torch_state(seed):
            net = TreeNet(self._tables_spec(), int(self.params["hidden"]), int(self.params["embedding"]),
                          float(self.params["dropout"]))
            tensors = [torch.from_numpy(a) for a in arrays]
            if self.params["dp_epsilon"] is not None:
                self._train_private(net, tensors, sizes, seed)
            else:
                self._train(net, tensors, sizes, rng)
        net.eval()
        self.net = net
        self.fit_seconds = time.perf_counter() - started

    def _train(self, net: TreeNet, tensors: list[torch.Tensor], sizes: np.ndarray, rng: np.random.Generator) -> None:
        """Adam over batches of entities of similar size (little padding), batches shuffled.

        A share ``validation`` of the entities is held out; training stops when their loss
        has not improved for ``patience`` epochs and keeps the best weights (the model
        learns the population, not the training entities)."""
        optimizer = torch.optim.Adam(net.parameters(), lr=float(self.params["lr"]))
        batch = int(self.params["batch_size"])
        epochs = int(self.params["epochs"])
        schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(epochs, 1))
        n_entities = sizes.shape[1]
        shuffled = rng.permutation(n_entities)
        n_val = int(round(float(self.params["validation"]) * n_entities)) if n_entities >= 20 else 0
        val, train = np.sort(shuffled[:n_val]), shuffled[n_val:]
        bucket = np.floor(np.log2(sizes[:, train].sum(axis=0) + 1) * 2)
        self.history, self.val_history = [], []
        best, best_state, waited = np.inf, None, 0
        for _ in range(epochs):
            net.train()
            order = train[np.lexsort((rng.random(len(train)), bucket))]
            batches = [order[i:i + batch] for i in range(0, len(order), batch)]
            total = 0.0
            for b in rng.permutation(len(batches)):
                idx = batches[b]
                loss = net(*self._batch(tensors, sizes, idx)).mean()
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                total += float(loss.detach()) * len(idx)
            schedule.step()
            self.history.append(total / max(len(train), 1))
            if n_val == 0:
                continue
            net.eval()
            with torch.no_grad():
                val_loss = sum(float(net(*self._batch(tensors, sizes, val[i:i + 256])).sum())
                               for i in range(0, n_val, 256)) / n_val
            self.val_history.append(val_loss)
            if val_loss < best - 1e-6:
                best, waited = val_loss, 0
                best_state = {k: v.detach().clone() for k, v in net.state_dict().items()}
            else:
                waited += 1
                if waited >= int(self.params["patience"]):
                    break
        if best_state is not None:
            net.load_state_dict(best_state)

    def _train_private(self, net: TreeNet, tensors: list[torch.Tensor], sizes: np.ndarray, seed: int) -> None:
        """DP-SGD where each training example, hence each per-sample gradient, is one entity."""
        opacus = _opacus()
        from torch.utils.data import DataLoader, TensorDataset

        n_entities = sizes.shape[1]
        epochs = int(self.params["epochs"])
        delta = float(self.params["dp_delta"])
        loader = DataLoader(TensorDataset(torch.arange(n_entities)), batch_size=int(self.params["batch_size"]),
                            generator=torch.Generator().manual_seed(seed))
        optimizer = torch.optim.Adam(net.parameters(), lr=float(self.params["lr"]))
        engine = opacus.PrivacyEngine(accountant="rdp")
        private, optimizer, loader = engine.make_private_with_epsilon(
            module=net, optimizer=optimizer, data_loader=loader, target_epsilon=float(self.params["dp_epsilon"]),
            target_delta=delta, epochs=epochs, max_grad_norm=float(self.params["max_grad_norm"]))
        probe = next(p for p in private.parameters() if p.requires_grad)
        self.history, self.dp_steps = [], []
        for _ in range(epochs):
            total, seen = 0.0, 0
            for (idx,) in loader:
                if len(idx) == 0:
                    continue
                batch = self._batch(tensors, sizes, idx.numpy())
                loss = private(*batch).mean()
                optimizer.zero_grad()
                loss.backward()
                rows = int(sum(int(batch[i].sum()) for i in range(5, len(batch), 4)))
                unit = int(probe.grad_sample.shape[0])
                if unit != len(idx):
                    raise ConfigError(f"neural DP: per-sample gradients cover {unit} examples for a batch of "
                                      f"{len(idx)} entities; the privacy unit would not be the entity")
                self.dp_steps.append({"entities": len(idx), "grad_sample_rows": unit, "child_rows": rows})
                optimizer.step()
                total += float(loss.detach()) * len(idx)
                seen += len(idx)
            self.history.append(total / max(seen, 1))
        private._close()
        self.privacy = {"epsilon": float(engine.get_epsilon(delta)), "delta": delta,
                        "max_children": int(self.params["max_children"]), "unit": "entity",
                        "target_epsilon": float(self.params["dp_epsilon"]), "accountant": "rdp",
                        "noise_multiplier": float(optimizer.noise_multiplier),
                        "max_grad_norm": float(self.params["max_grad_norm"]), "epochs": epochs}

    # ------------------------------------------------------------------ sample

    def _draw(self, net: TableNet, base: torch.Tensor, ctx: torch.Tensor, rows: np.ndarray,
              forced: list[tuple[int, np.ndarray, int]], rng: np.random.Generator) -> tuple[np.ndarray, torch.Tensor]:
        """Sample the tokens of ``rows`` (global row ids, for conditions) feature by feature."""
        m = len(rows)
        tokens = np.zeros((m, len(net.heads)), dtype=np.int64)
        embedded: list[torch.Tensor] = []
        for j, head in enumerate(net.heads):
            logits = head(torch.cat([base, *embedded], dim=-1)).double()
            probs = torch.softmax(logits, dim=-1).numpy()
            for col, mask, target in forced:
                if col == j:
                    hit = mask[rows]
                    probs[~hit, target] = 0.0
                    probs[hit] = 0.0
                    probs[hit, target] = 1.0
            cum = np.cumsum(probs, axis=1)
            cum /= np.where(cum[:, -1:] > 0, cum[:, -1:], 1.0)
            tok = np.minimum((cum < rng.random(m)[:, None]).sum(axis=1), probs.shape[1] - 1)
            tokens[:, j] = tok
            if j < len(net.embeddings):
                embedded.append(net.embeddings[j](torch.from_numpy(tok)))
        rep = net.represent(ctx, embedded)
        return tokens, rep if rep is not None else torch.zeros((m, ctx.shape[-1]))

    def _sample_features(self, n_entities: int, seed: int, conditions: list[BoundCondition]) -> Features:
        schema, plan = self._fitted()
        rng = np.random.default_rng([seed, 43])
        out: Features = {}
        reps: dict[str, torch.Tensor] = {}
        hidden = int(self.params["hidden"])
        with torch.no_grad(), self._torch_state(seed):
            for t in schema.tables:
                net = self.net.nets[t.name]
                tp = plan.tables[t.name]
                if t.parent is None:
                    parent, counts = None, None
                    n = n_entities
                    ctx = torch.zeros((n, hidden))
                else:
                    counts = np.clip(np.nan_to_num(out[t.parent][1][f"#count:{t.name}"]), 0, None).astype(np.int64)
                    parent = expand(counts)
                    n = len(parent)
                    ctx = reps[t.parent][torch.from_numpy(parent)]
                forced = []
                for cond in conditions:
                    if cond.table == t.name:
                        j = [f.name for f in tp.features].index(cond.feature)
                        codec = tp.features[j].codec
                        target = (int(cond.target) if isinstance(codec, CategoricalCodec)
                                  else codec.token_of(cond.target))
                        forced.append((j, cond.mask(n, seed), target))
                tokens = np.zeros((n, len(tp.features)), dtype=np.int64)
                rep = torch.zeros((n, hidden))
                if not net.sequence or n == 0:
                    for start in range(0, n, 65536):
                        rows = np.arange(start, min(n, start + 65536))
                        tokens[rows], rep[rows] = self._draw(net, ctx[rows], ctx[rows], rows, forced, rng)
                else:
                    # row by row up to the horizon seen in training, then the rest at once
                    # from the state reached there (the sibling memory is max_children long)
                    starts = np.cumsum(counts) - counts
                    h = torch.zeros((len(counts), hidden))
                    horizon = min(int(counts.max()), int(self.params["max_children"]))
                    for s in range(horizon):
                        active = np.flatnonzero(counts > s)
                        rows = starts[active] + s
                        act = torch.from_numpy(active)
                        base = torch.cat([ctx[rows], h[act]], dim=-1)
                        tokens[rows], rep[rows] = self._draw(net, base, ctx[rows], rows, forced, rng)
                        h[act] = net.gru(rep[rows], h[act])
                    rest = np.flatnonzero(np.arange(n) - starts[parent] >= horizon)
                    for start in range(0, len(rest), 65536):
                        rows = rest[start:start + 65536]
                        base = torch.cat([ctx[rows], h[torch.from_numpy(parent[rows])]], dim=-1)
                        tokens[rows], rep[rows] = self._draw(net, base, ctx[rows], rows, forced, rng)
                values = {}
                for j, f in enumerate(tp.features):
                    if isinstance(f.codec, NumericCodec):
                        values[f.name] = f.codec.from_tokens(tokens[:, j], rng)
                    else:
                        values[f.name] = tokens[:, j]
                for name in [f.name for f in tp.features if f.role == "count"]:
                    values[name] = np.nan_to_num(values[name], nan=0.0)
                self.settle(t.name, values, conditions, seed, rng)
                reps[t.name] = rep
                out[t.name] = (parent, values)
        return out

    # ------------------------------------------------------------------ persistence

    def _model_state(self) -> tuple[dict, dict[str, np.ndarray]]:
        state = {k: v.detach().cpu().numpy() for k, v in self.net.state_dict().items()}
        meta = {"privacy": self.privacy, "history": self.history, "fit_seconds": self.fit_seconds}
        return meta, {f"net/{k}": v for k, v in state.items()}

    def _restore(self, meta: dict, arrays: dict[str, np.ndarray]) -> None:
        self.privacy = meta.get("privacy")
        self.history = list(meta.get("history", []))
        self.fit_seconds = meta.get("fit_seconds")
        self.net = TreeNet(self._tables_spec(), int(self.params["hidden"]), int(self.params["embedding"]),
                          float(self.params["dropout"]))
        state = {k.split("/", 1)[1]: torch.from_numpy(np.array(v)) for k, v in arrays.items() if k.startswith("net/")}
        self.net.load_state_dict(state, strict=True)
        self.net.eval()

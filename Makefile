# microdb — the two commands a new user runs: `make demo` and `make test`.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
DEMO   := demo-workspace
MDB    := $(BIN)/microdb

.PHONY: install demo test bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

# torch first, from the local CPU wheel: a plain `torch` would pull a multi-GB CUDA build.
$(STAMP): pyproject.toml | $(BIN)/python
	@missing=""; command -v chromium >/dev/null || missing="chromium"; command -v psql >/dev/null || missing="$$missing postgresql-client"; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then apt-get update -qq && apt-get install -y -qq $$missing; \
	  else echo "note: the browser and wire tests need:$$missing — install with: sudo apt-get install -y$$missing"; fi; \
	fi
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[all,dev]'
	touch $(STAMP)

install: $(STAMP)

demo: install
	@echo "==> microdb init $(DEMO) --demo   (bank fixture: CRM + core banking in SQLite, payments in Parquet)"
	@rm -rf $(DEMO)
	@$(MDB) init $(DEMO) --demo
	@echo; echo "==> microdb sync customer --all   (one bulk read per table, sealed per customer)"
	@$(MDB) -w $(DEMO) sync customer --all
	@echo; echo "==> microdb get customer/42   (the customer's micro-database: every table, every source)"
	@$(MDB) -w $(DEMO) get customer/42 --limit 5
	@echo; echo "==> microdb query customer/42 'spend per channel'"
	@$(MDB) -w $(DEMO) query customer/42 "SELECT t.channel, count(*) AS n, sum(t.amount) AS total FROM transactions t GROUP BY ALL ORDER BY total DESC"
	@echo; echo "==> microdb query customer/42 'largest payments with merchant names (a reference table)'"
	@$(MDB) -w $(DEMO) query customer/42 "SELECT t.ts, t.amount, m.name AS merchant, a.iban FROM transactions t JOIN accounts a USING (account_id) LEFT JOIN merchants m USING (merchant_id) ORDER BY t.amount DESC LIMIT 5"
	@echo; echo "==> microdb synth fit customer --generator copula   (learns from the analyst's masked view; PII never learned)"
	@$(MDB) -w $(DEMO) synth fit customer --generator copula --seed 1 -o $(DEMO)/models/copula
	@echo; echo "==> microdb synth sample ... --condition transactions.is_fraud=1 --share 0.3   (fraud over-represented; evaluated against the charter)"
	@$(MDB) -w $(DEMO) synth sample $(DEMO)/models/copula --entities 500 --seed 1 --condition "transactions.is_fraud=1" --share 0.3 -o $(DEMO)/bundles/fraud
	@echo; echo "==> microdb query bundle:.../2 'a synthetic customer, queried like a real one'"
	@$(MDB) -w $(DEMO) query bundle:$(DEMO)/bundles/fraud/2 "SELECT a.account_id, a.product, count(t.transaction_id) AS tx, sum(t.is_fraud::int) AS fraud, min(t.ts) AS first_tx, max(t.ts) AS last_tx FROM accounts a LEFT JOIN transactions t USING (account_id) GROUP BY ALL ORDER BY a.account_id"
	@echo; echo "==> microdb audit verify   (every step above left a chained, signed audit record)"
	@$(MDB) -w $(DEMO) audit verify
	@echo; echo "demo workspace left in ./$(DEMO) — try: $(MDB) -w $(DEMO) --help"

test: install
	$(BIN)/python -m pytest -q -p no:cacheprovider

# the bench extra (SDV, SDMetrics, mostlyai-engine) pulls torchvision/torchaudio, which do not
# import with torch 2.13: keep torch pinned and remove them.
bench: install
	$(BIN)/pip install -q -e '.[bench]' torch==2.13.0
	$(BIN)/pip uninstall -y -q torchvision torchaudio
	$(BIN)/python -m bench

clean:
	rm -rf $(VENV) $(DEMO) .pytest_cache

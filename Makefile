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
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[all,dev]'
	touch $(STAMP)

install: $(STAMP)

demo: install
	@echo "==> microdb init $(DEMO) --demo   (bank fixture: CRM + core banking in SQLite, payments in Parquet)"
	@$(MDB) init $(DEMO) --demo --force
	@echo; echo "==> microdb sync customer --all   (one bulk read per table, sealed per customer)"
	@$(MDB) -w $(DEMO) sync customer --all
	@echo; echo "==> microdb get customer/42   (the customer's micro-database: every table, every source)"
	@$(MDB) -w $(DEMO) get customer/42 --limit 5
	@echo; echo "==> microdb query customer/42 'spend per channel'"
	@$(MDB) -w $(DEMO) query customer/42 "SELECT t.channel, count(*) AS n, sum(t.amount) AS total FROM transactions t GROUP BY ALL ORDER BY total DESC"
	@echo; echo "==> microdb query customer/42 'largest payments with merchant names (a reference table)'"
	@$(MDB) -w $(DEMO) query customer/42 "SELECT t.ts, t.amount, m.name AS merchant, a.iban FROM transactions t JOIN accounts a USING (account_id) LEFT JOIN merchants m USING (merchant_id) ORDER BY t.amount DESC LIMIT 5"
	@echo; echo "demo workspace left in ./$(DEMO) — try: $(MDB) -w $(DEMO) --help"

test: install
	$(BIN)/python -m pytest -q -p no:cacheprovider

bench: install
	$(BIN)/python -m bench

clean:
	rm -rf $(VENV) $(DEMO) .pytest_cache

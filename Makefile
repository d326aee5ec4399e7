# The index of what a developer can do. Every target creates the venv it needs.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
BASE   := $(VENV)/.installed-base
GATE   := $(VENV)/.chatgate
DEMO   := fixtures/generated

.PHONY: venv test lint demo bench bench-quick torture fuzz-c clean

venv: $(STAMP) $(GATE)

# The base package alone: what `make demo` needs (and what a user installs). Byte-compiled
# here, so the first command after install starts as fast as the second.
$(BASE): pyproject.toml setup.py constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e . -c constraints.txt
	$(BIN)/python -m compileall -q shardkit
	touch $(BASE) $(GATE)

# The C record gate, rebuilt in place when its source changes. Never a stale one: the old
# build goes first, so a failed build leaves validate on its Python checks, not old code.
$(GATE): shardkit/records/chatgate.c | $(BASE)
	rm -f shardkit/records/chatgate.*.so
	@mkdir -p build
	$(BIN)/python -m pip install --quiet --no-deps -e . -c constraints.txt 2> build/chatgate.log
	@$(BIN)/python -c "import shardkit.records.chatgate" 2>/dev/null || \
		echo "note: the C record gate did not build (build/chatgate.log); validate runs its checks in Python, about twice as slow"
	touch $(GATE)

# Plus what the tests and benchmarks use: the dev tools, S3 (fsspec, s3fs, moto) and Ray.
$(STAMP): $(BASE)
	$(BIN)/python -m pip install --quiet -e '.[dev,s3,ray]' -c constraints.txt
	$(BIN)/python -m compileall -q shardkit
	touch $(STAMP)

test: venv
	$(BIN)/python -m pytest

lint: venv
	$(BIN)/ruff check shardkit tests bench fixtures

demo: $(BASE) $(GATE)
	@mkdir -p $(DEMO)
	@test -f $(DEMO)/chat-100k.jsonl || $(BIN)/python fixtures/generate.py --records 100000 --seed 1 -o $(DEMO)/chat-100k.jsonl
	@rm -rf $(DEMO)/shards
	$(BIN)/shardkit split $(DEMO)/chat-100k.jsonl -o $(DEMO)/shards --max-records 50000
	$(BIN)/shardkit verify $(DEMO)/shards/manifest.json
	cd $(DEMO)/shards && sha256sum -c SHA256SUMS

bench: venv
	$(BIN)/python bench/split.py
	$(BIN)/python bench/validate.py
	$(BIN)/python bench/queue_ops.py
	$(BIN)/python bench/parquet.py
	$(BIN)/python bench/shuffle.py
	$(BIN)/python bench/scaleout.py
	$(BIN)/python bench/template.py
	$(BIN)/python bench/neardup.py
	$(BIN)/python bench/tokenized.py
	$(BIN)/python bench/startup.py

bench-quick: venv
	$(BIN)/python bench/split.py --quick --runs 1
	$(BIN)/python bench/validate.py --quick --runs 1
	$(BIN)/python bench/queue_ops.py --quick --runs 1
	$(BIN)/python bench/parquet.py --quick --runs 1
	$(BIN)/python bench/shuffle.py --quick --runs 1
	$(BIN)/python bench/scaleout.py --quick --runs 1
	$(BIN)/python bench/template.py --quick --runs 1
	$(BIN)/python bench/neardup.py --quick --runs 1
	$(BIN)/python bench/tokenized.py --quick --runs 1
	$(BIN)/python bench/startup.py --quick

# The reliability suite with 500 crash trials per command, 30 s races, 3000 fuzz examples
# (about an hour on 2 cores); summary table printed at the end, for docs/RELIABILITY.md.
torture: venv
	@mkdir -p build && rm -f build/torture-report.jsonl
	SHARDKIT_TRIALS=500 SHARDKIT_RACE_SECONDS=30 SHARDKIT_FUZZ_EXAMPLES=3000 \
	SHARDKIT_TORTURE_REPORT=build/torture-report.jsonl \
	$(BIN)/python -m pytest tests/reliability -q -p no:cacheprovider; status=$$?; \
	$(BIN)/python tests/reliability/torture.py build/torture-report.jsonl; exit $$status

# The C record gate under AddressSanitizer + UBSan, fed the hostile corpus (about 40 s).
ASAN_SO := build/asan/chatgate$(shell $(PYTHON) -c "import sysconfig; print(sysconfig.get_config_var('EXT_SUFFIX'))")
fuzz-c: venv
	@mkdir -p build/asan
	$(CC) -shared -fPIC -g -O1 -fno-omit-frame-pointer -fsanitize=address,undefined -fno-sanitize-recover=undefined \
		$$($(BIN)/python -c "import sysconfig; print('-I' + sysconfig.get_paths()['include'])") \
		shardkit/records/chatgate.c -o $(ASAN_SO)
	PYTHONMALLOC=malloc ASAN_OPTIONS=detect_leaks=0 LD_PRELOAD=$$($(CC) -print-file-name=libasan.so) \
		$(BIN)/python tests/fuzz/chatgate_asan.py $(ASAN_SO) 1 20

clean:
	rm -rf $(VENV) $(DEMO) bench/data .pytest_cache .ruff_cache build *.egg-info
	find . -name __pycache__ -type d -prune -exec rm -rf {} +

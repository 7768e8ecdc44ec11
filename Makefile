# `make run` and `make test` each do the whole set-up on a fresh machine.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# Debian packages the tests and benchmarks talk to: Postfix (smtp-source, smtp-sink, postmap, a TLS
# peer; postfix-pcre for pcre: tables), swaks, Dovecot's LMTP server, and Redis (redis: tables).
DEBIAN_PACKAGES := postfix postfix-pcre swaks dovecot-lmtpd redis-server postgrey
PYTEST_ARGS ?=

.PHONY: run test bench bench-relay bench-micro bench-tables build sysdeps sanitize clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q "cython>=3.0" setuptools wheel

# A fresh non-editable install: tests import the installed package, as users do.
build: $(BIN)/python
	$(BIN)/pip install -q --no-build-isolation ".[test]"

sysdeps:
	@./.ci/install-debian-packages $(DEBIAN_PACKAGES)

run: build
	$(BIN)/pyfastmta start --foreground

test: build sysdeps
	$(BIN)/pytest -q $(PYTEST_ARGS)

bench: build sysdeps
	$(BIN)/python bench/accept_race.py

# smtp-source -> server -> smtp-sink, pyfastmta against Postfix: the matrix, then the headline run.
bench-relay: build sysdeps
	$(BIN)/python bench/relay_race.py
	$(BIN)/python bench/relay_race.py --headline
	$(BIN)/python bench/relay_race.py --headline --tables 0,100000 --rounds 3

# Each ext parser against a plain-Python version of it.
bench-micro: build
	$(BIN)/pytest -q -p no:cacheprovider --benchmark-enable --benchmark-columns=min,median,ops bench/test_micro_ext.py

# Lookup tables: lookups/s against a dict and texthash, then compile/open/lookup at 1M and 10M entries.
bench-tables: build
	$(BIN)/pytest -q -p no:cacheprovider --benchmark-enable --benchmark-columns=min,median,ops bench/test_tables.py
	$(BIN)/python bench/tables_scale.py --entries 1000000 10000000

# ext/ built with AddressSanitizer and UBSan, then the parser tests and a bounded fuzz pass.
sanitize: $(BIN)/python
	PYFASTMTA_SANITIZE=1 $(BIN)/pip install -q --no-build-isolation --force-reinstall --no-deps .
	$(BIN)/pip install -q atheris
	LD_PRELOAD="$$(gcc -print-file-name=libasan.so)" ASAN_OPTIONS=detect_leaks=0 \
		$(BIN)/pytest -q -p no:cacheprovider tests/unit/test_smtpproto.py tests/unit/test_headers.py tests/unit/test_queue_partition.py
	LD_PRELOAD="$$(gcc -print-file-name=libasan.so)" ASAN_OPTIONS=detect_leaks=0 \
		$(BIN)/python tests/fuzz/fuzz_ext.py -max_total_time=60

clean:
	rm -rf build $(VENV) *.egg-info pyfastmta/_ext/*.so pyfastmta/_ext/*.c ext/*.c

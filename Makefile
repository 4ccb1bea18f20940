# One command each: `make demo` runs the demo call, `make test` runs the tests.
# Both set up everything first (scripts/setup.sh is idempotent).
.PHONY: setup demo test test-fast

setup:
	@scripts/setup.sh

demo: setup
	.venv/bin/voicecore demo

test: setup
	.venv/bin/lint-imports
	.venv/bin/python -m pytest -q

test-fast: setup
	.venv/bin/lint-imports
	.venv/bin/python -m pytest -q -m "not models"

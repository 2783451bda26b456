# make demo   : create .venv when missing, build the CPU extension (no CUDA), train + evaluate baseline vs SGC
#               on the biased synthetic set (about 11 CPU minutes); SEEDS=5 for the 5-seed table,
#               METHODS="baseline sgc masked-ce" for the ablation row, DEVICE=cuda on a GPU
# make test   : create .venv when missing, install the pinned environment, build the extension, run the tests
# make bench  : CPU benchmark of the ops (appends to benchmarks/results/ops.csv)
# make lint   : ruff
PY ?= python3
VENV := .venv
VPY := $(VENV)/bin/python
CUDA_HOME ?= $(shell $(PY) tools/find_cuda_home.py)
TORCH_CUDA_ARCH_LIST ?= 9.0
# Compile the CUDA kernels whenever a toolkit is found, GPU or not, so that a CUDA compile error fails CI.
FORCE_CUDA ?= $(if $(CUDA_HOME),1,0)
export CUDA_HOME TORCH_CUDA_ARCH_LIST FORCE_CUDA

SEEDS ?= 1
DEVICE ?= auto
METHODS ?= baseline sgc
DEMO_OUT ?= runs/demo

.PHONY: test venv build bench lint clean demo

$(VENV)/.installed: requirements-dev.txt
	test -x $(VPY) || $(PY) -m venv $(VENV)
	$(VPY) -m pip install -q --upgrade pip
	$(VPY) -m pip install -q -r requirements-dev.txt
	# cv2.saliency lives only in the contrib wheel, which shares the cv2 module with the plain wheel that
	# grad-cam pulls in: install it last, at the same version.
	$(VPY) -m pip install -q opencv-contrib-python-headless==5.0.0.93
	touch $@

venv: $(VENV)/.installed

build: venv
	$(VPY) -m pip install -q -e . --no-build-isolation

test: build
	$(VPY) -m pytest -q tests

# The demo on the CPU needs only the CPU kernels: build without CUDA unless an extension is already there
# (DEVICE=cuda builds the CUDA kernels too). It records its tables in docs/demo_results_seeds$(SEEDS).md.
demo: venv
	$(VPY) -c "import sgc_fast._C" 2>/dev/null || FORCE_CUDA=$(if $(filter cuda%,$(DEVICE)),1,0) \
		$(VPY) -m pip install -q -e . --no-build-isolation
	$(VPY) -m sgc_fast.demo --seeds $(SEEDS) --device $(DEVICE) --methods $(METHODS) --out $(DEMO_OUT) \
		--record docs/demo_results_seeds$(SEEDS).md

bench: build
	$(VPY) benchmarks/bench_ops.py

lint: venv
	$(VENV)/bin/ruff check sgc_fast tests benchmarks

clean:
	rm -rf build *.egg-info sgc_fast/*.so

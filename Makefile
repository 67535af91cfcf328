# lap — see README.md. `make run` starts the platform, `make test` tests it.
SHELL := /bin/bash
GO    ?= go
BIN   := $(CURDIR)/bin
# Test timeout for the whole suite; CI gives us 90 minutes in all.
TEST_TIMEOUT ?= 45m

# --- Knative: the test kube-apiserver -------------------------------------
# A real kube-apiserver with embedded etcd, from e2e/kubeapi (its own module:
# it needs k8s.io/* v0.34, lap's Knative libraries v0.29). The knative tests
# exec it through e2e/kubeapitest. Make rebuilds it only when its sources
# change; the first build takes minutes, later ones come from Go's cache.
KUBEAPI         := $(BIN)/lap-kubeapi
KUBEAPI_VERSION := v1.34.4
KUBEAPI_LDFLAGS := -X k8s.io/component-base/version.gitVersion=$(KUBEAPI_VERSION) \
	-X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=34
KUBEAPI_SRC     := $(wildcard e2e/kubeapi/*.go) e2e/kubeapi/go.mod e2e/kubeapi/go.sum

.PHONY: all build run test test-short test-unit bench lint clean kubeapi kind-up kind-deploy e2e-kind kind-lint box box-up box-down

all: build

## build: compile lapd, lap and lap-harness into bin/
build:
	$(GO) build -o $(BIN)/ ./cmd/...

## run: start lapd on its embedded defaults (local sandboxes, bbolt in ./.lap-data)
run: build
	$(BIN)/lapd init
	$(BIN)/lapd

## test: every test that runs on one machine without a network
# Knative in a box's end-to-end packages run verbosely, so the log shows
# the box's start-up and each step's duration; they run even when other
# packages fail, and make fails at the end if either run failed.
BOX_E2E := lap.dev/lap/e2e/box lap.dev/lap/e2e/lapdbox
test: build box
	rc=0; \
	LAP_KUBEAPI_BIN=$(KUBEAPI) $(GO) test -count=1 -timeout $(TEST_TIMEOUT) $$($(GO) list ./... | grep -vxF $(addprefix -e ,$(BOX_E2E))) || rc=$$?; \
	$(GO) test -count=1 -v -timeout $(TEST_TIMEOUT) $(BOX_E2E) || rc=$$?; \
	$(MAKE) --no-print-directory fuzz || rc=$$?; \
	exit $$rc

## test-short: the quick tier for the edit loop — go test -short ./...
# Every package's own tests; the tests that start the built binaries with
# harness processes (e2e/platform's users), the Node.js harnesses' tests
# and Knative in a box skip themselves in -short mode, saying so. No root needed; under two minutes
# once bin/ and bin/lap-kubeapi are built. `make test` stays the whole
# suite.
test-short: build $(KUBEAPI)
	LAP_KUBEAPI_BIN=$(KUBEAPI) $(GO) test -short -count=1 ./...

## bench: run every benchmark and print lap's figures as one table (e2e/benchtable)
BENCH_COUNT ?= 3
bench: build box
	LAP_KUBEAPI_BIN=$(KUBEAPI) $(GO) run ./e2e/benchtable -count $(BENCH_COUNT)

## kubeapi: build bin/lap-kubeapi (kube-apiserver + etcd for tests)
kubeapi: $(KUBEAPI)
$(KUBEAPI): $(KUBEAPI_SRC)
	cd e2e/kubeapi && $(GO) build -ldflags '$(KUBEAPI_LDFLAGS)' -o $(KUBEAPI) .

# --- Knative in a box: Knative Serving's real control plane as processes ---
# (e2e/box; root and iproute2). kube-controller-manager comes from the
# apiserver's module (same pins, same build cache); Knative Serving
# v0.42.2's commands, unmodified, from e2e/knserving. Their sources are
# pinned by go.mod/go.sum, so they are rebuilt only when those change.
KCM          := $(BIN)/lap-kube-controller-manager
KNATIVE_CMDS := controller webhook autoscaler activator queue
KNATIVE_BINS := $(addprefix $(BIN)/knative/,$(KNATIVE_CMDS))
LAP_BOX      := $(BIN)/lap-box
BOX_DIR      ?= $(CURDIR)/.box

## box: build everything Knative in a box runs
box: build $(KUBEAPI) $(KCM) $(KNATIVE_BINS) $(LAP_BOX)

$(KCM): e2e/kubeapi/go.mod e2e/kubeapi/go.sum
	cd e2e/kubeapi && $(GO) build -ldflags '$(KUBEAPI_LDFLAGS)' -o $(KCM) k8s.io/kubernetes/cmd/kube-controller-manager

$(KNATIVE_BINS) &: e2e/knserving/go.mod e2e/knserving/go.sum
	mkdir -p $(BIN)/knative
	cd e2e/knserving && $(GO) build -o $(BIN)/knative/ $(addprefix knative.dev/serving/cmd/,$(KNATIVE_CMDS))

$(LAP_BOX): FORCE
	$(GO) build -o $(LAP_BOX) ./e2e/box/cmd/lap-box

## box-up: start Knative in a box in the background (state in .box/), print how to reach it
box-up: box
	$(LAP_BOX) up --dir $(BOX_DIR)

## box-down: stop it and remove every namespace, veth, address and process it left
box-down:
	@if [ -x $(LAP_BOX) ]; then $(LAP_BOX) down --dir $(BOX_DIR); else $(GO) run ./e2e/box/cmd/lap-box down --dir $(BOX_DIR); fi

.PHONY: FORCE
FORCE:

# --- Knative: quickstart on kind (needs docker, kind, kubectl, ko, kn and
# the internet; see the README's "lap on Knative") -------------------------
## kind-up: kind cluster with Knative Serving 1.15, Kourier and sslip.io
kind-up:
	e2e/kind/up.sh

## kind-deploy: build and load lap's images, patch Knative, apply config/deploy
kind-deploy:
	e2e/kind/deploy.sh

## e2e-kind: agent, session and message through the cluster; idle to zero and back
e2e-kind:
	e2e/kind/e2e.sh

## kind-lint: shellcheck and bash -n the kind scripts (runs anywhere)
kind-lint:
	shellcheck -x e2e/kind/*.sh
	for f in e2e/kind/*.sh; do bash -n $$f; done

## lint: formatting and vet
lint:
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...

clean:
	rm -rf $(BIN)

## ---- Node.js harnesses (sandboxes/claude-agent-sdk, sandboxes/opencode) ----
# Built from their lockfiles with npm ci; a stamp in node_modules skips the
# install until the lockfile changes.
NPM  ?= npm
NODE ?= node
SDK_DIR := sandboxes/claude-agent-sdk
OPENCODE_DIR := sandboxes/opencode

.PHONY: build-claude-agent-sdk build-opencode test-claude-agent-sdk
build: build-claude-agent-sdk build-opencode
test: test-claude-agent-sdk

## build-claude-agent-sdk: npm ci + tsc, and bin/lap-harness-claude-agent-sdk
build-claude-agent-sdk: $(BIN)/lap-harness-claude-agent-sdk $(SDK_DIR)/dist/server.js

$(SDK_DIR)/node_modules/.lap-stamp: $(SDK_DIR)/package.json $(SDK_DIR)/package-lock.json
	cd $(SDK_DIR) && $(NPM) ci --no-audit --no-fund
	touch $@

$(SDK_DIR)/dist/server.js: $(SDK_DIR)/node_modules/.lap-stamp $(SDK_DIR)/tsconfig.json $(wildcard $(SDK_DIR)/src/*.ts)
	rm -rf $(SDK_DIR)/dist
	cd $(SDK_DIR) && ./node_modules/.bin/tsc -p .

# The launcher the local backend starts (sandboxes/harnesses.go); it runs
# the compiled server of this checkout with the node on PATH (or $$NODE).
$(BIN)/lap-harness-claude-agent-sdk: Makefile
	@mkdir -p $(BIN)
	printf '#!/bin/sh\n# Made by make build: the claude-agent-sdk harness of %s\nexec "$${NODE:-node}" "%s/dist/server.js" "$$@"\n' \
		"$(CURDIR)" "$(CURDIR)/$(SDK_DIR)" > $@
	chmod +x $@

## test-claude-agent-sdk: the TypeScript unit tests (node --test)
test-claude-agent-sdk: build-claude-agent-sdk
	cd $(SDK_DIR) && $(NODE) --test dist/*.test.js

## build-opencode: the pinned opencode binary and bin/lap-harness-opencode
# (the adapter that puts lap's protocol in front of opencode serve is built
# with the claude-agent-sdk TypeScript: dist/opencode.js).
build-opencode: $(BIN)/lap-harness-opencode $(OPENCODE_DIR)/node_modules/.lap-stamp $(SDK_DIR)/dist/server.js

$(OPENCODE_DIR)/node_modules/.lap-stamp: $(OPENCODE_DIR)/package.json $(OPENCODE_DIR)/package-lock.json
	cd $(OPENCODE_DIR) && $(NPM) ci --no-audit --no-fund
	touch $@

$(BIN)/lap-harness-opencode: Makefile
	@mkdir -p $(BIN)
	printf '#!/bin/sh\n# Made by make build: the opencode harness of %s\nexec "$${NODE:-node}" "%s/dist/opencode.js" "$$@"\n' \
		"$(CURDIR)" "$(CURDIR)/$(SDK_DIR)" > $@
	chmod +x $@

## ---- Terminal harnesses (sandboxes/claude-code, sandboxes/codex) ----
# The official CLIs, pinned by their lockfiles and installed with npm ci
# (each brings its native binary as a platform package from the npm
# registry); bin/lap-tty-harness (sandboxes/ttyharness) runs them under
# tmux. A stamp in node_modules skips the install until the lockfile changes.
CLAUDE_CODE_DIR := sandboxes/claude-code
CODEX_DIR := sandboxes/codex

.PHONY: build-claude-code build-codex
build: build-claude-code build-codex

## build-claude-code: the pinned Claude Code and bin/lap-harness-claude-code
build-claude-code: $(BIN)/lap-harness-claude-code $(CLAUDE_CODE_DIR)/node_modules/.lap-stamp

$(CLAUDE_CODE_DIR)/node_modules/.lap-stamp: $(CLAUDE_CODE_DIR)/package.json $(CLAUDE_CODE_DIR)/package-lock.json
	cd $(CLAUDE_CODE_DIR) && $(NPM) ci --no-audit --no-fund
	touch $@

# The launcher the local backend starts (sandboxes/harnesses.go): the
# terminal harness of this checkout running this checkout's Claude Code.
$(BIN)/lap-harness-claude-code: Makefile
	@mkdir -p $(BIN)
	printf '#!/bin/sh\n# Made by make build: the claude-code terminal harness of %s\nexec "%s/lap-tty-harness" --tool claude-code --tool-bin "%s/node_modules/.bin/claude" "$$@"\n' \
		"$(CURDIR)" "$(BIN)" "$(CURDIR)/$(CLAUDE_CODE_DIR)" > $@
	chmod +x $@

## build-codex: the pinned Codex and bin/lap-harness-codex
build-codex: $(BIN)/lap-harness-codex $(CODEX_DIR)/node_modules/.lap-stamp

$(CODEX_DIR)/node_modules/.lap-stamp: $(CODEX_DIR)/package.json $(CODEX_DIR)/package-lock.json
	cd $(CODEX_DIR) && $(NPM) ci --no-audit --no-fund
	touch $@

$(BIN)/lap-harness-codex: Makefile
	@mkdir -p $(BIN)
	printf '#!/bin/sh\n# Made by make build: the codex terminal harness of %s\nexec "%s/lap-tty-harness" --tool codex --tool-bin "%s/node_modules/.bin/codex" "$$@"\n' \
		"$(CURDIR)" "$(BIN)" "$(CURDIR)/$(CODEX_DIR)" > $@
	chmod +x $@

## ---- End-to-end: fuzzing, load and the benchmark table (e2e/) ----
# Every fuzz target (func FuzzXxx in a _test.go file) runs for FUZZTIME;
# plain go test runs their seeds. Targets are found in the sources, so a
# new one is fuzzed without a change here. On a busy machine Go's fuzzer
# can fail its own shutdown ("context deadline exceeded", no failing
# input found); such a run is repeated once. A real failure writes its
# input under testdata/fuzz and fails make.
FUZZTIME ?= 10s

.PHONY: fuzz

## fuzz: run every Go fuzz target for FUZZTIME (make test does)
fuzz:
	@set -e; for f in $$(grep -l '^func Fuzz' $$(git ls-files -co --exclude-standard '*_test.go')); do \
	  for fn in $$(grep -o '^func Fuzz[A-Za-z0-9_]*' $$f | cut -d' ' -f2); do \
	    log=$$(mktemp); \
	    run() { $(GO) test -run '^$$' -fuzz "^$$fn$$" -fuzztime $(FUZZTIME) ./$$(dirname $$f) >$$log 2>&1; }; \
	    if ! run; then \
	      if grep -q 'context deadline exceeded' $$log && ! grep -q 'Failing input written' $$log; then \
	        echo "fuzz ./$$(dirname $$f) $$fn: the fuzzer's shutdown timed out with no failing input; once more"; \
	        run || { cat $$log; rm -f $$log; exit 1; }; \
	      else \
	        cat $$log; rm -f $$log; exit 1; \
	      fi; \
	    fi; \
	    echo "fuzz ./$$(dirname $$f) $$fn $(FUZZTIME): $$(grep -o 'execs: [0-9]*' $$log | tail -1)"; rm -f $$log; \
	  done; \
	done

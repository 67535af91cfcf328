# lap — see README.md. `make run` starts the platform, `make test` tests it.
SHELL := /bin/bash
GO    ?= go
BIN   := $(CURDIR)/bin
# Test timeout for the whole suite; CI gives us 90 minutes in all.
TEST_TIMEOUT ?= 45m

.PHONY: all build run test test-unit bench lint clean

all: build

## build: compile lapd, lap and lap-harness into bin/
build:
	$(GO) build -o $(BIN)/ ./cmd/...

## run: start lapd on its embedded defaults (local sandboxes, bbolt in ./.lap-data)
run: build
	$(BIN)/lapd init
	$(BIN)/lapd

## test: every test that runs on one machine without a network
test: build
	$(GO) test -count=1 -timeout $(TEST_TIMEOUT) ./...

## bench: print lap's speed and memory figures
bench: build
	$(GO) test -run '^$$' -bench . -benchtime 1x -count 1 ./...

## lint: formatting and vet
lint:
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...

clean:
	rm -rf $(BIN)

# xdprouter: see README.md. Most targets need root: sudo make <target>.

GO ?= $(shell command -v go 2>/dev/null || echo /usr/local/go/bin/go)
export GO
LAB ?= lab
BIN := bin

.PHONY: all build generate test demo bench report lab-up lab-down deps clean

all: build

## deps: install clang, llvm, libbpf-dev, iproute2, ethtool when missing; download Go modules
deps:
	@./scripts/deps.sh

## build: build bin/xdprouter, bin/xdpbench and bin/afxdp-ref (the reference
## AF_XDP forwarder in C that xdpbench runs as scenario afxdp-ref)
build:
	$(GO) build -o $(BIN)/xdprouter ./cmd/xdprouter
	$(GO) build -o $(BIN)/xdpbench ./cmd/xdpbench
	cc -O2 -Wall -Wextra -o $(BIN)/afxdp-ref bench/afxdpref/csrc/afxdp_ref.c -lpthread

## generate: compile bpf/*.c with bpf2go (generated .go and .o are committed)
generate: deps
	$(GO) generate ./...

## test: vet, every test (privileged ones need root), every benchmark once
test: deps
	$(GO) vet ./...
	$(GO) test -count=1 -p 1 -timeout 20m ./...
	$(GO) test -count=1 -p 1 -run '^$$' -bench . -benchtime 1x ./...

## demo: bring up a lab, forward through it live, print the benchmark table, tear down
demo: deps build
	./$(BIN)/xdpbench demo

## bench: run the benchmark table (3 trials of 3 s per scenario)
bench: deps build
	./$(BIN)/xdpbench run

## report: the full benchmark report (every engine, frame sizes, route sets, RFC 2544, plots) into docs/report
report: deps build
	./$(BIN)/xdpbench report --full-dst 128.0.0.0/2 --out docs/report

## lab-up / lab-down: bring the lab named $(LAB) up or down
lab-up: build
	./$(BIN)/xdpbench lab up --name $(LAB)

lab-down: build
	./$(BIN)/xdpbench lab down --name $(LAB)

## clean: remove every lab and the binaries
clean:
	-[ -x $(BIN)/xdpbench ] && ./$(BIN)/xdpbench lab down --all
	rm -rf $(BIN)

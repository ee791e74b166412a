// Package sink counts and drops the lab's traffic with an XDP program, per
// CPU, and reports rates and exact counts.
package sink

//go:generate go tool bpf2go -tags linux -target bpfel -cflags "-O2 -g -Wall -Werror -I/usr/include/x86_64-linux-gnu" xdpsink ../../bpf/sink.c

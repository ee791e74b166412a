// Package gen is the lab's traffic generator: IPv4 and IPv6 UDP frames sent
// with BPF_PROG_RUN and BPF_F_TEST_XDP_LIVE_FRAMES (Linux 5.18 or newer), one
// sending thread per chosen CPU, at the maximum rate or paced to a target.
package gen

//go:generate go tool bpf2go -tags linux -target bpfel -cflags "-O2 -g -Wall -Werror -I/usr/include/x86_64-linux-gnu" xdpgen ../../bpf/gen.c

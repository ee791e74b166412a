// Package afxdpref runs the reference AF_XDP forwarder, a small C program
// (csrc/afxdp_ref.c, compiled on first use), beside a minimal XDP program
// that steers every IPv4 and IPv6 frame to its queue's socket: the best
// plain AF_XDP forwarding on the same lab, so every report shows the
// engine afxdp next to it (xdpbench scenario afxdp-ref).
package afxdpref

//go:generate go tool bpf2go -tags linux -target bpfel -cflags "-O2 -g -Wall -Werror -I/usr/include/x86_64-linux-gnu" xskredirect ../../bpf/xsk_redirect.c

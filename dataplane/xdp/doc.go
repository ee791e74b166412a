// Package xdp loads xdprouter's XDP program (bpf/router.c), binds it to a
// FIB table's maps, attaches it to interfaces with a bpf_link, and reads
// its counters. Without Options.PinPath nothing stays attached when the
// process dies; with it the links and the program's maps are pinned and
// outlive the daemon, for a restart or the SIGUSR2 handoff. Needs
// Linux 5.9+ (bpf_link XDP attach) and CAP_NET_ADMIN + CAP_BPF.
package xdp

//go:generate go tool bpf2go -tags linux -target bpfel -type iface -cflags "-O2 -g -Wall -Werror -I/usr/include/x86_64-linux-gnu" router ../../bpf/router.c

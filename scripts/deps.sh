#!/usr/bin/env bash
# Installs what building, generating and testing xdprouter need, only when
# it is missing (safe to run again): clang/llvm and libbpf headers for the
# BPF programs, a C compiler (cc) for xdpbench's reference AF_XDP
# forwarder, iproute2 and ethtool for inspecting the lab by hand, ping
# for the tests that check the kernel still answers what XDP passes it,
# BIRD 2 for the control-plane test with a real routing daemon, and nft and
# iptables-legacy for the tests that put a firewall in front of the fast
# path.
set -euo pipefail

need=()
command -v clang >/dev/null 2>&1 || need+=(clang)
command -v cc >/dev/null 2>&1 || need+=(gcc)
command -v llvm-strip >/dev/null 2>&1 || need+=(llvm)
[ -f /usr/include/bpf/bpf_helpers.h ] || need+=(libbpf-dev)
[ -f /usr/include/linux/bpf.h ] || need+=(linux-libc-dev)
command -v ip >/dev/null 2>&1 || need+=(iproute2)
command -v ethtool >/dev/null 2>&1 || need+=(ethtool)
command -v ping >/dev/null 2>&1 || need+=(iputils-ping)
command -v bird >/dev/null 2>&1 || need+=(bird2)
command -v nft >/dev/null 2>&1 || need+=(nftables)
command -v iptables-legacy >/dev/null 2>&1 || need+=(iptables)

if [ ${#need[@]} -gt 0 ]; then
	if [ "$(id -u)" -ne 0 ]; then
		echo "deps: missing ${need[*]}: run 'sudo make deps'" >&2
		exit 1
	fi
	echo "deps: installing ${need[*]}"
	export DEBIAN_FRONTEND=noninteractive
	apt-get update -qq
	apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

if ! command -v "${GO:-go}" >/dev/null 2>&1; then
	echo "deps: Go 1.26 or newer is needed (not found as '${GO:-go}')" >&2
	exit 1
fi
"${GO:-go}" mod download

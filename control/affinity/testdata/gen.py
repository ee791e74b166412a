#!/usr/bin/env python3
"""Writes the recorded /proc and /sys trees the affinity tests read.

virtio-vm:  the RHEL 9 VM of seeds/000 (8 vCPUs, CPUs 4-7 isolated with
            isolcpus=managed_irq,domain,4-7, virtio6 = eth1 with 4 queues);
            /proc/interrupts lines 52-60 are the seed's own; the seed shows
            the affinity of IRQs 53 (0-3) and 55 (4-7), the others follow
            the same alternation.
igb-router: the router of seeds/002 (6 CPUs, HT off, igb eth1-eth3 with 6
            TxRx queues each), IRQ affinity as the seed's "vanilla 3.8.5"
            table.
mlx5-2s:    a 2-socket host, 16 cores x 2 threads per socket (64 CPUs,
            Intel numbering: node 0 = 0-15,32-47), an mlx5 NIC eth0 at
            0000:3b:00.0 on node 0 with 64 channels, comp IRQ i on CPU i,
            irqbalance running with CPUs 0,32 banned.
Run from this directory: python3 gen.py
"""
import os, shutil

def w(root, path, text):
    p = os.path.join(root, path)
    os.makedirs(os.path.dirname(p), exist_ok=True)
    with open(p, "w") as f:
        f.write(text if text.endswith("\n") else text + "\n")

def link(root, path, target):
    p = os.path.join(root, path)
    os.makedirs(os.path.dirname(p), exist_ok=True)
    os.symlink(target, p)

def cpus(root, n, core=lambda i: i, pkg=lambda i: 0, sib=lambda i: str(i), nodes={0: None}):
    w(root, "sys/devices/system/cpu/online", f"0-{n-1}")
    for i in range(n):
        d = f"sys/devices/system/cpu/cpu{i}/topology/"
        w(root, d + "core_id", str(core(i)))
        w(root, d + "physical_package_id", str(pkg(i)))
        w(root, d + "thread_siblings_list", sib(i))
    for node, lst in nodes.items():
        w(root, f"sys/devices/system/node/node{node}/cpulist", lst or f"0-{n-1}")

def iface(root, name, devpath, driver, queues, numa=None, rps="0", xps="0"):
    d = f"sys/class/net/{name}/"
    link(root, d + "device", os.path.relpath(devpath, d))
    w(root, f"sys/bus/drivers/{driver}/uevent", "")  # git keeps no empty directory
    link(root, devpath + "/driver", os.path.relpath(os.path.join("sys/bus/drivers", driver), devpath))
    if numa is not None:
        w(root, devpath + "/numa_node", str(numa))
    for q in range(queues):
        w(root, d + f"queues/rx-{q}/rps_cpus", rps)
        w(root, d + f"queues/tx-{q}/xps_cpus", xps)

def irqs(root, ncpu, lines):
    out = "     " + "".join(f"      CPU{i:<4}" for i in range(ncpu)).rstrip() + "\n"
    for irq, counts, chip, name, aff in lines:
        out += f"{irq:>4}: " + " ".join(f"{c:>10}" for c in counts) + f"  {chip}   {name}\n"
        if aff is not None:
            w(root, f"proc/irq/{irq}/smp_affinity_list", aff)
    w(root, "proc/interrupts", out)

here = os.path.dirname(os.path.abspath(__file__))

# virtio-vm
r = os.path.join(here, "virtio-vm"); shutil.rmtree(r, ignore_errors=True)
cpus(r, 8)
w(r, "sys/devices/system/cpu/isolated", "4-7")
w(r, "sys/devices/system/cpu/nohz_full", "(null)")
w(r, "proc/cmdline", "BOOT_IMAGE=(hd0,gpt2)/vmlinuz-5.14.0-362.8.1.el9_3.x86_64 root=/dev/mapper/rhel-root ro isolcpus=managed_irq,domain,4-7")
dev = "sys/devices/pci0000:00/0000:00:02.6/0000:07:00.0/virtio6"
iface(r, "eth1", dev, "virtio_net", 4, rps="00", xps="00")
seed = [
    (52, [0, 0, 0, 0, 0, 0, 0, 0], "PCI-MSIX-0000:07:00.0   0-edge", "virtio6-config", "0-3"),
    (53, [7159429, 0, 1, 0, 0, 0, 0, 0], "PCI-MSIX-0000:07:00.0   1-edge", "virtio6-input.0", "0-3"),
    (54, [417, 0, 0, 1, 0, 0, 0, 0], "PCI-MSIX-0000:07:00.0   2-edge", "virtio6-output.0", "0-3"),
    (55, [0, 0, 11189465, 0, 1, 2260, 0, 0], "PCI-MSIX-0000:07:00.0   3-edge", "virtio6-input.1", "4-7"),
    (56, [0, 0, 165, 0, 220, 1, 0, 0], "PCI-MSIX-0000:07:00.0   4-edge", "virtio6-output.1", "4-7"),
    (57, [0, 0, 0, 11296239, 0, 0, 1, 0], "PCI-MSIX-0000:07:00.0   5-edge", "virtio6-input.2", "0-3"),
    (58, [0, 0, 0, 0, 0, 0, 0, 0], "PCI-MSIX-0000:07:00.0   6-edge", "virtio6-output.2", "0-3"),
    (59, [11620198, 0, 0, 0, 0, 0, 2, 0], "PCI-MSIX-0000:07:00.0   7-edge", "virtio6-input.3", "4-7"),
    (60, [0, 13, 0, 0, 0, 0, 0, 0], "PCI-MSIX-0000:07:00.0   8-edge", "virtio6-output.3", "4-7"),
]
irqs(r, 8, seed)

# igb-router: the seed's vanilla 3.8.5 layout
r = os.path.join(here, "igb-router"); shutil.rmtree(r, ignore_errors=True)
cpus(r, 6)
w(r, "proc/cmdline", "BOOT_IMAGE=/boot/vmlinuz-3.8.5 root=/dev/sda1 ro")
layout = {"eth1": [1, 2, 2, 3, 3, 4], "eth2": [5, 0, 0, 0, 1, 2], "eth3": [3, 4, 4, 5, 5, 0]}
lines, irq = [], 64
for n, (name, cpulist) in enumerate(layout.items()):
    iface(r, name, f"sys/devices/pci0000:00/0000:00:01.0/0000:01:00.{n}", "igb", 6, numa=0, rps="00", xps="00")
    lines.append((irq, [1] * 6, f"PCI-MSI-edge", name, "0-5")); irq += 1
    for q, c in enumerate(cpulist):
        counts = [0] * 6; counts[c] = 1000 + q
        lines.append((irq, counts, "PCI-MSI-edge", f"{name}-TxRx-{q}", str(c))); irq += 1
irqs(r, 6, lines)

# mlx5-2s
r = os.path.join(here, "mlx5-2s"); shutil.rmtree(r, ignore_errors=True)
cpus(r, 64, core=lambda i: i % 16, pkg=lambda i: (i % 32) // 16, sib=lambda i: f"{i % 32},{i % 32 + 32}",
     nodes={0: "0-15,32-47", 1: "16-31,48-63"})
w(r, "proc/cmdline", "BOOT_IMAGE=/vmlinuz-6.8.0 root=UUID=0 ro")
w(r, "proc/1234/comm", "irqbalance")
w(r, "etc/default/irqbalance", 'IRQBALANCE_BANNED_CPULIST="0,32"')
iface(r, "eth0", "sys/devices/pci0000:3a/0000:3a:00.0/0000:3b:00.0", "mlx5_core", 64, numa=0,
      rps="00000000,00000000", xps="00000000,00000000")
lines = [(100 + i, [0] * 64, "IR-PCI-MSIX-0000:3b:00.0 %d-edge" % (i + 1), f"mlx5_comp{i}@pci:0000:3b:00.0", str(i)) for i in range(64)]
irqs(r, 64, lines)

def softnet(root, rows):
    w(root, "proc/net/softnet_stat", "\n".join(
        " ".join(f"{v:08x}" for v in [p, d, s] + [0] * 9 + [cpu]) for cpu, (p, d, s) in enumerate(rows)))

def sysctls(root, budget=300, usecs=2000, weight=64, backlog=1000):
    for k, v in {"netdev_budget": budget, "netdev_budget_usecs": usecs, "dev_weight": weight, "netdev_max_backlog": backlog}.items():
        w(root, f"proc/sys/net/core/{k}", str(v))

for name in ("virtio-vm", "igb-router", "mlx5-2s"):
    r = os.path.join(here, name)
    n = len([e for e in os.listdir(os.path.join(r, "sys/devices/system/cpu")) if e.startswith("cpu")])
    softnet(r, [(1000 * (i + 1), 0, 0) for i in range(n)])
    sysctls(r)

# untuned-router: the router text before tuning (Debian 3.2.39): every
# queue IRQ on CPU 0, which drops and runs out of budget.
r = os.path.join(here, "untuned-router"); shutil.rmtree(r, ignore_errors=True)
cpus(r, 6)
w(r, "proc/cmdline", "BOOT_IMAGE=/boot/vmlinuz-3.2.0-4-amd64 root=/dev/sda1 ro")
lines, irq = [], 64
for n, name in enumerate(("eth1", "eth2", "eth3")):
    iface(r, name, f"sys/devices/pci0000:00/0000:00:01.0/0000:01:00.{n}", "igb", 6, numa=0, rps="00", xps="00")
    for q in range(6):
        lines.append((irq, [5000000 + q, 0, 0, 0, 0, 0], "PCI-MSI-edge", f"{name}-TxRx-{q}", "0")); irq += 1
irqs(r, 6, lines)
softnet(r, [(558000000, 123456, 98765)] + [(0, 0, 0)] * 5)
sysctls(r)

# ethtool -l state, which /sys does not hold (see affinity.Recorded).
import json
def channels(root, name, **c):
    full = {"MaxRx": 0, "MaxTx": 0, "MaxCombined": 0, "Rx": 0, "Tx": 0, "Combined": 0}
    full.update(c)
    w(root, f"ethtool/{name}/channels", json.dumps(full, separators=(",", ":")))  # as Go writes it

for name in ("igb-router", "untuned-router"):
    for i in ("eth1", "eth2", "eth3"):
        channels(os.path.join(here, name), i, MaxCombined=8, Combined=6)
channels(os.path.join(here, "virtio-vm"), "eth1", MaxCombined=4, Combined=4)
channels(os.path.join(here, "mlx5-2s"), "eth0", MaxCombined=64, Combined=64)

package lab

import (
	"os"
	"strconv"
	"strings"
)

// KernelForwarded reads how many packets a namespace's kernel forwarded
// itself: IPv4 ForwDatagrams plus IPv6 Ip6OutForwDatagrams.
func KernelForwarded(ns string) (uint64, error) {
	var n uint64
	err := InNamespace(ns, func() error {
		b, err := os.ReadFile("/proc/thread-self/net/snmp")
		if err != nil {
			return err
		}
		lines := strings.Split(string(b), "\n")
		for i := 0; i+1 < len(lines); i++ {
			if strings.HasPrefix(lines[i], "Ip: ") && strings.HasPrefix(lines[i+1], "Ip: ") {
				h, v := strings.Fields(lines[i]), strings.Fields(lines[i+1])
				for k := range h {
					if h[k] == "ForwDatagrams" && k < len(v) {
						x, _ := strconv.ParseUint(v[k], 10, 64)
						n += x
					}
				}
				break
			}
		}
		b, err = os.ReadFile("/proc/thread-self/net/snmp6")
		if err != nil {
			return err
		}
		for _, line := range strings.Split(string(b), "\n") {
			if f := strings.Fields(line); len(f) == 2 && f[0] == "Ip6OutForwDatagrams" {
				x, _ := strconv.ParseUint(f[1], 10, 64)
				n += x
			}
		}
		return nil
	})
	return n, err
}

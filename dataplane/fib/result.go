package fib

import "fmt"

// RouteType says what a lookup result means.
type RouteType uint8

// Route types. Everything but RouteNexthop and RouteECMP is handled by the
// kernel or dropped by the dataplane: RouteNone (no route), RouteUnreachable,
// RouteProhibit, RouteLocal and RouteKernel go to the Linux stack;
// RouteBlackhole drops.
const (
	RouteNone        RouteType = iota // no route: the kernel answers (ICMP unreachable)
	RouteNexthop                      // Index is a nexthop ID
	RouteECMP                         // Index is an ECMP group ID
	RouteBlackhole                    // drop silently
	RouteUnreachable                  // kernel sends ICMP unreachable
	RouteProhibit                     // kernel sends ICMP administratively prohibited
	RouteLocal                        // a local address: deliver to the kernel
	RouteKernel                       // anything else the kernel must handle (throw, broadcast)
)

var typeNames = [...]string{"none", "nexthop", "ecmp", "blackhole", "unreachable", "prohibit", "local", "kernel"}

func (t RouteType) String() string {
	if int(t) < len(typeNames) {
		return typeNames[t]
	}
	return fmt.Sprintf("type%d", uint8(t))
}

// Entries of the writer's expanded mirror (poptrie.go) are 32-bit words:
//
//	bit  31     ext: the rest is a mirror node index
//	bits 23-30  depth: length of the prefix that painted the entry (0-128)
//	bits 20-22  route type
//	bits 0-19   index: nexthop or ECMP group ID
//
// A lookup result is the entry without ext and depth bits: what the
// emitted table the BPF program reads (bpf/fib.h) holds in its leaves.
const (
	extBit     = 1 << 31
	depthShift = 23
	typeShift  = 20
	resultMask = 1<<depthShift - 1
	groupMask  = extBit - 1

	// MaxIndex is the largest nexthop or ECMP group ID a result holds.
	MaxIndex = 1<<typeShift - 1
)

// Result is what a lookup returns: a route type and, for RouteNexthop and
// RouteECMP, an ID. The zero Result is "no route".
type Result uint32

// MakeResult builds a result; index is only meaningful for RouteNexthop and
// RouteECMP.
func MakeResult(t RouteType, index uint32) Result {
	return Result(uint32(t)<<typeShift | index&MaxIndex)
}

// Type returns the route type.
func (r Result) Type() RouteType { return RouteType(r >> typeShift & 7) }

// Index returns the nexthop or ECMP group ID.
func (r Result) Index() uint32 { return uint32(r) & MaxIndex }

func (r Result) String() string {
	switch r.Type() {
	case RouteNexthop, RouteECMP:
		return fmt.Sprintf("%s %d", r.Type(), r.Index())
	}
	return r.Type().String()
}

func entryOf(r Result, depth int) uint32 { return uint32(depth)<<depthShift | uint32(r) }

func depthOf(e uint32) int { return int(e >> depthShift & 0xff) }

package main

import (
	"fmt"
	"net/netip"

	"github.com/spf13/cobra"

	"github.com/xdprouter/xdprouter/lab"
)

func newLabCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "lab",
		Short: "Bring the router lab up or down, or show it",
		Long: `The lab is a router test bed in network namespaces:
xdpl-NAME-gen (gen1, gen2) -> xdpl-NAME-rtr (eth1, eth2 ... eth3) -> xdpl-NAME-sink (sink0).
The router routes the destination prefixes via 198.18.3.254 / 2001:2:0:3::fe,
gateways that do not exist but have permanent neighbour entries with the
sink's MAC. Nothing is created in the host's namespace.`,
	}
	var cfg lab.Config
	var v4, v6 string
	up := &cobra.Command{
		Use:   "up",
		Short: "Create the lab's namespaces, links, addresses and routes",
		Example: `  xdpbench lab up
  xdpbench lab up --name a --queues 4 --mtu 9000`,
		RunE: func(cmd *cobra.Command, args []string) error {
			var err error
			if v4 != "" {
				if cfg.RouteV4, err = netip.ParsePrefix(v4); err != nil {
					return fmt.Errorf("--route-v4: %w", err)
				}
			}
			if v6 != "" {
				if cfg.RouteV6, err = netip.ParsePrefix(v6); err != nil {
					return fmt.Errorf("--route-v6: %w", err)
				}
			}
			l, err := lab.Up(cmd.Context(), cfg)
			if err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "lab %s is up: namespaces %s %s %s; remove it with 'xdpbench lab down --name %s'\n",
				l.Name, l.GenNS, l.RouterNS, l.SinkNS, l.Name)
			return nil
		},
	}
	up.Flags().StringVarP(&cfg.Name, "name", "n", "lab", "lab name (namespaces xdpl-NAME-gen, -rtr, -sink)")
	up.Flags().IntVarP(&cfg.Queues, "queues", "q", 2, "RX and TX queues per veth")
	up.Flags().IntVar(&cfg.MTU, "mtu", 1500, "MTU of every link")
	up.Flags().StringVar(&v4, "route-v4", "198.19.0.0/16", "IPv4 prefix routed out of eth3")
	up.Flags().StringVar(&v6, "route-v6", "2001:2:0:ff00::/56", "IPv6 prefix routed out of eth3")

	var downName string
	var all bool
	down := &cobra.Command{
		Use:   "down",
		Short: "Remove a lab (removing one that is not there is not an error)",
		Example: `  xdpbench lab down
  xdpbench lab down --all`,
		RunE: func(cmd *cobra.Command, args []string) error {
			names := []string{downName}
			if all {
				var err error
				if names, err = lab.List(); err != nil {
					return err
				}
			}
			for _, n := range names {
				if err := lab.Down(n); err != nil {
					return err
				}
				fmt.Fprintf(cmd.OutOrStdout(), "lab %s is down\n", n)
			}
			return nil
		},
	}
	down.Flags().StringVarP(&downName, "name", "n", "lab", "lab name")
	down.Flags().BoolVar(&all, "all", false, "remove every lab (every xdpl-* namespace set)")

	var asJSON bool
	status := &cobra.Command{
		Use:   "status",
		Short: "List the labs that are up, with their links and addresses",
		RunE: func(cmd *cobra.Command, args []string) error {
			names, err := lab.List()
			if err != nil {
				return err
			}
			var labs []*lab.Lab
			for _, n := range names {
				l, err := lab.Open(n)
				if err != nil {
					return err
				}
				labs = append(labs, l)
			}
			w := cmd.OutOrStdout()
			if asJSON {
				return writeJSON(w, labs)
			}
			if len(labs) == 0 {
				fmt.Fprintln(w, "no lab is up")
			}
			for _, l := range labs {
				fmt.Fprintf(w, "lab %s: %d queues per veth, mtu %d\n", l.Name, l.Queues, l.MTU)
				for _, lk := range append(append([]lab.Link{}, l.Ingress...), l.Egress) {
					fmt.Fprintf(w, "  %s/%s %s %s %s  <->  %s/%s %s %s %s\n",
						lk.A.NS, lk.A.Name, lk.A.MAC, lk.A.V4, lk.A.V6,
						lk.B.NS, lk.B.Name, lk.B.MAC, lk.B.V4, lk.B.V6)
				}
				fmt.Fprintf(w, "  routes: %s via %s, %s via %s (dev eth3, neighbours permanent: %s)\n",
					l.RouteV4, l.GatewayV4, l.RouteV6, l.GatewayV6, l.Egress.B.MAC)
			}
			return nil
		},
	}
	status.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	cmd.AddCommand(up, down, status)
	return cmd
}

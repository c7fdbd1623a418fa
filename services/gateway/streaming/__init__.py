"""streamd: CRI streaming (Exec, Attach, PortForward) over the kubelet's SPDY/3.1 protocols."""

"""netd: pod network namespaces and CNI plugins."""

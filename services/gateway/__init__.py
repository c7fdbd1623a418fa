"""gateway: CRI v1 RuntimeService + ImageService on a unix socket; orchestration over the daemons."""

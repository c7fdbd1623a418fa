"""monitord: the OCI runtime through conmon: lifecycle, exits, OOM, logs, exec, stats."""

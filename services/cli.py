"""The `criplex` command: run the daemons under supervisord and administer them."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

from services.netd.cni_conf import config_files
from shared.config import SERVICES, Config, load_config
from shared.errors import ConfigError
from shared.state import write_atomic

DEPLOY_DIR = Path(os.environ.get("CRIPLEX_DEPLOY_DIR", Path(__file__).resolve().parents[1] / "deploy"))


def supervisor_env(config: Config, config_file: str | None) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        CRIPLEX_PYTHON=sys.executable,
        CRIPLEX_RUN_DIR=config.paths.run_dir,
        CRIPLEX_LOG_DIR=config.paths.log_dir,
        # Daemons run from the source tree's parent so `services` and `shared` import
        # even without an installed distribution.
        PYTHONPATH=os.pathsep.join(filter(None, [str(DEPLOY_DIR.parent), env.get("PYTHONPATH", "")])),
    )
    if config_file:
        env["CRIPLEX_CONFIG"] = str(Path(config_file).resolve())
    return env


def supervisorctl_argv(*args: str) -> list[str]:
    return [sys.executable, "-m", "supervisor.supervisorctl", "-c", str(DEPLOY_DIR / "supervisord.conf"), *args]


def _supervisorctl(config: Config, *args: str) -> int:
    return subprocess.call(supervisorctl_argv(*args), env=supervisor_env(config, None))


def default_conflist(subnet: str) -> bytes:
    """deploy/cni/10-criplex.conflist with the bridge's subnet set to `subnet` (netd.default_subnet)."""
    doc = json.loads((DEPLOY_DIR / "cni" / "10-criplex.conflist").read_text())
    doc["plugins"][0]["ipam"]["ranges"] = [[{"subnet": subnet}]]
    return (json.dumps(doc, indent=2) + "\n").encode()


def install_default_network(config: Config) -> Path | None:
    """Give pods a network out of the box, but never shadow one the admin (or a CNI daemonset) installed."""
    conf_dir = Path(config.netd.cni_conf_dir)
    if config_files(conf_dir):
        return None
    conf_dir.mkdir(parents=True, exist_ok=True)
    target = conf_dir / "10-criplex.conflist"
    write_atomic(target, default_conflist(config.netd.default_subnet))
    os.chmod(target, 0o644)
    return target


def cmd_up(config: Config, config_file: str | None) -> int:
    for path in (config.paths.run_dir, config.paths.log_dir, config.paths.state_dir):
        Path(path).mkdir(parents=True, exist_ok=True)
    install_default_network(config)
    os.chmod(config.paths.run_dir, 0o755)
    conf = DEPLOY_DIR / "supervisord.conf"
    env = supervisor_env(config, config_file)
    os.execve(sys.executable, [sys.executable, "-m", "supervisor.supervisord", "-n", "-c", str(conf)], env)


def cmd_status(config: Config) -> int:
    rc = _supervisorctl(config, "status")
    try:
        from shared.cri.client import runtime_status

        for line in runtime_status(str(config.cri_socket)):
            print(line)
    except Exception as exc:
        print(f"CRI status: unavailable ({exc})")
        rc = rc or 1
    return rc


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="criplex", description="criplex CRI runtime")
    parser.add_argument("--config", default=os.environ.get("CRIPLEX_CONFIG") or None,
                        help="extra TOML file applied after /etc/criplex/criplex.toml and criplex.d/*.toml")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("up", help="run all daemons under supervisord in the foreground")
    sub.add_parser("config", help="print the effective configuration as TOML")
    sub.add_parser("status", help="show the daemons and the CRI runtime conditions")
    restart = sub.add_parser("restart", help="restart one daemon while the others keep serving")
    restart.add_argument("service", choices=SERVICES)
    args = parser.parse_args(argv)
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        print(f"criplex: configuration error: {exc.message}", file=sys.stderr)
        return 2
    if args.command == "config":
        sys.stdout.write(config.to_toml())
        return 0
    if args.command == "up":
        return cmd_up(config, args.config)
    if args.command == "status":
        return cmd_status(config)
    return _supervisorctl(config, "restart", args.service)


if __name__ == "__main__":
    sys.exit(main())

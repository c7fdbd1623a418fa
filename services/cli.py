"""The `criplex` command: run the daemons under supervisord and administer them."""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
from pathlib import Path

from services.netd.cni_conf import config_files
from services.podtrace import command as podtrace
from services.status_client import status_request, status_socket
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
    rendered = rendered_supervisord_conf(config)
    if rendered.is_file():
        return subprocess.call([sys.executable, "-m", "supervisor.supervisorctl", "-c", str(rendered), *args])
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
    env = supervisor_env(config, config_file)
    conf = render_supervisord_conf(config, env)
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


# --- the rendered supervisord config (plain supervisorctl) and the status API client ------


def rendered_supervisord_conf(config: Config) -> Path:
    return Path(config.paths.run_dir) / "supervisord.conf"


def render_supervisord_conf(config: Config, env: dict[str, str]) -> Path:
    """deploy/supervisord.conf with its %(ENV_CRIPLEX_*)s filled in, written to <run_dir>/supervisord.conf:
    supervisord runs on it, and `supervisorctl -c <run_dir>/supervisord.conf` works with no environment."""

    def fill(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in env:
            raise ConfigError(f"{DEPLOY_DIR / 'supervisord.conf'}: %(ENV_{name})s is not set")
        return env[name].replace("%", "%%")  # supervisord would expand a literal % again

    template = (DEPLOY_DIR / "supervisord.conf").read_text()
    text = "; Rendered by `criplex up` from deploy/supervisord.conf; edits are lost at the next start.\n" + \
        re.sub(r"%\(ENV_([A-Za-z0-9_]+)\)s", fill, template)
    target = rendered_supervisord_conf(config)
    write_atomic(target, text.encode())
    os.chmod(target, 0o600)
    return target


def cmd_status_api(config: Config, what: str, id_: str | None) -> int:
    if what in ("containers", "pause", "unpause") and not id_:
        print(f"criplex: {what} needs a container ID", file=sys.stderr)
        return 2
    method, target = {"info": ("GET", "/info"), "config": ("GET", "/config"),
                      "containers": ("GET", f"/containers/{id_}"), "pause": ("POST", f"/pause/{id_}"),
                      "unpause": ("POST", f"/unpause/{id_}")}[what]
    path = status_socket(config)
    try:
        answer = status_request(path, method, target)
    except OSError as exc:
        print(f"criplex: the status API at {path} is unavailable: {exc}", file=sys.stderr)
        return 1
    if not answer.ok:
        print(f"criplex: {answer.status}: {answer.body.strip()}", file=sys.stderr)
        return 1
    if answer.content_type.startswith("application/json"):
        print(json.dumps(json.loads(answer.body), indent=2))
    else:
        sys.stdout.write(answer.body)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="criplex", description="criplex CRI runtime")
    parser.add_argument("--config", default=os.environ.get("CRIPLEX_CONFIG") or None,
                        help="extra TOML file applied after /etc/criplex/criplex.toml and criplex.d/*.toml")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("up", help="run all daemons under supervisord in the foreground")
    sub.add_parser("config", help="print the effective configuration as TOML")
    status = sub.add_parser("status", help="the daemons and the CRI conditions; or the status API: "
                            "info, config, containers ID")
    status.add_argument("what", nargs="?", choices=("info", "config", "containers"))
    status.add_argument("id", nargs="?", help="the container, for `status containers ID`")
    for verb in ("pause", "unpause"):
        sub.add_parser(verb, help=f"{verb} a container (runc {'pause' if verb == 'pause' else 'resume'})"
                       ).add_argument("id")
    for verb, what in (("stop", "stop one daemon; what needs it answers UNAVAILABLE"), ("start", "start it again")):
        sub.add_parser(verb, help=what).add_argument("service", choices=SERVICES)
    sub.add_parser("reload", help="SIGHUP every daemon: re-read the configuration, apply what can change live")
    restart = sub.add_parser("restart", help="restart one daemon while the others keep serving")
    restart.add_argument("service", choices=SERVICES)
    podtrace.add_parser(sub)
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
    if args.command == "status" and args.what:
        return cmd_status_api(config, args.what, args.id)
    if args.command == "status":
        return cmd_status(config)
    if args.command in ("pause", "unpause"):
        return cmd_status_api(config, args.command, args.id)
    if args.command == "trace":
        return podtrace.cmd_trace(config, args)
    if args.command == "reload":
        return _supervisorctl(config, "signal", "HUP", "all")
    return _supervisorctl(config, args.command, args.service)


if __name__ == "__main__":
    sys.exit(main())

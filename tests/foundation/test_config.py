"""Configuration: defaults, layering, and clear errors for bad files."""

from __future__ import annotations

import subprocess
import sys

import pytest
import toml

from shared.config import Config, load_config
from shared.errors import ConfigError
from tests.support.runtime import REPO


def _load(tmp_path, *files: str, extra: str | None = None) -> Config:
    etc = tmp_path / "criplex.toml"
    dropins = tmp_path / "criplex.d"
    dropins.mkdir(exist_ok=True)
    if files:
        etc.write_text(files[0])
        for i, text in enumerate(files[1:]):
            (dropins / f"{i:02d}-x.toml").write_text(text)
    extra_path = None
    if extra is not None:
        extra_path = tmp_path / "extra.toml"
        extra_path.write_text(extra)
    return load_config(str(extra_path) if extra_path else None, etc_file=etc, dropin_dir=dropins)


def test_defaults_need_no_file(tmp_path):
    config = _load(tmp_path)
    assert config.cri_socket.as_posix() == "/run/criplex/criplex.sock"
    assert config.imaged.max_concurrent_downloads == 3
    assert config.tracing.endpoint == ""


def test_layers_apply_in_order_file_dropins_then_flag(tmp_path):
    config = _load(
        tmp_path,
        '[imaged]\nmax_concurrent_downloads = 5\nplatform = "linux/arm64"\n',
        "[imaged]\nmax_concurrent_downloads = 7\n",
        "[imaged]\nmax_concurrent_downloads = 8\n",
        extra='[log]\nlevel = "debug"\n',
    )
    assert config.imaged.max_concurrent_downloads == 8
    assert config.imaged.platform == "linux/arm64"
    assert config.log.level == "debug"


def test_runtime_handlers_merge_by_name(tmp_path):
    config = _load(tmp_path, '[monitord.runtimes.crun]\npath = "/usr/bin/crun"\n')
    assert set(config.monitord.runtimes) == {"runc", "crun"}


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("[imaged]\nmax_concurrent_downloads = \"three\"\n", "imaged.max_concurrent_downloads: expected integer"),
        ("[imaged]\nbogus = 1\n", "imaged.bogus: unknown key"),
        ("[nosuchsection]\nx = 1\n", "nosuchsection: unknown key"),
        ("[tracing]\nsample_rate = 2.5\n", "tracing.sample_rate: expected a number from 0 to 1"),
        ("[log]\nlevel = \"loud\"\n", "log.level: expected one of"),
        ("[paths]\nrun_dir = \"relative\"\n", "paths.run_dir: expected an absolute path"),
        ("[gateway]\ndefault_timeout = true\n", "gateway.default_timeout: expected a number"),
        ("[imaged\n", "not valid TOML"),
    ],
)
def test_bad_config_names_file_key_and_expectation(tmp_path, text, needle):
    with pytest.raises(ConfigError) as err:
        _load(tmp_path, "", text)
    assert "criplex.d/00-x.toml" in err.value.message
    assert needle in err.value.message


def test_criplex_config_prints_effective_toml(tmp_path):
    extra = tmp_path / "x.toml"
    extra.write_text("[imaged]\nretries = 5\n")
    out = subprocess.run([sys.executable, "-m", "services.cli", "--config", str(extra), "config"],
                         cwd=REPO, capture_output=True, text=True, check=True)
    printed = toml.loads(out.stdout)
    assert printed["imaged"]["retries"] == 5
    assert printed["paths"]["run_dir"] == "/run/criplex"


@pytest.mark.parametrize("module", ["services.cli", "services.gateway", "services.netd", "services.monitord"])
def test_services_exit_nonzero_on_bad_config(tmp_path, module):
    bad = tmp_path / "bad.toml"
    bad.write_text("[transport]\nworkers = 0\n")
    args = [sys.executable, "-m", module, "--config", str(bad)]
    if module == "services.cli":
        args.append("config")
    out = subprocess.run(args, cwd=REPO, capture_output=True, text=True, timeout=30)
    assert out.returncode == 2
    assert f"{bad}" in out.stderr and "transport.workers" in out.stderr

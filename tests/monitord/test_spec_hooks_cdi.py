"""OCI hooks from hooks.d and CDI devices."""

from __future__ import annotations

import json

import pytest

from services.monitord.spec.cdi import parse_device_name, resolve_devices
from services.monitord.spec.hooks import load_hook_files, spec_hooks
from shared.errors import FailedPrecondition, InvalidArgument


def _hook_file(directory, name, when, stages=("prestart",), path="/usr/bin/hook"):
    directory.mkdir(exist_ok=True)
    body = {"version": "1.0.0", "hook": {"path": path, "args": [path, "x"], "timeout": 5}, "when": when,
            "stages": list(stages)}
    (directory / name).write_text(json.dumps(body))


def test_always_hook_is_injected_in_each_of_its_stages(tmp_path):
    _hook_file(tmp_path / "d", "a.json", {"always": True}, stages=("createRuntime", "poststop"))
    hooks = spec_hooks(load_hook_files((str(tmp_path / "d"),)), {}, "/bin/sh", False)
    assert hooks == {"createRuntime": [{"path": "/usr/bin/hook", "args": ["/usr/bin/hook", "x"], "timeout": 5}],
                     "poststop": [{"path": "/usr/bin/hook", "args": ["/usr/bin/hook", "x"], "timeout": 5}]}


def test_later_directory_overrides_a_file_of_the_same_name(tmp_path):
    _hook_file(tmp_path / "usr", "a.json", {"always": True}, path="/usr/share/hook")
    _hook_file(tmp_path / "etc", "a.json", {"always": True}, path="/etc/hook")
    hooks = spec_hooks(load_hook_files((str(tmp_path / "usr"), str(tmp_path / "etc"))), {}, "/bin/sh", False)
    assert [h["path"] for h in hooks["prestart"]] == ["/etc/hook"]


@pytest.mark.parametrize(
    ("when", "annotations", "command", "binds", "injected"),
    [
        ({"annotations": {"^gpu\\.io/.*$": "^true$"}}, {"gpu.io/enabled": "true"}, "/bin/sh", False, True),
        ({"annotations": {"^gpu\\.io/.*$": "^true$"}}, {"gpu.io/enabled": "false"}, "/bin/sh", False, False),
        ({"commands": ["^/usr/bin/nvidia-.*$"]}, {}, "/usr/bin/nvidia-smi", False, True),
        ({"commands": ["^/usr/bin/nvidia-.*$"]}, {}, "/bin/sh", False, False),
        ({"hasBindMounts": True}, {}, "/bin/sh", True, True),
        ({"hasBindMounts": True}, {}, "/bin/sh", False, False),
        # Conditions are ORed.
        ({"commands": ["^/nope$"], "hasBindMounts": True}, {}, "/bin/sh", True, True),
        ({"always": False, "commands": ["^/nope$"]}, {}, "/bin/sh", False, False),
    ],
)
def test_hook_conditions(tmp_path, when, annotations, command, binds, injected):
    _hook_file(tmp_path / "d", "h.json", when)
    hooks = spec_hooks(load_hook_files((str(tmp_path / "d"),)), annotations, command, binds)
    assert bool(hooks) == injected


def test_missing_hook_directories_are_fine(tmp_path):
    assert load_hook_files((str(tmp_path / "none"),)) == []


@pytest.mark.parametrize("body", [
    {"version": "0.1.0", "hook": "/x", "stages": ["prestart"]},
    {"version": "1.0.0", "hook": {"path": "/x"}, "when": {"always": True}, "stages": ["bogus"]},
    {"version": "1.0.0", "hook": {"path": "/x"}, "when": {}, "stages": ["prestart"]},
    {"version": "1.0.0", "hook": {"path": "/x"}, "when": {"commands": ["("]}, "stages": ["prestart"]},
])
def test_invalid_hook_file_is_reported_with_its_path(tmp_path, body):
    (tmp_path / "bad.json").write_text(json.dumps(body))
    with pytest.raises(FailedPrecondition, match=r"bad\.json"):
        load_hook_files((str(tmp_path),))


def _cdi_spec(directory, name, spec):
    directory.mkdir(exist_ok=True)
    (directory / name).write_text(json.dumps(spec))


VENDOR_SPEC = {
    "cdiVersion": "0.6.0",
    "kind": "vendor.com/gpu",
    "containerEdits": {"env": ["VENDOR=1"]},
    "devices": [
        {"name": "gpu0", "containerEdits": {
            "env": ["GPU=0"],
            "deviceNodes": [{"path": "/dev/gpu0", "hostPath": "/dev/null", "permissions": "rw"}],
            "mounts": [{"hostPath": "/opt/lib", "containerPath": "/usr/lib/vendor", "options": ["ro", "rbind"]}],
            "hooks": [{"hookName": "createContainer", "path": "/usr/bin/ldconfig-hook"}],
        }},
        {"name": "gpu1", "containerEdits": {"deviceNodes": [{"path": "/dev/gpu1", "type": "c", "major": 195,
                                                             "minor": 1}]}},
    ],
}


def test_cdi_device_applies_spec_and_device_edits(tmp_path):
    _cdi_spec(tmp_path / "cdi", "vendor.json", VENDOR_SPEC)
    edits = resolve_devices(["vendor.com/gpu=gpu0"], (str(tmp_path / "cdi"),))
    assert edits.env == ["VENDOR=1", "GPU=0"]
    assert edits.device_nodes[0]["path"] == "/dev/gpu0" and edits.device_nodes[0]["major"] == 1
    assert edits.device_rules[0]["access"] == "rw"
    assert edits.mounts == [{"destination": "/usr/lib/vendor", "type": "bind", "source": "/opt/lib",
                             "options": ["ro", "rbind"]}]
    assert edits.hooks == {"createContainer": [{"path": "/usr/bin/ldconfig-hook"}]}


def test_cdi_device_with_explicit_numbers_needs_no_host_node(tmp_path):
    _cdi_spec(tmp_path / "cdi", "vendor.json", VENDOR_SPEC)
    edits = resolve_devices(["vendor.com/gpu=gpu1"], (str(tmp_path / "cdi"),))
    assert (edits.device_nodes[0]["major"], edits.device_nodes[0]["minor"]) == (195, 1)
    assert edits.env == ["VENDOR=1"]  # the spec's own edits come along once


def test_unknown_cdi_device_is_invalid(tmp_path):
    _cdi_spec(tmp_path / "cdi", "vendor.json", VENDOR_SPEC)
    with pytest.raises(InvalidArgument, match=r"vendor\.com/gpu=gpu9"):
        resolve_devices(["vendor.com/gpu=gpu9"], (str(tmp_path / "cdi"),))


def test_yaml_only_cdi_device_says_yaml_is_not_read(tmp_path):
    (tmp_path / "spec.yaml").write_text("kind: vendor.com/gpu\n")
    with pytest.raises(InvalidArgument, match="YAML"):
        resolve_devices(["vendor.com/gpu=gpu0"], (str(tmp_path),))


@pytest.mark.parametrize("name", ["gpu0", "vendor.com=gpu0", "vendor.com/gpu=", "/gpu=x"])
def test_malformed_cdi_name_is_invalid(name):
    with pytest.raises(InvalidArgument):
        parse_device_name(name)

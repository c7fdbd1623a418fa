"""Which seccomp profile a container gets, and what the RuntimeDefault one allows."""

from __future__ import annotations

import json

import pytest

from services.monitord.spec.capabilities import DEFAULT_CAPABILITIES
from services.monitord.spec.seccomp import (
    RUNTIME_DEFAULT,
    UNCONFINED,
    SeccompChoice,
    default_profile,
    seccomp_choice,
    seccomp_profile,
)
from shared.cri import api_pb2
from shared.errors import InvalidArgument

Profile = api_pb2.SecurityProfile
DEFAULT_CAPS = frozenset(DEFAULT_CAPABILITIES)


def _sc(**fields):
    return api_pb2.LinuxContainerSecurityContext(**fields)


def _allowed(profile):
    return {n for rule in profile["syscalls"] if rule["action"] == "SCMP_ACT_ALLOW" and "args" not in rule
            for n in rule["names"]}


@pytest.mark.parametrize(
    ("sc", "expected"),
    [
        (_sc(), SeccompChoice(UNCONFINED)),  # nothing said: unconfined, as containerd and critest expect
        (_sc(seccomp=Profile(profile_type=Profile.RuntimeDefault)), SeccompChoice(RUNTIME_DEFAULT)),
        (_sc(seccomp=Profile(profile_type=Profile.Unconfined)), SeccompChoice(UNCONFINED)),
        (_sc(seccomp=Profile(profile_type=Profile.Localhost, localhost_ref="/p/x.json")),
         SeccompChoice("localhost", "/p/x.json")),
        (_sc(seccomp_profile_path="unconfined"), SeccompChoice(UNCONFINED)),
        (_sc(seccomp_profile_path="runtime/default"), SeccompChoice(RUNTIME_DEFAULT)),
        (_sc(seccomp_profile_path="localhost/my/p.json"),
         SeccompChoice("localhost", "/var/lib/kubelet/seccomp/my/p.json")),
        (_sc(privileged=True, seccomp=Profile(profile_type=Profile.RuntimeDefault)), SeccompChoice(UNCONFINED)),
        # The typed field wins over the deprecated string.
        (_sc(seccomp=Profile(profile_type=Profile.Unconfined), seccomp_profile_path="runtime/default"),
         SeccompChoice(UNCONFINED)),
    ],
)
def test_profile_selection(sc, expected):
    assert seccomp_choice(sc) == expected


def test_localhost_without_a_ref_or_unknown_legacy_string_is_invalid():
    with pytest.raises(InvalidArgument):
        seccomp_choice(_sc(seccomp=Profile(profile_type=Profile.Localhost)))
    with pytest.raises(InvalidArgument):
        seccomp_choice(_sc(seccomp_profile_path="bogus"))


def test_missing_localhost_profile_is_invalid(tmp_path):
    with pytest.raises(InvalidArgument, match="does not exist"):
        seccomp_profile(SeccompChoice("localhost", str(tmp_path / "nope.json")), DEFAULT_CAPS)


def test_localhost_profile_is_loaded_and_docker_conditions_evaluated(tmp_path):
    path = tmp_path / "p.json"
    path.write_text(json.dumps({
        "defaultAction": "SCMP_ACT_ERRNO",
        "archMap": [{"architecture": "SCMP_ARCH_X86_64", "subArchitectures": ["SCMP_ARCH_X86"]}],
        "syscalls": [
            {"names": ["read"], "action": "SCMP_ACT_ALLOW"},
            {"names": ["ptrace"], "action": "SCMP_ACT_ALLOW", "includes": {"caps": ["CAP_SYS_PTRACE"]}},
            {"names": ["write"], "action": "SCMP_ACT_ALLOW", "excludes": {"caps": ["CAP_SYS_ADMIN"]}},
        ],
    }))
    profile = seccomp_profile(SeccompChoice("localhost", str(path)), DEFAULT_CAPS)
    assert profile["architectures"] == ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86"]
    assert _allowed(profile) == {"read", "write"}
    assert "archMap" not in profile


def test_unconfined_has_no_profile():
    assert seccomp_profile(SeccompChoice(UNCONFINED), DEFAULT_CAPS) is None


def test_configured_default_replaces_the_builtin():
    configured = {"defaultAction": "SCMP_ACT_LOG", "syscalls": []}
    assert seccomp_profile(SeccompChoice(RUNTIME_DEFAULT), DEFAULT_CAPS, configured)["defaultAction"] == "SCMP_ACT_LOG"


def test_default_profile_denies_with_eperm_on_x86_arches():
    profile = default_profile(DEFAULT_CAPS)
    assert (profile["defaultAction"], profile["defaultErrnoRet"]) == ("SCMP_ACT_ERRNO", 1)
    assert set(profile["architectures"]) == {"SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"}


@pytest.mark.parametrize("name", ["unshare", "setns", "keyctl", "add_key", "request_key", "mount", "umount2",
                                  "reboot", "kexec_load", "kexec_file_load", "ptrace", "init_module", "bpf",
                                  "clock_settime", "pivot_root", "swapon", "acct", "open_by_handle_at"])
def test_default_profile_blocks_dangerous_calls_for_an_unprivileged_container(name):
    assert name not in _allowed(default_profile(DEFAULT_CAPS))


@pytest.mark.parametrize("name", ["execve", "openat", "read", "write", "fork", "wait4", "nanosleep", "clock_nanosleep",
                                  "socket", "connect", "sendto", "recvfrom", "getdents64", "newfstatat", "statx",
                                  "mmap", "brk", "rt_sigaction", "ioctl", "poll", "futex", "set_tid_address",
                                  "arch_prctl", "getrandom", "prlimit64", "uname", "setsockopt", "bind"])
def test_default_profile_allows_what_ordinary_programs_need(name):
    assert name in _allowed(default_profile(DEFAULT_CAPS))


def test_capability_brings_back_its_syscalls():
    assert "ptrace" in _allowed(default_profile(DEFAULT_CAPS | {"CAP_SYS_PTRACE"}))
    admin = _allowed(default_profile(DEFAULT_CAPS | {"CAP_SYS_ADMIN"}))
    assert {"mount", "unshare", "setns", "clone"} <= admin


def test_clone_without_sys_admin_refuses_namespace_flags_and_clone3_falls_back():
    rules = default_profile(DEFAULT_CAPS)["syscalls"]
    clone = next(r for r in rules if r["names"] == ["clone"])
    assert clone["args"] == [{"index": 0, "value": 0x7E020000, "valueTwo": 0, "op": "SCMP_CMP_MASKED_EQ"}]
    clone3 = next(r for r in rules if r["names"] == ["clone3"])
    assert (clone3["action"], clone3["errnoRet"]) == ("SCMP_ACT_ERRNO", 38)

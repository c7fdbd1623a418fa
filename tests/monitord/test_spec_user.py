"""Resolving the container's user against its own /etc/passwd and /etc/group, never the host's."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from services.monitord.spec.rootfs_file import read_in_rootfs
from services.monitord.spec.user import UserRequest, resolve_user_in_rootfs, user_request
from shared.cri import api_pb2
from shared.errors import InvalidArgument
from shared.schema.monitord import ContainerUser

PASSWD = "root:x:0:0:root:/root:/bin/sh\napp:x:1000:1001::/home/app:/bin/sh\nnobody:x:65534:65534::/:/bin/false\n"
GROUP = "root:x:0:\nappgrp:x:1001:\nwheel:x:10:app,other\nvideo:x:44:app\nstaff:x:50:other\n"


@pytest.fixture
def rootfs(tmp_path: Path) -> Path:
    root = tmp_path / "rootfs"
    (root / "etc").mkdir(parents=True)
    (root / "etc" / "passwd").write_text(PASSWD)
    (root / "etc" / "group").write_text(GROUP)
    return root


def _sc(**fields) -> api_pb2.LinuxContainerSecurityContext:
    return api_pb2.LinuxContainerSecurityContext(**fields)


def test_named_user_gets_primary_gid_and_member_groups(rootfs):
    user = resolve_user_in_rootfs(str(rootfs), UserRequest("app"))
    assert user == ContainerUser(uid=1000, gid=1001, supplemental_groups=(10, 44))


def test_numeric_uid_known_to_passwd_takes_its_primary_group(rootfs):
    assert resolve_user_in_rootfs(str(rootfs), UserRequest("1000")).gid == 1001


def test_numeric_uid_unknown_to_passwd_runs_with_gid_zero(rootfs):
    assert resolve_user_in_rootfs(str(rootfs), UserRequest("4242")) == ContainerUser(4242, 0, ())


@pytest.mark.parametrize(("user", "group", "gid"), [("app", "wheel", 10), ("app", "77", 77), ("0", "appgrp", 1001)])
def test_explicit_group_by_name_or_number_replaces_the_primary(rootfs, user, group, gid):
    assert resolve_user_in_rootfs(str(rootfs), UserRequest(user, group)).gid == gid


def test_unknown_user_name_is_invalid_and_named(rootfs):
    with pytest.raises(InvalidArgument, match="'ghost'"):
        resolve_user_in_rootfs(str(rootfs), UserRequest("ghost"))


def test_unknown_group_name_is_invalid_and_named(rootfs):
    with pytest.raises(InvalidArgument, match="'nogroup'"):
        resolve_user_in_rootfs(str(rootfs), UserRequest("app", "nogroup"))


def test_strict_policy_ignores_etc_group_but_keeps_the_requested_groups(rootfs):
    request = UserRequest("app", supplemental_groups=(3000,), strict_groups=True)
    assert resolve_user_in_rootfs(str(rootfs), request).supplemental_groups == (3000,)


def test_merge_policy_adds_requested_groups_after_etc_group_without_duplicates(rootfs):
    request = UserRequest("app", supplemental_groups=(44, 3000))
    assert resolve_user_in_rootfs(str(rootfs), request).supplemental_groups == (10, 44, 3000)


def test_security_context_uid_overrides_the_image_user():
    request = user_request(_sc(run_as_user=api_pb2.Int64Value(value=1000)), "nobody:staff")
    assert (request.user, request.group) == ("1000", "")


def test_security_context_username_and_group_override_the_image_user():
    request = user_request(_sc(run_as_username="app", run_as_group=api_pb2.Int64Value(value=5)), "nobody")
    assert (request.user, request.group) == ("app", "5")


def test_image_user_with_group_is_split():
    request = user_request(_sc(), "app:wheel")
    assert (request.user, request.group) == ("app", "wheel")


def test_run_as_user_zero_is_honoured_as_set():
    request = user_request(_sc(run_as_user=api_pb2.Int64Value(value=0)), "app")
    assert request.user == "0"


def test_strict_policy_comes_from_the_security_context():
    assert user_request(_sc(supplemental_groups_policy=api_pb2.Strict), "").strict_groups


@pytest.mark.parametrize(("user", "expected"), [("", ContainerUser(0, 0)), ("root", ContainerUser(0, 0)),
                                                 ("123", ContainerUser(123, 0))])
def test_missing_passwd_allows_only_root_and_numeric_users(tmp_path, user, expected):
    (tmp_path / "etc").mkdir()
    assert resolve_user_in_rootfs(str(tmp_path), UserRequest(user)) == expected


def test_missing_passwd_refuses_a_named_user(tmp_path):
    with pytest.raises(InvalidArgument, match=r"'app'.*missing"):
        resolve_user_in_rootfs(str(tmp_path), UserRequest("app"))


def test_passwd_symlinked_to_an_absolute_host_path_reads_the_rootfs_file(rootfs):
    # /etc/passwd -> /etc/real-passwd must mean <rootfs>/etc/real-passwd, as chroot would.
    (rootfs / "etc" / "real-passwd").write_text("svc:x:777:778::/:/bin/sh\n")
    (rootfs / "etc" / "passwd").unlink()
    os.symlink("/etc/real-passwd", rootfs / "etc" / "passwd")
    assert resolve_user_in_rootfs(str(rootfs), UserRequest("svc")).uid == 777


def test_passwd_symlinked_to_the_hosts_passwd_never_reads_the_host(rootfs):
    # The host's /etc/passwd has root; a rootfs pointing at "/etc/passwd" of nowhere finds nothing.
    (rootfs / "etc" / "passwd").unlink()
    os.symlink("/../../../../etc/shadow-host-only", rootfs / "etc" / "passwd")
    assert read_in_rootfs(str(rootfs), "/etc/passwd") is None
    with pytest.raises(InvalidArgument):
        resolve_user_in_rootfs(str(rootfs), UserRequest("daemon"))  # exists on the host, not here


def test_relative_symlink_climbing_out_stays_in_the_rootfs(rootfs, tmp_path):
    (tmp_path / "outside").write_text("evil:x:1:1::/:/bin/sh\n")
    (rootfs / "etc" / "passwd").unlink()
    os.symlink("../../../../outside", rootfs / "etc" / "passwd")  # ".." stops at the rootfs
    assert read_in_rootfs(str(rootfs), "/etc/passwd") is None


def test_symlinked_etc_directory_is_followed_inside_the_rootfs(rootfs):
    os.rename(rootfs / "etc", rootfs / "real-etc")
    os.symlink("/real-etc", rootfs / "etc")
    assert resolve_user_in_rootfs(str(rootfs), UserRequest("app")).uid == 1000


def test_symlink_loop_fails_cleanly(rootfs):
    (rootfs / "etc" / "passwd").unlink()
    os.symlink("/etc/loop-b", rootfs / "etc" / "passwd")
    os.symlink("/etc/passwd", rootfs / "etc" / "loop-b")
    with pytest.raises(InvalidArgument, match="too many levels"):
        resolve_user_in_rootfs(str(rootfs), UserRequest("app"))


def test_passwd_that_is_a_fifo_is_refused_without_blocking(rootfs):
    (rootfs / "etc" / "passwd").unlink()
    os.mkfifo(rootfs / "etc" / "passwd")
    with pytest.raises(InvalidArgument, match="not a regular file"):
        resolve_user_in_rootfs(str(rootfs), UserRequest("app"))


def test_passwd_that_is_a_directory_is_refused(rootfs):
    (rootfs / "etc" / "passwd").unlink()
    (rootfs / "etc" / "passwd").mkdir()
    with pytest.raises(InvalidArgument):
        resolve_user_in_rootfs(str(rootfs), UserRequest("app"))


def test_malformed_passwd_lines_do_not_hide_valid_ones(rootfs):
    (rootfs / "etc" / "passwd").write_text("garbage\nbad:x:notanumber:0::/:/bin/sh\napp:x:1000:1001::/:/bin/sh\n")
    assert resolve_user_in_rootfs(str(rootfs), UserRequest("app")).uid == 1000

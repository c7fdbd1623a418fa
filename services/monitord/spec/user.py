"""Who the container's process runs as: uid, primary gid and supplemental groups.

The CRI security context wins over the image's `User`. Names, the primary group of a uid,
and the groups a user belongs to come from the container's own /etc/passwd and /etc/group,
read through `read_in_rootfs` so a symlink in the image can never make us read the host's.
"""

from __future__ import annotations

from dataclasses import dataclass

from services.monitord.spec.rootfs_file import read_in_rootfs
from shared.cri import api_pb2
from shared.errors import InvalidArgument
from shared.schema.monitord import ContainerUser


@dataclass(frozen=True)
class PasswdEntry:
    name: str
    uid: int
    gid: int


@dataclass(frozen=True)
class GroupEntry:
    name: str
    gid: int
    members: tuple[str, ...]


def parse_passwd(text: str) -> tuple[PasswdEntry, ...]:
    entries = []
    for line in text.splitlines():
        fields = line.split(":")
        if len(fields) < 4 or line.startswith("#"):
            continue
        try:
            entries.append(PasswdEntry(fields[0], int(fields[2]), int(fields[3])))
        except ValueError:
            continue  # a malformed line must not hide the others
    return tuple(entries)


def parse_group(text: str) -> tuple[GroupEntry, ...]:
    entries = []
    for line in text.splitlines():
        fields = line.split(":")
        if len(fields) < 3 or line.startswith("#"):
            continue
        try:
            gid = int(fields[2])
        except ValueError:
            continue
        members = tuple(m.strip() for m in fields[3].split(",") if m.strip()) if len(fields) > 3 else ()
        entries.append(GroupEntry(fields[0], gid, members))
    return tuple(entries)


@dataclass(frozen=True)
class UserRequest:
    """What was asked for, before resolution: each part a name, a number, or empty."""

    user: str
    group: str = ""
    supplemental_groups: tuple[int, ...] = ()
    strict_groups: bool = False  # SupplementalGroupsPolicy Strict: nothing from /etc/group


def user_request(sc: api_pb2.LinuxContainerSecurityContext, image_user: str) -> UserRequest:
    """The CRI's run_as_user / run_as_username (+ run_as_group) override the image's User."""
    if sc.HasField("run_as_group") and not (sc.HasField("run_as_user") or sc.run_as_username):
        raise InvalidArgument("run_as_group is set without run_as_user or run_as_username")
    user, _, group = image_user.partition(":")
    if sc.HasField("run_as_user"):
        user, group = str(sc.run_as_user.value), ""
    elif sc.run_as_username:
        user, group = sc.run_as_username, ""
    if sc.HasField("run_as_group"):
        group = str(sc.run_as_group.value)
    return UserRequest(
        user=user,
        group=group,
        supplemental_groups=tuple(sc.supplemental_groups),
        strict_groups=sc.supplemental_groups_policy == api_pb2.Strict,
    )


def resolve_user(
    request: UserRequest, passwd: tuple[PasswdEntry, ...] | None, groups: tuple[GroupEntry, ...] | None
) -> ContainerUser:
    """Resolve against parsed files; None stands for a file the rootfs does not have."""
    entry = _find_user(request.user, passwd or ())
    if entry is None:
        if request.user in ("", "root"):
            entry = PasswdEntry("root", 0, 0)
        elif request.user.isdigit():
            entry = PasswdEntry("", int(request.user), 0)
        else:
            where = "/etc/passwd" if passwd is not None else "/etc/passwd (missing)"
            raise InvalidArgument(f"user {request.user!r} not found in the container's {where}")
    gid = entry.gid
    if request.group:
        gid = _group_id(request.group, groups)
    supplemental: list[int] = []
    if not request.strict_groups and entry.name:
        supplemental.extend(g.gid for g in groups or () if entry.name in g.members)
    supplemental.extend(request.supplemental_groups)
    return ContainerUser(uid=entry.uid, gid=gid, supplemental_groups=tuple(dict.fromkeys(supplemental)))


def resolve_user_in_rootfs(rootfs: str, request: UserRequest) -> ContainerUser:
    passwd = read_in_rootfs(rootfs, "/etc/passwd")
    group = read_in_rootfs(rootfs, "/etc/group")
    return resolve_user(
        request,
        parse_passwd(passwd.decode(errors="replace")) if passwd is not None else None,
        parse_group(group.decode(errors="replace")) if group is not None else None,
    )


def _find_user(user: str, passwd: tuple[PasswdEntry, ...]) -> PasswdEntry | None:
    if user.isdigit():
        return next((e for e in passwd if e.uid == int(user)), None)
    return next((e for e in passwd if e.name == (user or "root")), None)


def _group_id(group: str, groups: tuple[GroupEntry, ...] | None) -> int:
    if group.isdigit():
        return int(group)
    found = next((g for g in groups or () if g.name == group), None)
    if found is None:
        where = "/etc/group" if groups is not None else "/etc/group (missing)"
        raise InvalidArgument(f"group {group!r} not found in the container's {where}")
    return found.gid

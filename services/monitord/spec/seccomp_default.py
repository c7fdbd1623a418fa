"""criplex's RuntimeDefault seccomp profile, as data.

Everything not listed fails with EPERM. The list was written from the x86_64 and i386
syscall tables: what ordinary programs (shells, libcs, language runtimes, servers) call.
Left out are the calls that reach beyond the container: namespaces and mounts (unshare,
setns, mount, pivot_root), the kernel keyring (keyctl, add_key, request_key), modules,
kexec and reboot, clocks, tracing other processes, BPF and perf, swap, quotas, accounting.
Some of those come back when the container holds the capability that guards them
(`CAPABILITY_SYSCALLS`).
"""

from __future__ import annotations

ARCHITECTURES = ("SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32")
EPERM = 1
ENOSYS = 38

# x86_64 names first, then the i386-only spellings (libseccomp ignores a name an arch lacks).
ALLOWED_SYSCALLS = (
    # files and descriptors
    "read", "write", "open", "close", "stat", "fstat", "lstat", "poll", "lseek", "pread64", "pwrite64",
    "readv", "writev", "preadv", "pwritev", "preadv2", "pwritev2", "access", "pipe", "pipe2", "dup", "dup2",
    "dup3", "fcntl", "flock", "fsync", "fdatasync", "truncate", "ftruncate", "getdents", "getdents64",
    "getcwd", "chdir", "fchdir", "rename", "renameat", "renameat2", "mkdir", "mkdirat", "rmdir", "creat",
    "link", "linkat", "unlink", "unlinkat", "symlink", "symlinkat", "readlink", "readlinkat", "chmod",
    "fchmod", "fchmodat", "fchmodat2", "chown", "fchown", "lchown", "fchownat", "umask", "openat", "openat2",
    "newfstatat", "statx", "faccessat", "faccessat2", "utime", "utimes", "utimensat", "futimesat", "mknod",
    "mknodat", "statfs", "fstatfs", "sync", "syncfs", "sync_file_range", "fallocate", "fadvise64",
    "readahead", "sendfile", "splice", "tee", "vmsplice", "copy_file_range", "close_range", "ioctl",
    "select", "pselect6", "ppoll", "epoll_create", "epoll_create1", "epoll_ctl", "epoll_wait",
    "epoll_pwait", "epoll_pwait2", "eventfd", "eventfd2", "signalfd", "signalfd4", "timerfd_create",
    "timerfd_settime", "timerfd_gettime", "inotify_init", "inotify_init1", "inotify_add_watch",
    "inotify_rm_watch", "memfd_create", "getxattr", "lgetxattr", "fgetxattr", "setxattr", "lsetxattr",
    "fsetxattr", "listxattr", "llistxattr", "flistxattr", "removexattr", "lremovexattr", "fremovexattr",
    "io_setup", "io_destroy", "io_getevents", "io_submit", "io_cancel", "io_pgetevents", "io_uring_setup",
    "io_uring_enter", "io_uring_register", "fanotify_mark",
    # memory
    "brk", "mmap", "munmap", "mprotect", "mremap", "msync", "mincore", "madvise", "mlock", "mlock2",
    "munlock", "mlockall", "munlockall", "remap_file_pages", "membarrier", "pkey_alloc", "pkey_free",
    "pkey_mprotect", "process_madvise", "process_mrelease", "map_shadow_stack",
    # processes, threads, signals
    "fork", "vfork", "execve", "execveat", "exit", "exit_group", "wait4", "waitid", "kill", "tkill",
    "tgkill", "getpid", "getppid", "gettid", "getpgrp", "getpgid", "setpgid", "getsid", "setsid",
    "rt_sigaction", "rt_sigprocmask", "rt_sigreturn", "rt_sigpending", "rt_sigtimedwait", "rt_sigqueueinfo",
    "rt_tgsigqueueinfo", "rt_sigsuspend", "sigaltstack", "pause", "set_tid_address", "set_robust_list",
    "get_robust_list", "futex", "futex_waitv", "futex_wake", "futex_wait", "futex_requeue", "sched_yield",
    "sched_getaffinity", "sched_setaffinity", "sched_getparam", "sched_setparam", "sched_getscheduler",
    "sched_setscheduler", "sched_get_priority_max", "sched_get_priority_min", "sched_rr_get_interval",
    "sched_getattr", "sched_setattr", "getpriority", "setpriority", "ioprio_get", "ioprio_set", "prctl",
    "arch_prctl", "rseq", "restart_syscall", "pidfd_open", "pidfd_send_signal", "pidfd_getfd",
    "seccomp", "capget", "capset", "personality", "getrlimit", "setrlimit", "prlimit64", "getrusage",
    "times", "uname", "sysinfo", "getrandom", "get_thread_area", "set_thread_area", "landlock_create_ruleset",
    "landlock_add_rule", "landlock_restrict_self",
    # credentials
    "getuid", "geteuid", "getgid", "getegid", "setuid", "setgid", "setreuid", "setregid", "setresuid",
    "setresgid", "getresuid", "getresgid", "getgroups", "setgroups", "setfsuid", "setfsgid",
    # time
    "nanosleep", "clock_nanosleep", "clock_gettime", "clock_getres", "gettimeofday", "time", "alarm",
    "getitimer", "setitimer", "timer_create", "timer_settime", "timer_gettime", "timer_getoverrun",
    "timer_delete",
    # networking
    "socket", "socketpair", "connect", "accept", "accept4", "bind", "listen", "getsockname", "getpeername",
    "sendto", "recvfrom", "sendmsg", "recvmsg", "sendmmsg", "recvmmsg", "shutdown", "setsockopt",
    "getsockopt",
    # System V and POSIX IPC (namespaced by the pod's IPC namespace)
    "shmget", "shmat", "shmctl", "shmdt", "semget", "semop", "semctl", "semtimedop", "msgget", "msgsnd",
    "msgrcv", "msgctl", "mq_open", "mq_unlink", "mq_timedsend", "mq_timedreceive", "mq_notify",
    "mq_getsetattr",
    # i386 and x32 spellings of the above
    "_llseek", "_newselect", "fstat64", "fstatat64", "lstat64", "stat64", "statfs64", "fstatfs64",
    "fcntl64", "ftruncate64", "truncate64", "sendfile64", "fadvise64_64", "mmap2",
    "getuid32", "geteuid32", "getgid32", "getegid32", "setuid32", "setgid32", "setreuid32", "setregid32",
    "setresuid32", "setresgid32", "getresuid32", "getresgid32", "getgroups32", "setgroups32", "setfsuid32",
    "setfsgid32", "chown32", "fchown32", "lchown32", "ugetrlimit", "sigaction", "sigprocmask", "sigreturn",
    "sigpending", "sigsuspend", "signal", "waitpid", "socketcall", "ipc", "readdir", "oldfstat", "oldlstat",
    "oldstat", "olduname", "nice", "sgetmask", "ssetmask", "clock_gettime64",
    "clock_nanosleep_time64", "clock_getres_time64", "futex_time64", "ppoll_time64", "pselect6_time64",
    "recvmmsg_time64", "rt_sigtimedwait_time64", "semtimedop_time64", "timer_gettime64", "timer_settime64",
    "timerfd_gettime64", "timerfd_settime64", "utimensat_time64", "io_pgetevents_time64",
    "sched_rr_get_interval_time64", "mq_timedsend_time64", "mq_timedreceive_time64",
)  # fmt: skip

# Allowed only when the container holds the capability: the capability is what the kernel
# checks anyway, so the filter then adds nothing but would break the legitimate user.
CAPABILITY_SYSCALLS: dict[str, tuple[str, ...]] = {
    "CAP_SYS_ADMIN": (
        "mount", "umount", "umount2", "unshare", "setns", "pivot_root", "clone3", "fsopen", "fsconfig",
        "fsmount", "fspick", "move_mount", "open_tree", "mount_setattr", "quotactl", "quotactl_fd",
        "lookup_dcookie", "name_to_handle_at", "fanotify_init", "bpf", "perf_event_open", "setdomainname",
        "sethostname", "swapon", "swapoff", "syslog", "vhangup", "iopl", "ioperm",
    ),
    "CAP_SYS_PTRACE": ("ptrace", "process_vm_readv", "process_vm_writev", "kcmp"),
    "CAP_SYS_BOOT": ("reboot",),
    "CAP_SYS_MODULE": ("init_module", "finit_module", "delete_module"),
    "CAP_SYS_TIME": ("settimeofday", "stime", "clock_settime", "clock_settime64", "adjtimex", "clock_adjtime",
                     "clock_adjtime64"),
    "CAP_SYS_CHROOT": ("chroot",),
    "CAP_SYS_PACCT": ("acct",),
    "CAP_SYS_RAWIO": ("iopl", "ioperm"),
    "CAP_SYSLOG": ("syslog",),
    "CAP_DAC_READ_SEARCH": ("open_by_handle_at",),
    "CAP_SYS_NICE": ("get_mempolicy", "set_mempolicy", "mbind", "move_pages", "set_mempolicy_home_node"),
    "CAP_BPF": ("bpf",),
    "CAP_PERFMON": ("perf_event_open",),
    "CAP_SYS_TTY_CONFIG": ("vhangup",),
}  # fmt: skip

# The namespace-creating clone flags: CLONE_NEWNS, CLONE_NEWCGROUP, CLONE_NEWUTS, CLONE_NEWIPC,
# CLONE_NEWUSER, CLONE_NEWPID, CLONE_NEWNET (and CLONE_NEWTIME's 0x80 is clone3/unshare only).
CLONE_NAMESPACE_FLAGS = 0x7E020000

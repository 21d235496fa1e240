//! `--print-requirements`.

/// What the agent needs from its host, for `--print-requirements` (the deploy manifests are
/// tested against it): host paths it reads, whether it needs the host pid namespace, and the
/// Kubernetes API resources it reads.
pub fn requirements() -> serde_json::Value {
    serde_json::json!({
        "host_paths": [super::VMLINUX_BTF_DIR, super::tracefs::TRACEFS, "/sys/fs/cgroup"],
        // Read only when configured: network namespaces named by --conntrack-netns.
        "optional_host_paths": ["/run/netns"],
        "host_pid": true,
        // Conntrack expiries of the node: ctnetlink in the host network namespace.
        "host_network": true,
        "capabilities": ["BPF", "NET_ADMIN", "PERFMON", "SYS_ADMIN", "SYS_PTRACE", "SYS_RESOURCE", "SYSLOG"],
        "capability_uses": {
            "BPF": "load the kernel programs, create and read their maps",
            "PERFMON": "attach tracepoints, kprobes and fentry programs; programs read kernel memory",
            "NET_ADMIN": "ctnetlink subscriptions: conntrack expiries and settings",
            "SYS_ADMIN": "mount tracefs where the host has not; enter the namespaces of --conntrack-netns (setns)",
            "SYS_PTRACE": "name the file behind a Wasm runtime's stdout/stderr fd (/proc/PID/fd) for processes of other users",
            "SYSLOG": "read per-CPU symbol addresses in /proc/kallsyms where kernel BTF lacks them (e.g. Debian 11's 5.10), to locate the preempt count",
            "SYS_RESOURCE": "raise RLIMIT_MEMLOCK where the kernel charges BPF memory to it (before 5.11, e.g. Debian 11's 5.10)",
        },
        // Pods of this node, Services and EndpointSlices (list/watch); this node (get), for
        // the cluster name in its labels.
        "api_resources": ["endpointslices", "nodes", "pods", "services"],
    })
}

/// Kernels before 5.11 charge BPF maps to RLIMIT_MEMLOCK (containers often get 64 KiB-8 MiB):
/// lift it, as aya's template does. Later kernels charge the memory cgroup and ignore it.
pub(super) fn raise_memlock() {
    let unlimited = libc::rlimit {
        rlim_cur: libc::RLIM_INFINITY,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: setrlimit with a valid struct.
    if unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &unlimited) } != 0 {
        tracing::debug!(
            "RLIMIT_MEMLOCK stays as it is ({}): fine where BPF memory is charged to the memory \
             cgroup (5.11+); older kernels need CAP_SYS_RESOURCE or a larger limit",
            std::io::Error::last_os_error()
        );
    }
}

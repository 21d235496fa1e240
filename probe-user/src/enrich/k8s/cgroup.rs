//! cgroup paths -> (pod UID, container id, runtime), for the layouts kubelet and the container
//! runtimes create: containerd, CRI-O and Docker (cri-dockerd), with the systemd and the
//! cgroupfs cgroup drivers, in every QoS class, on cgroup v2 and v1. Also cgroup id -> path,
//! by the directory inode (a cgroup v2 id is its directory's inode number).

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

/// Where cgroup v2 is mounted: /sys/fs/cgroup on unified hosts, /sys/fs/cgroup/unified on
/// hybrid ones (from /proc/self/mountinfo, escaped paths decoded; the default when none is
/// found).
pub fn cgroup2_root() -> PathBuf {
    procfs::process::Process::myself()
        .and_then(|me| me.mountinfo())
        .ok()
        .and_then(|mounts| {
            mounts
                .into_iter()
                .find(|m| m.fs_type == "cgroup2")
                .map(|m| m.mount_point)
        })
        .unwrap_or_else(|| PathBuf::from("/sys/fs/cgroup"))
}

/// What a container's cgroup path says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerCgroup {
    /// The pod UID with dashes (`systemd` slices spell them as underscores).
    pub pod_uid: String,
    /// The container id (64 hex digits), or None for the pod-level cgroup itself.
    pub container_id: Option<String>,
    /// `containerd`, `cri-o` or `docker`; None when the layout does not say (cgroupfs driver
    /// with containerd or Docker: a bare id).
    pub runtime: Option<&'static str>,
}

/// Parses a cgroup path (relative to the hierarchy root, or absolute under /sys/fs/cgroup).
/// None when it is not under a kubepods hierarchy.
pub fn parse(path: &str) -> Option<ContainerCgroup> {
    let parts: Vec<&str> = path.split('/').filter(|p| !p.is_empty()).collect();
    let kube = parts
        .iter()
        .position(|p| *p == "kubepods" || *p == "kubepods.slice")?;
    let mut pod_uid = None;
    let mut container = None;
    for part in &parts[kube + 1..] {
        if pod_uid.is_none() {
            pod_uid = pod_segment(part);
            continue;
        }
        container = Some(*part);
        break;
    }
    let pod_uid = pod_uid?;
    let (container_id, runtime) = match container {
        None => (None, None),
        Some(c) => {
            let (id, runtime) = container_segment(c)?;
            (Some(id), runtime)
        }
    };
    Some(ContainerCgroup {
        pod_uid,
        container_id,
        runtime,
    })
}

/// `pod<uid>` (cgroupfs) or `kubepods[-<qos>]-pod<uid_with_underscores>.slice` (systemd).
fn pod_segment(part: &str) -> Option<String> {
    let raw = if let Some(slice) = part.strip_suffix(".slice") {
        slice.rsplit_once("-pod")?.1
    } else {
        part.strip_prefix("pod")?
    };
    let uid = raw.replace('_', "-");
    is_uid(&uid).then_some(uid)
}

/// `cri-containerd-<id>.scope`, `crio-<id>.scope`, `docker-<id>.scope` (systemd), `crio-<id>`
/// or a bare `<id>` (cgroupfs). `crio-conmon-<id>` is the runtime monitor, not the container.
fn container_segment(part: &str) -> Option<(String, Option<&'static str>)> {
    let name = part.strip_suffix(".scope").unwrap_or(part);
    let (id, runtime) = if let Some(id) = name.strip_prefix("cri-containerd-") {
        (id, Some("containerd"))
    } else if let Some(id) = name.strip_prefix("crio-") {
        (id, Some("cri-o"))
    } else if let Some(id) = name.strip_prefix("docker-") {
        (id, Some("docker"))
    } else {
        (name, None)
    };
    is_container_id(id).then(|| (id.to_owned(), runtime))
}

fn is_container_id(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

fn is_uid(s: &str) -> bool {
    s.len() == 36
        && s.bytes().enumerate().all(|(i, b)| {
            matches!(i, 8 | 13 | 18 | 23) == (b == b'-') && (b == b'-' || b.is_ascii_hexdigit())
        })
}

/// The cgroup path of a process that names a pod container, from /proc/PID/cgroup: the v2
/// (`0::`) line first, else the v1 hierarchies' (hybrid and v1 hosts, where kubelet may put
/// containers in v1 controllers only).
pub fn path_of_pid(pid: u32) -> Option<String> {
    let groups = procfs::process::Process::new(i32::try_from(pid).ok()?)
        .and_then(|p| p.cgroups())
        .ok()?;
    let v2 = groups.0.iter().filter(|g| g.hierarchy == 0);
    let v1 = groups.0.iter().filter(|g| g.hierarchy != 0);
    v2.chain(v1)
        .map(|g| g.pathname.as_str())
        .find(|p| parse(p).is_some())
        .map(str::to_owned)
}

/// cgroup id -> path, found by walking the kubepods subtrees of the cgroup v2 mount. Misses
/// are remembered for `negative_ttl` so a busy non-Kubernetes cgroup does not cause a walk per
/// event; a walk happens at most once per `walk_every`. A cgroup a walk saw is still resolved
/// for `removed_keep` after it is gone: a container that crashed is removed by its runtime
/// while the records of its last moments (a core-dumping signal held until the exit) are on
/// their way.
pub struct CgroupPaths {
    root: PathBuf,
    known: HashMap<u64, Known>,
    misses: HashMap<u64, Instant>,
    last_walk: Option<Instant>,
    walk_every: Duration,
    negative_ttl: Duration,
    removed_keep: Duration,
    /// `/proc/PID/cgroup` read for a process whose cgroup id named no pod (v1 and hybrid
    /// hosts), kept `negative_ttl`: a storm from one process reads it once.
    by_pid: HashMap<u32, (Option<String>, Instant)>,
    /// The highest cgroup id the last walk saw: kernfs ids grow, so a higher one is a cgroup
    /// made since (a container that just started), worth a walk right away.
    newest: u64,
}

impl CgroupPaths {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self {
            root: root.into(),
            known: HashMap::new(),
            misses: HashMap::new(),
            last_walk: None,
            walk_every: Duration::from_millis(200),
            negative_ttl: Duration::from_secs(30),
            removed_keep: Duration::from_secs(120),
            by_pid: HashMap::new(),
            newest: 0,
        }
    }

    /// Walks now unless a walk happened within `walk_every` (new containers of known pods).
    pub fn refresh(&mut self, now: Instant) {
        if self
            .last_walk
            .is_none_or(|t| now.duration_since(t) >= self.walk_every)
        {
            self.walk(now);
        }
    }

    /// Makes cgroup `id` known (walks for it as [`Self::path`] would) without taking its path.
    pub fn note(&mut self, id: u64, now: Instant) {
        if !self.known.contains_key(&id) {
            let _ = self.path(id, now);
        }
    }

    /// The path (relative to the cgroup root, starting with `/`) of cgroup `id`.
    pub fn path(&mut self, id: u64, now: Instant) -> Option<String> {
        if let Some(k) = self.known.get(&id) {
            return Some(k.path.clone());
        }
        if self
            .misses
            .get(&id)
            .is_some_and(|t| now.duration_since(*t) < self.negative_ttl)
        {
            return None;
        }
        if id > self.newest
            || self
                .last_walk
                .is_none_or(|t| now.duration_since(t) >= self.walk_every)
        {
            self.walk(now);
        }
        match self.known.get(&id) {
            Some(k) => Some(k.path.clone()),
            None => {
                if self.misses.len() > 65536 {
                    self.misses.clear();
                }
                self.misses.insert(id, now);
                None
            }
        }
    }

    /// The pod cgroup path of process `pid` from `/proc/PID/cgroup` ([`path_of_pid`]), read
    /// at most once per `negative_ttl` per process.
    pub fn path_of_pid(&mut self, pid: u32, now: Instant) -> Option<String> {
        if let Some((path, at)) = self.by_pid.get(&pid)
            && now.duration_since(*at) < self.negative_ttl
        {
            return path.clone();
        }
        if self.by_pid.len() >= MAX_KNOWN {
            self.by_pid.clear();
        }
        let path = path_of_pid(pid);
        self.by_pid.insert(pid, (path.clone(), now));
        path
    }

    /// Updates the map from the cgroups that exist now; removed ones stay `removed_keep` after
    /// the last walk that saw them, then drop out (cgroup ids are 64-bit kernfs ids, not
    /// reused, so a kept entry cannot mislabel).
    fn walk(&mut self, now: Instant) {
        self.last_walk = Some(now);
        for top in ["kubepods.slice", "kubepods"] {
            let dir = self.root.join(top);
            if dir.is_dir() {
                self.walk_dir(&dir, 0, now);
            }
        }
        let keep = self.removed_keep;
        self.known
            .retain(|_, k| k.seen == now || now.duration_since(k.seen) < keep);
        if self.known.len() > MAX_KNOWN {
            self.known.retain(|_, k| k.seen == now);
        }
    }

    fn walk_dir(&mut self, dir: &Path, depth: usize, now: Instant) {
        use std::os::unix::fs::MetadataExt as _;
        if depth > 4 {
            return;
        }
        if let (Ok(meta), Ok(rel)) = (std::fs::metadata(dir), dir.strip_prefix(&self.root)) {
            let path = format!("/{}", rel.display());
            self.misses.remove(&meta.ino());
            self.newest = self.newest.max(meta.ino());
            self.known.insert(meta.ino(), Known { path, seen: now });
        }
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for entry in entries.flatten() {
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                self.walk_dir(&entry.path(), depth + 1, now);
            }
        }
    }

    /// The cgroup v2 mount this map reads.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The cgroups the last walk saw (not the removed ones still kept).
    pub fn known_ids(&self) -> impl Iterator<Item = (&u64, &String)> {
        let last = self.last_walk;
        self.known
            .iter()
            .filter(move |(_, k)| Some(k.seen) == last)
            .map(|(id, k)| (id, &k.path))
    }
}

/// A cgroup's path and the last walk that saw it.
struct Known {
    path: String,
    seen: Instant,
}

/// Cgroups remembered at most (present and recently removed): beyond it, removed ones are
/// forgotten at once.
const MAX_KNOWN: usize = 65_536;

#[cfg(test)]
mod tests {
    use super::*;

    const UID: &str = "6a5e5d5c-1f2b-4c3d-9e8f-0a1b2c3d4e5f";
    const ID: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    #[test]
    fn layouts_of_every_runtime_driver_and_qos_class() {
        let u = UID.replace('-', "_");
        let table: Vec<(String, Option<&str>)> = vec![
            // containerd, systemd driver, v2: burstable, besteffort, guaranteed.
            (
                format!(
                    "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{u}.slice/cri-containerd-{ID}.scope"
                ),
                Some("containerd"),
            ),
            (
                format!(
                    "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{u}.slice/cri-containerd-{ID}.scope"
                ),
                Some("containerd"),
            ),
            (
                format!("/kubepods.slice/kubepods-pod{u}.slice/cri-containerd-{ID}.scope"),
                Some("containerd"),
            ),
            // CRI-O, systemd driver.
            (
                format!(
                    "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{u}.slice/crio-{ID}.scope"
                ),
                Some("cri-o"),
            ),
            // Docker (cri-dockerd), systemd driver.
            (
                format!(
                    "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{u}.slice/docker-{ID}.scope"
                ),
                Some("docker"),
            ),
            // cgroupfs driver: containerd and Docker use the bare id, CRI-O prefixes it.
            (format!("/kubepods/burstable/pod{UID}/{ID}"), None),
            (format!("/kubepods/besteffort/pod{UID}/{ID}"), None),
            (format!("/kubepods/pod{UID}/{ID}"), None),
            (
                format!("/kubepods/burstable/pod{UID}/crio-{ID}"),
                Some("cri-o"),
            ),
            // cgroup v1: the same paths under a controller's hierarchy, as /proc/PID/cgroup
            // and the mount show them.
            (
                format!("/sys/fs/cgroup/memory/kubepods/burstable/pod{UID}/{ID}"),
                None,
            ),
            (
                format!(
                    "/sys/fs/cgroup/cpu,cpuacct/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{u}.slice/docker-{ID}.scope"
                ),
                Some("docker"),
            ),
            // kind / nested: a prefix before kubepods.
            (
                format!(
                    "/kubelet.slice/kubelet-kubepods.slice/kubepods.slice/kubepods-pod{u}.slice/cri-containerd-{ID}.scope"
                ),
                Some("containerd"),
            ),
        ];
        for (path, runtime) in table {
            let c = parse(&path).unwrap_or_else(|| panic!("{path}"));
            assert_eq!(c.pod_uid, UID, "{path}");
            assert_eq!(c.container_id.as_deref(), Some(ID), "{path}");
            assert_eq!(c.runtime, runtime, "{path}");
        }
    }

    #[test]
    fn pod_level_and_foreign_paths() {
        let u = UID.replace('-', "_");
        let pod = parse(&format!(
            "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{u}.slice"
        ))
        .unwrap();
        assert_eq!((pod.pod_uid.as_str(), pod.container_id), (UID, None));
        for path in [
            "/".to_owned(),
            "/user.slice/user-0.slice/session-1.scope".to_owned(),
            "/system.slice/containerd.service".to_owned(),
            "/kubepods.slice/kubepods-burstable.slice".to_owned(),
            format!("/kubepods/burstable/pod{UID}/crio-conmon-{ID}"),
            format!("/kubepods/burstable/podnot-a-uid/{ID}"),
            format!("/kubepods/burstable/pod{UID}/{}", &ID[..63]),
        ] {
            assert_eq!(parse(&path), None, "{path}");
        }
    }

    #[test]
    fn ids_resolve_by_directory_inode_with_a_negative_cache() {
        use std::os::unix::fs::MetadataExt as _;
        let root = std::env::temp_dir().join(format!("probe-cgroup-test-{}", std::process::id()));
        let u = UID.replace('-', "_");
        let rel = format!("kubepods.slice/kubepods-pod{u}.slice/cri-containerd-{ID}.scope");
        std::fs::create_dir_all(root.join(&rel)).unwrap();
        let ino = std::fs::metadata(root.join(&rel)).unwrap().ino();
        let mut paths = CgroupPaths::new(&root);
        let t0 = Instant::now();
        assert_eq!(paths.path(ino, t0), Some(format!("/{rel}")));
        // Unknown: walked once, then remembered as a miss.
        assert_eq!(paths.path(1, t0 + Duration::from_secs(1)), None);
        let later = format!(
            "kubepods.slice/kubepods-pod{u}.slice/cri-containerd-{}.scope",
            "f".repeat(64)
        );
        std::fs::create_dir_all(root.join(&later)).unwrap();
        let ino2 = std::fs::metadata(root.join(&later)).unwrap().ino();
        assert_eq!(
            paths.path(ino2, t0 + Duration::from_secs(2)),
            Some(format!("/{later}"))
        );
        // A container that started right after a walk (a newer id): walked for at once, not
        // taken for a miss until the next periodic walk.
        let newest = format!(
            "kubepods.slice/kubepods-pod{u}.slice/cri-containerd-{}.scope",
            "e".repeat(64)
        );
        std::fs::create_dir_all(root.join(&newest)).unwrap();
        let ino3 = std::fs::metadata(root.join(&newest)).unwrap().ino();
        // cgroupfs ids grow; this test directory's inodes need not, so the last walk's newest
        // id is set below the new one as cgroupfs would have it.
        paths.newest = paths.newest.min(ino3 - 1);
        let right_after = t0 + Duration::from_secs(2) + Duration::from_millis(1);
        assert_eq!(paths.path(ino3, right_after), Some(format!("/{newest}")));
        // A removed container's cgroup is no longer among the present ones at the next walk,
        // but still resolves (its last records are on their way) until `removed_keep` after.
        std::fs::remove_dir(root.join(&rel)).unwrap();
        assert_eq!(paths.path(2, t0 + Duration::from_secs(3)), None);
        assert!(paths.known_ids().all(|(id, _)| *id != ino));
        assert!(paths.known_ids().any(|(id, _)| *id == ino3));
        assert_eq!(
            paths.path(ino, t0 + Duration::from_secs(4)),
            Some(format!("/{rel}"))
        );
        paths.refresh(t0 + Duration::from_secs(3) + paths.removed_keep);
        assert_eq!(
            paths.path(ino, t0 + Duration::from_secs(3) + paths.removed_keep),
            None
        );
        // A process outside any pod (this test): /proc/PID/cgroup is read once, then the
        // answer is kept.
        let me = std::process::id();
        assert_eq!(paths.path_of_pid(me, t0), None);
        assert_eq!(paths.path_of_pid(me, t0 + Duration::from_secs(1)), None);
        assert_eq!(paths.by_pid.get(&me).map(|(_, at)| *at), Some(t0));
        std::fs::remove_dir_all(&root).unwrap();
    }
}

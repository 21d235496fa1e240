//! Pods by network namespace. A network event the kernel handled where no task owns it (a
//! reset built in softirq, a drop) carries only its namespace's inode; the pod owning that
//! namespace is found through the processes of the pods' container cgroups
//! (`/proc/PID/ns/net`). Pods on the host network share the node's namespace and are never
//! the answer; neither is the node's own namespace, which is looked up at no cost.

use std::{
    collections::HashMap,
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use super::cgroup::{self, CgroupPaths};

/// A miss rescans at most this often; a hit older than `MAX_AGE` rescans too (namespace
/// inodes are reused once a namespace is gone).
const SCAN_EVERY: Duration = Duration::from_secs(1);
const MAX_AGE: Duration = Duration::from_secs(10);

pub struct PodNetns {
    proc_root: PathBuf,
    /// This agent's and init's namespaces: the node's network.
    node: Vec<u32>,
    /// netns inode -> (pod UID, a pid in it).
    by_inode: HashMap<u32, (String, u32)>,
    last_scan: Option<Instant>,
}

impl PodNetns {
    pub fn new(proc_root: impl Into<PathBuf>) -> Self {
        let proc_root = proc_root.into();
        let node = ["self", "1"]
            .iter()
            .filter_map(|p| netns_inode(&proc_root.join(p)))
            .collect();
        Self {
            proc_root,
            node,
            by_inode: HashMap::new(),
            last_scan: None,
        }
    }

    /// The UID of the pod (one `is_pod_network` accepts) whose network namespace is `netns`.
    pub fn pod_uid(
        &mut self,
        netns: u32,
        cgroups: &mut CgroupPaths,
        is_pod_network: impl Fn(&str) -> bool,
        now: Instant,
    ) -> Option<String> {
        if self.node.contains(&netns) {
            return None;
        }
        let age = self.last_scan.map(|t| now.duration_since(t));
        let hit = self.by_inode.contains_key(&netns);
        let stale = match age {
            None => true,
            Some(age) if hit => age >= MAX_AGE,
            Some(age) => age >= SCAN_EVERY,
        };
        if stale {
            self.scan(cgroups, &is_pod_network, now);
        }
        self.by_inode.get(&netns).map(|(uid, _)| uid.clone())
    }

    /// Every pod namespace as (netns inode, a pid in it, pod UID), looked up now.
    pub fn all(
        &mut self,
        cgroups: &mut CgroupPaths,
        is_pod_network: impl Fn(&str) -> bool,
        now: Instant,
    ) -> Vec<(u32, u32, String)> {
        self.scan(cgroups, &is_pod_network, now);
        self.by_inode
            .iter()
            .map(|(inode, (uid, pid))| (*inode, *pid, uid.clone()))
            .collect()
    }

    fn scan(
        &mut self,
        cgroups: &mut CgroupPaths,
        is_pod_network: &dyn Fn(&str) -> bool,
        now: Instant,
    ) {
        self.last_scan = Some(now);
        self.by_inode.clear();
        cgroups.refresh(now);
        let root = cgroups.root().to_owned();
        let mut seen = std::collections::HashSet::new();
        for (_, path) in cgroups.known_ids() {
            let Some(c) = cgroup::parse(path) else {
                continue;
            };
            if c.container_id.is_none() || seen.contains(&c.pod_uid) || !is_pod_network(&c.pod_uid)
            {
                continue;
            }
            let Some(pid) = first_pid(&root, path) else {
                continue;
            };
            let Some(inode) = netns_inode(&self.proc_root.join(pid.to_string())) else {
                continue;
            };
            if !self.node.contains(&inode) {
                seen.insert(c.pod_uid.clone());
                self.by_inode.insert(inode, (c.pod_uid, pid));
            }
        }
    }
}

fn first_pid(root: &Path, path: &str) -> Option<u32> {
    let procs =
        std::fs::read_to_string(root.join(path.trim_start_matches('/')).join("cgroup.procs"))
            .ok()?;
    procs.lines().next()?.trim().parse().ok()
}

fn netns_inode(proc_dir: &Path) -> Option<u32> {
    std::fs::metadata(proc_dir.join("ns/net"))
        .ok()
        .and_then(|m| u32::try_from(m.ino()).ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A process of this test in a new network namespace, in a cgroup named like a pod's
    /// container, stands for the pod; the node's namespace and unknown pods are never answered.
    #[test]
    fn a_pods_namespace_is_found_through_its_containers_processes() {
        let dir = std::env::temp_dir().join(format!("probe-netns-unit-{}", std::process::id()));
        let uid = "6a5e5d5c-1f2b-4c3d-9e8f-0a1b2c3d4e5f";
        let id = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
        let container = dir.join(format!("cgroup/kubepods/besteffort/pod{uid}/{id}"));
        std::fs::create_dir_all(&container).unwrap();
        // A fake /proc: pid 4242's ns/net is a file whose inode stands for the pod's netns.
        let proc = dir.join("proc");
        std::fs::create_dir_all(proc.join("4242/ns")).unwrap();
        std::fs::write(proc.join("4242/ns/net"), "").unwrap();
        std::fs::write(container.join("cgroup.procs"), "4242\n").unwrap();
        let pod_inode =
            u32::try_from(std::fs::metadata(proc.join("4242/ns/net")).unwrap().ino()).unwrap();

        let mut cgroups = CgroupPaths::new(dir.join("cgroup"));
        let mut netns = PodNetns::new(&proc);
        let now = Instant::now();
        assert_eq!(
            netns
                .pod_uid(pod_inode, &mut cgroups, |u| u == uid, now)
                .as_deref(),
            Some(uid)
        );
        // A pod on the host network (or not of this node) is not the namespace's owner.
        let later = now + MAX_AGE;
        assert_eq!(
            netns.pod_uid(pod_inode, &mut cgroups, |_| false, later),
            None
        );
        // An unknown namespace: no answer.
        assert_eq!(
            netns.pod_uid(pod_inode + 1, &mut cgroups, |_| true, later),
            None
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

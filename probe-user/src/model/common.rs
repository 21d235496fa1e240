//! The keys every record carries.

use serde::Serialize;

/// Keys every event carries; `None` where the kernel could not know the value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Common {
    #[serde(skip)]
    pub ktime_ns: u64,
    pub netns: Option<u32>,
    pub cgroup_id: Option<u64>,
    pub pid: Option<u32>,
    pub tid: Option<u32>,
    /// Shared: a process's name is one allocation however many of its events there are.
    pub comm: Option<std::sync::Arc<str>>,
}

impl Common {
    /// For records made in userspace (loss records): nothing kernel-side is known.
    pub fn none() -> Self {
        Self {
            ktime_ns: 0,
            netns: None,
            cgroup_id: None,
            pid: None,
            tid: None,
            comm: None,
        }
    }
}

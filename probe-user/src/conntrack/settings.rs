//! The conntrack sysctls of a network namespace (`/proc/sys/net/netfilter/nf_conntrack_*`,
//! read from a thread that lives in that namespace: /proc/sys/net shows the reader's netns).

use std::{collections::BTreeMap, io, path::Path};

use crate::model::{
    Attrs, Common, Describe,
    describe::{KindName, Line, LogLine, Severity, Tone},
};

/// Where the per-netns conntrack sysctls live.
pub const SYSCTL_DIR: &str = "/proc/sys/net/netfilter";
/// Prefix of the keys in records: the sysctl's dotted name.
const KEY_PREFIX: &str = "net.netfilter.";
/// Changes of these alone are not a settings change.
const VOLATILE: [&str; 1] = ["nf_conntrack_count"];
/// A `conntrack_table_full` finding fires at this fill ratio and re-arms below `REARM`.
pub const FULL_RATIO: f64 = 0.9;
pub const REARM_RATIO: f64 = 0.85;

/// Sysctl file name (`nf_conntrack_max`) -> value as read (trimmed).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Settings(pub BTreeMap<String, String>);

impl Settings {
    /// Reads every `nf_conntrack_*` file of `dir`. Unreadable single files are skipped
    /// (some are write-only or absent per kernel); a missing directory is an error (no
    /// conntrack in this kernel or namespace).
    pub fn read(dir: &Path) -> io::Result<Self> {
        let mut values = BTreeMap::new();
        for entry in std::fs::read_dir(dir)? {
            let entry = entry?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if !name.starts_with("nf_conntrack_") {
                continue;
            }
            if let Ok(v) = std::fs::read_to_string(entry.path()) {
                values.insert(name, v.trim().to_owned());
            }
        }
        Ok(Self(values))
    }

    pub fn get_u64(&self, name: &str) -> Option<u64> {
        self.0.get(name)?.parse().ok()
    }

    /// Whether anything but the volatile counters differs.
    pub fn differs_from(&self, other: &Self) -> bool {
        let stable = |s: &Self| -> BTreeMap<String, String> {
            s.0.iter()
                .filter(|(k, _)| !VOLATILE.contains(&k.as_str()))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect()
        };
        stable(self) != stable(other)
    }

    /// `nf_conntrack_count / nf_conntrack_max`.
    pub fn fill_ratio(&self) -> Option<f64> {
        let max = self.get_u64("nf_conntrack_max").filter(|&m| m > 0)?;
        Some(self.get_u64("nf_conntrack_count")? as f64 / max as f64)
    }

    /// The record form: dotted sysctl names, numbers where the value is one.
    pub fn to_json(&self) -> BTreeMap<String, serde_json::Value> {
        self.0
            .iter()
            .map(|(k, v)| {
                let value = v
                    .parse::<u64>()
                    .map(serde_json::Value::from)
                    .unwrap_or_else(|_| serde_json::Value::from(v.clone()));
                (format!("{KEY_PREFIX}{k}"), value)
            })
            .collect()
    }
}

/// Hysteresis for the table-full finding.
#[derive(Debug, Default)]
pub struct FullAlarm {
    armed_off: bool,
}

impl FullAlarm {
    /// True once when the ratio reaches [`FULL_RATIO`]; again only after it fell below
    /// [`REARM_RATIO`].
    pub fn check(&mut self, ratio: f64) -> bool {
        if self.armed_off {
            if ratio < REARM_RATIO {
                self.armed_off = false;
            }
            false
        } else if ratio >= FULL_RATIO {
            self.armed_off = true;
            true
        } else {
            false
        }
    }
}

/// `kind:"conntrack_settings"`: the conntrack sysctls of a watched namespace, at start and
/// whenever one changes (`nf_conntrack_count` changes alone do not count as a change).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ConntrackSettings {
    pub netns_path: String,
    /// One key per sysctl, named as the sysctl (`net.netfilter.nf_conntrack_max`); numbers
    /// where the value is one.
    #[serde(flatten)]
    pub sysctls: std::collections::BTreeMap<String, serde_json::Value>,
}

impl KindName for ConntrackSettings {
    const KIND: &'static str = "conntrack_settings";
}

impl Describe for ConntrackSettings {
    fn line(&self, _: &Common) -> Line {
        let get = |k: &str| {
            self.sysctls
                .get(&format!("net.netfilter.{k}"))
                .map_or_else(|| "-".to_owned(), ToString::to_string)
        };
        Line {
            tag: "CT settings ".into(),
            tone: Tone::Dim,
            text: format!(
                "netns={} tcp_timeout_established={} tcp_loose={} count/max={}/{} timestamp={}",
                self.netns_path,
                get("nf_conntrack_tcp_timeout_established"),
                get("nf_conntrack_tcp_loose"),
                get("nf_conntrack_count"),
                get("nf_conntrack_max"),
                get("nf_conntrack_timestamp"),
            ),
        }
    }
    fn layer(&self) -> &'static str {
        "kernel.netfilter"
    }
    fn log(&self) -> Option<LogLine> {
        Some(LogLine {
            event_name: "conntrack.settings",
            severity: Severity::Info,
            body: "conntrack_settings".into(),
        })
    }
    fn attributes(&self, a: &mut Attrs) {
        a.str("probe.netns_path", &self.netns_path);
        for (k, v) in &self.sysctls {
            a.json(k, v);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(pairs: &[(&str, &str)]) -> Settings {
        Settings(
            pairs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
        )
    }

    #[test]
    fn reads_this_kernels_sysctls() {
        let Ok(s) = Settings::read(Path::new(SYSCTL_DIR)) else {
            eprintln!("skipped: no {SYSCTL_DIR} on this machine (conntrack not built in)");
            return;
        };
        assert!(s.get_u64("nf_conntrack_tcp_timeout_established").is_some());
        assert!(s.get_u64("nf_conntrack_max").is_some());
        assert!(!s.0.keys().any(|k| !k.starts_with("nf_conntrack_")));
    }

    #[test]
    fn count_changes_are_not_setting_changes() {
        let a = settings(&[("nf_conntrack_count", "5"), ("nf_conntrack_max", "100")]);
        let b = settings(&[("nf_conntrack_count", "7"), ("nf_conntrack_max", "100")]);
        let c = settings(&[("nf_conntrack_count", "7"), ("nf_conntrack_max", "200")]);
        assert!(!a.differs_from(&b));
        assert!(b.differs_from(&c));
        assert_eq!(a.fill_ratio(), Some(0.05));
    }

    #[test]
    fn json_keys_are_sysctl_names() {
        let s = settings(&[
            ("nf_conntrack_tcp_timeout_established", "3"),
            ("nf_conntrack_odd", "a b"),
        ]);
        let j = s.to_json();
        assert_eq!(
            j["net.netfilter.nf_conntrack_tcp_timeout_established"],
            serde_json::json!(3)
        );
        assert_eq!(
            j["net.netfilter.nf_conntrack_odd"],
            serde_json::json!("a b")
        );
    }

    #[test]
    fn table_full_alarm_has_hysteresis() {
        let mut alarm = FullAlarm::default();
        let fired: Vec<bool> = [0.5, 0.91, 0.95, 0.88, 0.84, 0.9]
            .iter()
            .map(|&r| alarm.check(r))
            .collect();
        assert_eq!(fired, [false, true, false, false, false, true]);
    }
}

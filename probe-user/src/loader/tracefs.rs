//! tracefs: mounting it when absent, and reading a tracepoint's `format` file (field offsets
//! and the `__print_symbolic` value tables of its print format).

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
};

use thiserror::Error;

#[derive(Debug, Error)]
pub enum TracefsError {
    #[error(
        "tracefs is not mounted at /sys/kernel/tracing and mounting it failed: {0} (mount it with `mount -t tracefs nodev /sys/kernel/tracing`, or mount the host's into the container)"
    )]
    Mount(std::io::Error),
    #[error("tracepoint {category}:{name} does not exist on this kernel ({path}: {source})")]
    NoTracepoint {
        category: String,
        name: String,
        path: String,
        source: std::io::Error,
    },
}

pub const TRACEFS: &str = "/sys/kernel/tracing";

/// Makes sure tracefs is mounted at /sys/kernel/tracing (aya reads tracepoint ids there).
pub fn ensure_mounted() -> Result<(), TracefsError> {
    if Path::new(TRACEFS).join("events").is_dir() {
        return Ok(());
    }
    let target = c"/sys/kernel/tracing";
    // SAFETY: valid NUL-terminated strings; mount(2) has no other preconditions.
    let rc = unsafe {
        libc::mount(
            c"nodev".as_ptr(),
            target.as_ptr(),
            c"tracefs".as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        return Err(TracefsError::Mount(std::io::Error::last_os_error()));
    }
    Ok(())
}

/// One field of a tracepoint record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Field {
    pub offset: u32,
    pub size: u32,
}

/// A parsed `format` file.
#[derive(Debug, Default, Clone)]
pub struct Format {
    pub fields: HashMap<String, Field>,
    /// Field name -> (value token, printed name) from `__print_symbolic(REC->field, ...)`.
    /// The value token is a number or an enumerator name (resolve it with BTF).
    pub symbols: HashMap<String, Vec<(String, String)>>,
}

impl Format {
    pub fn read(category: &str, name: &str) -> Result<Self, TracefsError> {
        let path: PathBuf = [TRACEFS, "events", category, name, "format"]
            .iter()
            .collect();
        let text = std::fs::read_to_string(&path).map_err(|source| TracefsError::NoTracepoint {
            category: category.into(),
            name: name.into(),
            path: path.display().to_string(),
            source,
        })?;
        Ok(Self::parse(&text))
    }

    pub fn parse(text: &str) -> Self {
        let mut format = Self::default();
        for line in text.lines() {
            let line = line.trim();
            if let Some(rest) = line.strip_prefix("field:") {
                if let Some((name, field)) = parse_field(rest) {
                    format.fields.insert(name, field);
                }
            } else if let Some(fmt) = line.strip_prefix("print fmt:") {
                format.symbols = parse_symbolic(fmt);
            }
        }
        format
    }

    pub fn offset(&self, field: &str) -> Option<u32> {
        self.fields.get(field).map(|f| f.offset)
    }
}

/// `TYPE NAME[N];\toffset:O;\tsize:S;\tsigned:X;`
fn parse_field(rest: &str) -> Option<(String, Field)> {
    let mut parts = rest.split(';').map(str::trim);
    let decl = parts.next()?;
    let mut offset = None;
    let mut size = None;
    for p in parts {
        if let Some(v) = p.strip_prefix("offset:") {
            offset = v.parse().ok();
        } else if let Some(v) = p.strip_prefix("size:") {
            size = v.parse().ok();
        }
    }
    let name = decl.rsplit(' ').next()?;
    let name = name.split('[').next()?.to_owned();
    Some((
        name,
        Field {
            offset: offset?,
            size: size?,
        },
    ))
}

fn parse_symbolic(fmt: &str) -> HashMap<String, Vec<(String, String)>> {
    const MARK: &str = "__print_symbolic(REC->";
    let mut out = HashMap::new();
    let mut rest = fmt;
    while let Some(start) = rest.find(MARK) {
        rest = &rest[start + MARK.len()..];
        let Some(comma) = rest.find(',') else { break };
        let field = rest[..comma].trim().to_owned();
        rest = &rest[comma + 1..];
        let mut pairs = Vec::new();
        loop {
            rest = rest.trim_start_matches([' ', ',', '\t']);
            if !rest.starts_with('{') {
                break;
            }
            let Some(close) = rest.find('}') else { break };
            let inner = &rest[1..close];
            rest = &rest[close + 1..];
            if let Some((value, name)) = inner.split_once(',') {
                let name = name.trim().trim_matches('"').to_owned();
                pairs.push((value.trim().to_owned(), name));
            }
        }
        out.insert(field, pairs);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEND_RESET_6_18: &str = r#"name: tcp_send_reset
ID: 2280
format:
	field:unsigned short common_type;	offset:0;	size:2;	signed:0;
	field:unsigned char common_flags;	offset:2;	size:1;	signed:0;
	field:unsigned char common_preempt_count;	offset:3;	size:1;	signed:0;
	field:int common_pid;	offset:4;	size:4;	signed:1;

	field:const void * skbaddr;	offset:8;	size:8;	signed:0;
	field:const void * skaddr;	offset:16;	size:8;	signed:0;
	field:int state;	offset:24;	size:4;	signed:1;
	field:enum sk_rst_reason reason;	offset:28;	size:4;	signed:0;
	field:__u8 saddr[28];	offset:32;	size:28;	signed:0;
	field:__u8 daddr[28];	offset:60;	size:28;	signed:0;

print fmt: "skbaddr=%p skaddr=%p src=%pISpc dest=%pISpc state=%s reason=%s", REC->skbaddr, REC->skaddr, REC->saddr, REC->daddr, REC->state ? __print_symbolic(REC->state, { TCP_ESTABLISHED, "TCP_ESTABLISHED" }, { TCP_SYN_SENT, "TCP_SYN_SENT" }) : "UNKNOWN", __print_symbolic(REC->reason, { 0, "NOT_SPECIFIED" }, { 1, "NO_SOCKET" }, { 2, "TCP_INVALID_ACK_SEQUENCE" })
"#;

    #[test]
    fn parses_fields() {
        let f = Format::parse(SEND_RESET_6_18);
        assert_eq!(f.offset("common_flags"), Some(2));
        assert_eq!(f.offset("skaddr"), Some(16));
        assert_eq!(
            f.fields["saddr"],
            Field {
                offset: 32,
                size: 28
            }
        );
        assert_eq!(
            f.fields["daddr"],
            Field {
                offset: 60,
                size: 28
            }
        );
        assert_eq!(f.offset("reason"), Some(28));
        assert_eq!(f.offset("sport"), None);
    }

    #[test]
    fn parses_symbol_tables() {
        let f = Format::parse(SEND_RESET_6_18);
        assert_eq!(
            f.symbols["reason"],
            vec![
                ("0".to_owned(), "NOT_SPECIFIED".to_owned()),
                ("1".to_owned(), "NO_SOCKET".to_owned()),
                ("2".to_owned(), "TCP_INVALID_ACK_SEQUENCE".to_owned()),
            ]
        );
        assert_eq!(
            f.symbols["state"][0],
            ("TCP_ESTABLISHED".to_owned(), "TCP_ESTABLISHED".to_owned())
        );
    }
}

//! The Wasm runtimes whose stdout/stderr is captured, recognised at exec by the basename of
//! the executable: `name` matches exactly, `name*` matches as a prefix.

use probe_common::EXE_NAME_LEN;

/// Default `--wasm-runtimes`. crun is selected at exec and deselected when it execs a
/// container's entrypoint, so what stays selected is crun running its Wasm handler in-process.
pub const DEFAULT_RUNTIMES: &str = "wasmedge,wasmtime,wasmer,spin,crun,containerd-shim-wasmedge*,containerd-shim-wasmtime*,containerd-shim-spin*";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuntimePattern {
    pub name: String,
    pub prefix: bool,
}

impl RuntimePattern {
    /// Whether an executable's name matches: exactly, or as a prefix.
    pub fn matches(&self, name: &str) -> bool {
        if self.prefix {
            name.starts_with(&self.name)
        } else {
            name == self.name
        }
    }

    /// The LPM trie key: bit length and bytes. An exact name includes its NUL terminator so
    /// that `spin` does not match `spinner`.
    pub fn key(&self) -> (u32, [u8; EXE_NAME_LEN]) {
        let mut data = [0u8; EXE_NAME_LEN];
        data[..self.name.len()].copy_from_slice(self.name.as_bytes());
        let bytes = if self.prefix {
            self.name.len()
        } else {
            self.name.len() + 1
        };
        ((bytes * 8) as u32, data)
    }
}

impl std::fmt::Display for RuntimePattern {
    /// As written in the flag: `name`, or `name*` for a prefix.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}{}", self.name, if self.prefix { "*" } else { "" })
    }
}

/// A runtime pattern that is not one.
#[derive(Debug, thiserror::Error)]
#[error(
    "{item:?} is not a runtime pattern (an executable name of at most {max} bytes, optionally ending in *)"
)]
pub struct RuntimePatternError {
    item: String,
    max: usize,
}

/// Parses the comma-separated list.
pub fn parse_runtimes(list: &str) -> Result<Vec<RuntimePattern>, RuntimePatternError> {
    let mut out = Vec::new();
    for item in list.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let (name, prefix) = match item.strip_suffix('*') {
            Some(name) => (name, true),
            None => (item, false),
        };
        let max = if prefix {
            EXE_NAME_LEN
        } else {
            EXE_NAME_LEN - 1
        };
        if name.is_empty() || name.len() > max || name.contains('/') || name.contains('*') {
            return Err(RuntimePatternError {
                item: item.to_owned(),
                max,
            });
        }
        out.push(RuntimePattern {
            name: name.to_owned(),
            prefix,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_and_keys() {
        let p = parse_runtimes(DEFAULT_RUNTIMES).unwrap();
        assert_eq!(p.len(), 8);
        assert_eq!(
            p[1],
            RuntimePattern {
                name: "wasmtime".into(),
                prefix: false
            }
        );
        let (bits, data) = p[1].key();
        assert_eq!(bits, 9 * 8);
        assert_eq!(&data[..9], b"wasmtime\0");
        let (bits, data) = p[5].key();
        assert_eq!(bits, 24 * 8);
        assert_eq!(&data[..24], b"containerd-shim-wasmedge");
        assert!(parse_runtimes("/usr/bin/wasmtime").is_err());
        assert!(parse_runtimes("a-name-that-is-far-too-long-for-the-key").is_err());
        assert!(parse_runtimes("*").is_err());
        assert!(p[1].matches("wasmtime") && !p[1].matches("wasmtime2"));
        assert!(p[5].matches("containerd-shim-wasmedge-v1") && !p[5].matches("containerd"));
        assert_eq!(parse_runtimes("").unwrap(), vec![]);
    }
}

//! The optional TOML config file (`--config`): keys are flag names, values become flag text.
//!
//! The file is input the agent does not control (a ConfigMap, a path in an environment
//! variable): only a regular file of at most [`MAX_BYTES`] is read, and an error names the
//! file, the line and the key, never the text around it (a value may be an API key).

use std::io::Read as _;

use super::ConfigError;

/// The largest config file read (a ConfigMap's whole data may be 1 MiB).
pub const MAX_BYTES: u64 = 1 << 20;
/// The most characters of a key or message an error shows.
const SHOWN: usize = 64;

fn scalar(value: &toml::Value) -> Option<String> {
    match value {
        toml::Value::String(s) => Some(s.clone()),
        toml::Value::Integer(i) => Some(i.to_string()),
        toml::Value::Float(f) => Some(f.to_string()),
        toml::Value::Boolean(b) => Some(b.to_string()),
        _ => None,
    }
}

/// At most [`SHOWN`] characters of `text`, with an ellipsis when cut.
pub(super) fn shown(text: &str) -> String {
    match text.char_indices().nth(SHOWN) {
        Some((at, _)) => format!("{}…", &text[..at]),
        None => text.to_owned(),
    }
}

/// The file's text: a regular file (symbolic links followed, as a mounted ConfigMap is) of at
/// most [`MAX_BYTES`], checked before it is opened (a FIFO or a device is never read).
fn read_bounded(path: &std::path::Path) -> Result<String, ConfigError> {
    let fail = |what: String| ConfigError(format!("--config {}: {what}", path.display()));
    let meta = std::fs::metadata(path).map_err(|e| fail(format!("cannot read: {e}")))?;
    if !meta.is_file() {
        return Err(fail(format!(
            "not a regular file ({}); give the path of a TOML file",
            file_type(&meta)
        )));
    }
    if meta.len() > MAX_BYTES {
        return Err(fail(format!(
            "{} bytes: larger than the {MAX_BYTES} bytes a config file may have",
            meta.len()
        )));
    }
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    std::fs::File::open(path)
        .and_then(|f| f.take(MAX_BYTES + 1).read_to_end(&mut bytes))
        .map_err(|e| fail(format!("cannot read: {e}")))?;
    if bytes.len() as u64 > MAX_BYTES {
        return Err(fail(format!(
            "grew past the {MAX_BYTES} bytes a config file may have while it was read"
        )));
    }
    String::from_utf8(bytes).map_err(|e| {
        fail(format!(
            "not UTF-8 text (invalid byte at offset {})",
            e.utf8_error().valid_up_to()
        ))
    })
}

fn file_type(meta: &std::fs::Metadata) -> &'static str {
    use std::os::unix::fs::FileTypeExt as _;
    let t = meta.file_type();
    if t.is_dir() {
        "a directory"
    } else if t.is_fifo() {
        "a FIFO"
    } else if t.is_char_device() {
        "a character device"
    } else if t.is_block_device() {
        "a block device"
    } else if t.is_socket() {
        "a socket"
    } else {
        "not a file"
    }
}

/// A TOML syntax error as line, column, the key of that line and the parser's message, without
/// the source text the parser's own rendering quotes.
fn syntax_error(path: &std::path::Path, text: &str, e: &toml::de::Error) -> ConfigError {
    let at = e.span().map_or(0, |s| s.start).min(text.len());
    let before = &text.as_bytes()[..at];
    let line = before.iter().filter(|&&b| b == b'\n').count() + 1;
    let line_start = before
        .iter()
        .rposition(|&b| b == b'\n')
        .map_or(0, |i| i + 1);
    let column = text[line_start..at].chars().count() + 1;
    let line_text = text[line_start..].lines().next().unwrap_or_default();
    let key = line_text
        .split_once('=')
        .map(|(k, _)| k.trim())
        .filter(|k| {
            !k.is_empty()
                && k.chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        })
        .map_or_else(String::new, |k| format!(" (key {:?})", shown(k)));
    let message = e.message().lines().next().unwrap_or_default();
    ConfigError(format!(
        "--config {}: not valid TOML at line {line}, column {column}{key}: {}",
        path.display(),
        shown(message)
    ))
}

/// Reads the TOML file into (key, value-as-flag-text) pairs.
pub(super) fn read_config_file(
    path: &std::path::Path,
) -> Result<Vec<(String, String)>, ConfigError> {
    let text = read_bounded(path)?;
    let table: toml::Table = text.parse().map_err(|e| syntax_error(path, &text, &e))?;
    table
        .into_iter()
        .map(|(key, value)| {
            let text = match &value {
                toml::Value::Array(items) => items.iter().map(scalar).collect::<Option<Vec<_>>>().map(|v| v.join(",")),
                other => scalar(other),
            };
            text.map(|t| (key.clone(), t)).ok_or_else(|| {
                ConfigError(format!(
                    "--config {}: key {:?} has an unsupported value (use a string, number, boolean or list)",
                    path.display(),
                    shown(&key)
                ))
            })
        })
        .collect()
}

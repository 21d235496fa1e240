//! The optional TOML config file (`--config`): keys are flag names, values become flag text.

use super::ConfigError;

fn scalar(value: &toml::Value) -> Option<String> {
    match value {
        toml::Value::String(s) => Some(s.clone()),
        toml::Value::Integer(i) => Some(i.to_string()),
        toml::Value::Float(f) => Some(f.to_string()),
        toml::Value::Boolean(b) => Some(b.to_string()),
        _ => None,
    }
}

/// Reads the TOML file into (key, value-as-flag-text) pairs.
pub(super) fn read_config_file(
    path: &std::path::Path,
) -> Result<Vec<(String, String)>, ConfigError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| ConfigError(format!("--config {}: cannot read: {e}", path.display())))?;
    let table: toml::Table = text
        .parse()
        .map_err(|e| ConfigError(format!("--config {}: not valid TOML: {e}", path.display())))?;
    table
        .into_iter()
        .map(|(key, value)| {
            let text = match &value {
                toml::Value::Array(items) => items.iter().map(scalar).collect::<Option<Vec<_>>>().map(|v| v.join(",")),
                other => scalar(other),
            };
            text.map(|t| (key.clone(), t)).ok_or_else(|| {
                ConfigError(format!(
                    "--config {}: key {key:?} has an unsupported value (use a string, number, boolean or list)",
                    path.display()
                ))
            })
        })
        .collect()
}

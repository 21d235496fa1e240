//! The agent's arrows point down: the leaves `model/` (records) and `status/` (health, metrics,
//! reports) import nothing else of the crate, so every other module can use them and none of
//! them can close an import circle through them.

use std::path::Path;

/// `crate::` paths (or `super::` paths leaving the directory) in the code of `dir`.
fn outside_imports(dir: &Path) -> Vec<String> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir).expect("a source directory") {
        let path = entry.expect("a directory entry").path();
        if path.is_dir() {
            found.extend(outside_imports(&path));
            continue;
        }
        let text = std::fs::read_to_string(&path).expect("a source file");
        let nested = path.parent() != Some(dir) || path.file_name() != Some("mod.rs".as_ref());
        for (i, line) in text.lines().enumerate() {
            let code = line.split("//").next().unwrap_or_default();
            let escapes = code.contains("crate::")
                || code.contains("super::super")
                || (!nested && code.contains("super::") && !code.contains("use super::*"));
            if escapes {
                found.push(format!("{}:{}: {}", path.display(), i + 1, line.trim()));
            }
        }
    }
    found
}

#[test]
fn model_and_status_are_leaves() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    for leaf in ["model", "status"] {
        let found = outside_imports(&src.join(leaf));
        assert!(
            found.is_empty(),
            "{leaf}/ imports other modules:\n{}",
            found.join("\n")
        );
    }
}

//! Conventions of the agent's code that a compiler does not check, as failing unit tests.

#[cfg(test)]
mod tests {
    use std::path::{Path, PathBuf};

    fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
        for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() {
                sources(&path, out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                out.push(path);
            }
        }
    }

    /// Whether a line returns or stores a `Result` whose error is a bare `String`.
    fn string_error(line: &str) -> bool {
        let mut rest = line;
        while let Some(at) = rest.find("Result<") {
            rest = &rest[at + "Result<".len()..];
            let mut depth = 1;
            for (i, c) in rest.char_indices() {
                match c {
                    '<' => depth += 1,
                    '>' => depth -= 1,
                    _ => {}
                }
                if depth == 0 {
                    if rest[..i].trim_end().ends_with(", String") {
                        return true;
                    }
                    break;
                }
            }
        }
        false
    }

    #[test]
    fn a_string_error_is_seen() {
        assert!(string_error("fn f() -> Result<(), String> {"));
        assert!(string_error("v: Vec<(u8, Result<Vec<u8>, String>)>,"));
        assert!(!string_error("fn f() -> Result<(), UProbeError> {"));
        assert!(!string_error("fn f() -> Result<Vec<String>, Error> {"));
    }

    /// The agent's errors are typed (`thiserror` per module), never a bare `String`.
    #[test]
    fn the_agent_has_no_string_errors() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../probe-user/src");
        let mut files = Vec::new();
        sources(&root, &mut files);
        assert!(
            files.len() > 20,
            "probe-user's sources not found at {}",
            root.display()
        );
        let found: Vec<String> = files
            .iter()
            .flat_map(|f| {
                let text = std::fs::read_to_string(f).unwrap_or_default();
                text.lines()
                    .enumerate()
                    .filter(|(_, l)| string_error(l))
                    .map(|(n, l)| format!("{}:{}: {}", f.display(), n + 1, l.trim()))
                    .collect::<Vec<_>>()
            })
            .collect();
        assert!(
            found.is_empty(),
            "Result<_, String> in probe-user:\n{}",
            found.join("\n")
        );
    }
}

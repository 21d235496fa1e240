//! The paths README.md and docs/ name exist: a renamed or removed file is a failing unit test,
//! not a reader's dead end.

#[cfg(test)]
mod tests {
    use std::path::{Path, PathBuf};

    /// The top-level folders of the repository: a backticked word starting with one of them
    /// is a path from the repository's root.
    const TOP: [&str; 8] = [
        "probe-user/",
        "probe-ebpf/",
        "probe-common/",
        "xtask/",
        "tests/",
        "deploy/",
        "docs/",
        ".ci/",
    ];

    fn root() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
    }

    /// A file name said without its folder (`cgroup.rs`, `hooks/mod.rs`): some file of the
    /// repository ends with it.
    const SHORT: [&str; 6] = [".rs", ".md", ".toml", ".yaml", ".sh", ".json"];

    /// Every file of the repository (not `target/`, not hidden folders but `.ci`), from the
    /// root, with `/` separators.
    fn repo_files() -> Vec<String> {
        fn walk(dir: &Path, rel: &str, out: &mut Vec<String>) {
            for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
                let name = entry.file_name().to_string_lossy().into_owned();
                if rel.is_empty() && (name == "target" || (name.starts_with('.') && name != ".ci"))
                {
                    continue;
                }
                let path = format!("{rel}/{name}");
                if entry.file_type().is_ok_and(|t| t.is_dir()) {
                    walk(&entry.path(), &path, out);
                } else {
                    out.push(path);
                }
            }
        }
        let mut out = Vec::new();
        walk(&root(), "", &mut out);
        out
    }

    /// Names that are not the repository's files: what a command writes under `target/`, and
    /// the config file a user writes (docs/deploying.md).
    fn not_ours(name: &str) -> bool {
        name.starts_with("target/") || name == "probe.toml"
    }

    /// Backticked file names said without their root folder.
    fn short_names(text: &str) -> Vec<&str> {
        text.split('`')
            .skip(1)
            .step_by(2)
            .filter(|c| {
                !c.contains(char::is_whitespace)
                    && !c.contains(['*', '<', '{', '$', ':'])
                    && !TOP.iter().any(|t| c.starts_with(t))
                    && SHORT.iter().any(|e| c.ends_with(e))
                    && !c.starts_with('/')
                    && !not_ours(c)
            })
            .collect()
    }

    /// The backticked repository paths and the relative link targets of a Markdown text;
    /// links resolve from the file's folder.
    fn named_paths(text: &str, folder: &Path) -> Vec<PathBuf> {
        let mut out = Vec::new();
        for (i, code) in text.split('`').enumerate() {
            // Odd pieces are inside backticks; a path is one word.
            if i % 2 == 1
                && !code.contains(char::is_whitespace)
                && TOP.iter().any(|t| code.starts_with(t))
                && !code.contains(['*', '<', '{', '$'])
            {
                let path = code.split([':', '#']).next().unwrap_or(code);
                out.push(root().join(path.trim_end_matches(['.', ','])));
            }
        }
        for link in text.split("](").skip(1) {
            let target = link.split(')').next().unwrap_or("");
            let target = target.split('#').next().unwrap_or("");
            if !target.is_empty() && !target.contains("://") && !target.starts_with("mailto:") {
                out.push(folder.join(target));
            }
        }
        out
    }

    #[test]
    fn every_path_the_readme_and_docs_name_exists() {
        let mut files = vec![root().join("README.md")];
        for entry in std::fs::read_dir(root().join("docs")).expect("docs/") {
            let path = entry.expect("a docs entry").path();
            if path.extension().is_some_and(|e| e == "md") {
                files.push(path);
            }
        }
        let mut missing = Vec::new();
        let mut checked = 0;
        let all = repo_files();
        for file in &files {
            let text = std::fs::read_to_string(file).expect("a Markdown file");
            let folder = file.parent().expect("a folder");
            for path in named_paths(&text, folder) {
                checked += 1;
                if !path.exists() {
                    missing.push(format!("{} names {}", file.display(), path.display()));
                }
            }
            for name in short_names(&text) {
                checked += 1;
                if !all.iter().any(|f| f.ends_with(&format!("/{name}"))) {
                    missing.push(format!("{} names {name} (no such file)", file.display()));
                }
            }
        }
        assert!(
            checked > 20,
            "only {checked} paths found: is the scan broken?"
        );
        assert!(
            missing.is_empty(),
            "paths that do not exist:\n{}",
            missing.join("\n")
        );
    }

    #[test]
    fn paths_are_found_in_backticks_and_links() {
        let text = "see `probe-user/src/main.rs`, `tests/x.rs:12`, [flags](flags.md#x), \
                    `cargo xtask test`, [site](https://example.com), `probe-user/src/*.rs`";
        let found = named_paths(text, Path::new("/d"));
        assert_eq!(
            found,
            vec![
                root().join("probe-user/src/main.rs"),
                root().join("tests/x.rs"),
                PathBuf::from("/d/flags.md"),
            ]
        );
        assert_eq!(
            short_names("`cgroup.rs` and `hooks/mod.rs`, not `/etc/x.toml` or `a b.rs`"),
            vec!["cgroup.rs", "hooks/mod.rs"]
        );
    }
}

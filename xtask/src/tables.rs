//! What a run of the root tests says: libtest's output of one file read into a result, and
//! the two tables printed at the end (hook per capability and kernel, passed/total per file
//! and kernel).

use std::{collections::BTreeMap, fmt::Write as _};

/// What one test file did on one kernel.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct FileResult {
    pub passed: u32,
    pub failed: u32,
    /// Tests that printed "unsupported on this kernel" (and did not assert that part).
    pub unsupported: u32,
    /// Tests that printed "skipped:" (not root, a peer missing) and asserted nothing.
    pub skipped: u32,
    /// The executable did not print a result line (crash, timeout).
    pub broken: bool,
    /// A run with its hooks pinned that did not run: the pinned hook does not attach here.
    pub not_attachable: bool,
}

impl FileResult {
    pub fn ok(&self) -> bool {
        !self.broken && self.failed == 0
    }
}

/// Reads libtest's output of one executable.
pub fn parse(output: &str) -> FileResult {
    let mut r = FileResult {
        broken: true,
        ..FileResult::default()
    };
    for line in output.lines() {
        if line.contains("unsupported on this kernel") {
            r.unsupported += 1;
        }
        if line.starts_with("!!!!! ") && line.contains(": skipped: ") {
            r.skipped += 1;
        }
        if line.contains(crate::pins::NOT_ATTACHABLE) {
            r.broken = false;
            r.not_attachable = true;
        }
        if let Some(rest) = line.trim().strip_prefix("test result: ") {
            r.broken = false;
            for part in rest.split([';', '.']) {
                let mut words = part.split_whitespace();
                if let (Some(n), Some(what)) = (words.next(), words.next())
                    && let Ok(n) = n.parse::<u32>()
                {
                    match what {
                        "passed" => r.passed += n,
                        "failed" => r.failed += n,
                        _ => {}
                    }
                }
            }
        }
    }
    r
}

/// The hook per capability from a `--check-kernel` table (columns split by two spaces).
fn hooks_of(table: &str) -> BTreeMap<String, String> {
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let mut cols = line.split("  ").map(str::trim).filter(|c| !c.is_empty());
            let capability = cols.next()?;
            let hook = cols.next()?;
            (!capability.contains(' ')).then(|| (capability.to_owned(), hook.to_owned()))
        })
        .collect()
}

fn short_hook(hook: &str) -> String {
    hook.replace(" (field reason)", "")
        .replace("tracepoint syscalls:", "tp ")
        .replace("tracepoint tcp:", "tp ")
        .replace(" + ", "+")
}

/// capability x kernel: the hook each kernel's `--check-kernel` chose.
pub fn hook_summary(columns: &[(String, String)]) -> String {
    let tables: Vec<BTreeMap<String, String>> = columns.iter().map(|(_, t)| hooks_of(t)).collect();
    // Each column as wide as its longest hook name or kernel release.
    let widths: Vec<usize> = columns
        .iter()
        .zip(&tables)
        .map(|((kernel, _), t)| {
            t.values()
                .map(|h| short_hook(h).len())
                .chain([kernel.len(), 4])
                .max()
                .unwrap_or(4)
        })
        .collect();
    let mut out = String::from("\nhooks per kernel (probe --check-kernel)\n");
    let _ = write!(out, "{:<22}", "capability");
    for ((kernel, _), w) in columns.iter().zip(&widths) {
        let _ = write!(out, " {kernel:<w$}");
    }
    out.push('\n');
    // The first column's order is the table's order.
    let order: Vec<String> = columns
        .first()
        .map(|(_, t)| {
            t.lines()
                .skip(1)
                .filter_map(|l| l.split("  ").next().map(str::trim).map(str::to_owned))
                .filter(|c| !c.is_empty() && !c.contains(' '))
                .collect()
        })
        .unwrap_or_default();
    for capability in order {
        let _ = write!(out, "{capability:<22}");
        for (t, w) in tables.iter().zip(&widths) {
            let hook = t.get(&capability).map_or("?".to_owned(), |h| short_hook(h));
            let _ = write!(out, " {hook:<w$}");
        }
        out.push('\n');
    }
    out
}

/// A table's title and its header row: `first` over the row names (as wide as given), then
/// one column per kernel (24 wide, right-aligned).
pub fn header<T>(title: &str, (first, width): (&str, usize), columns: &[(String, T)]) -> String {
    let mut out = format!("\n{title}\n{first:<width$}");
    for (kernel, _) in columns {
        let _ = write!(out, " {kernel:>24}");
    }
    out.push('\n');
    out
}

/// The summary: one row per test file, one column per kernel.
pub fn summary(columns: &[(String, BTreeMap<String, FileResult>)]) -> (String, bool) {
    let mut files: Vec<&String> = columns.iter().flat_map(|(_, r)| r.keys()).collect();
    files.sort();
    files.dedup();
    let mut out = header(
        "root e2e summary (passed/total, U = unsupported on this kernel, S = skipped)",
        ("test file", 30),
        columns,
    );
    let mut all_ok = true;
    for file in files {
        let _ = write!(out, "{file:<30}");
        for (_, results) in columns {
            let cell = match results.get(file) {
                None => "-".to_owned(),
                Some(r) if r.broken => {
                    all_ok = false;
                    "BROKEN".to_owned()
                }
                Some(r) if r.not_attachable => "not attachable".to_owned(),
                Some(r) => {
                    all_ok &= r.ok();
                    let mut c = format!("{}/{}", r.passed, r.passed + r.failed);
                    if r.unsupported > 0 {
                        let _ = write!(c, " {}U", r.unsupported);
                    }
                    if r.skipped > 0 {
                        let _ = write!(c, " {}S", r.skipped);
                    }
                    if r.failed > 0 {
                        c.push_str(" FAIL");
                    }
                    c
                }
            };
            let _ = write!(out, " {cell:>24}");
        }
        out.push('\n');
    }
    (out, all_ok)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_libtest_output() {
        let out = "running 3 tests\n\
                   !!!!! x: unsupported on this kernel: no hook !!!!!\n\
                   !!!!! y: skipped: podman is not installed !!!!!\n\
                   test a ... ok\n\
                   test result: FAILED. 2 passed; 1 failed; 0 ignored; 0 measured; 0 filtered out; finished in 1.0s\n";
        assert_eq!(
            parse(out),
            FileResult {
                passed: 2,
                failed: 1,
                unsupported: 1,
                skipped: 1,
                broken: false,
                not_attachable: false,
            }
        );
        assert!(parse("running 1 test\nthread panicked").broken);
        let pinned = parse(&format!(
            "\n!!!!! {} --hooks wasm_write=kprobe !!!!!\nwasm_write  NONE  ...\n",
            crate::pins::NOT_ATTACHABLE
        ));
        assert!(pinned.not_attachable && pinned.ok());
    }

    #[test]
    fn summary_marks_failures() {
        let ok = FileResult {
            passed: 2,
            ..FileResult::default()
        };
        let bad = FileResult {
            passed: 1,
            failed: 1,
            ..FileResult::default()
        };
        let cols = vec![
            (
                "host".to_owned(),
                BTreeMap::from([("a".to_owned(), ok.clone())]),
            ),
            ("6.1".to_owned(), BTreeMap::from([("a".to_owned(), bad)])),
        ];
        let (text, all_ok) = summary(&cols);
        assert!(!all_ok);
        assert!(text.contains("1/2 FAIL"), "{text}");
        let (_, all_ok) = summary(&cols[..1]);
        assert!(all_ok);
    }
}

//! The flag table of docs/flags.md, generated from the clap definitions: the doc comment of
//! each flag is its meaning. `cargo xtask docs` writes it; the test fails when the committed
//! copy differs from what the definitions say.

use clap::{Arg, ArgAction, Command};

/// Where the generated table starts and ends in docs/flags.md.
pub const BEGIN: &str =
    "<!-- flags: generated from probe-user/src/config/mod.rs by `cargo xtask docs` -->";
pub const END: &str = "<!-- end of generated flags -->";

/// The Markdown table: flag (with its value), environment variable, default, meaning.
pub fn table(cmd: &Command) -> String {
    let mut out = String::from("| flag | env | default | meaning |\n| --- | --- | --- | --- |\n");
    for arg in cmd.get_arguments() {
        let Some(long) = arg.get_long() else { continue };
        if arg.is_hide_set() || matches!(long, "help" | "version") {
            continue;
        }
        let flag = match value_of(arg) {
            Some(value) => format!("`--{long} {value}`"),
            None => format!("`--{long}`"),
        };
        let env = arg
            .get_env()
            .map_or_else(String::new, |e| format!("`{}`", e.to_string_lossy()));
        let defaults: Vec<String> = arg
            .get_default_values()
            .iter()
            .map(|v| v.to_string_lossy().into_owned())
            .collect();
        let help = arg
            .get_long_help()
            .or(arg.get_help())
            .map(|h| one_line(&h.to_string()))
            .unwrap_or_default();
        // A default the agent works out at start is the help's last sentence.
        let (meaning, computed) = match help.split_once(" Default when unset: ") {
            Some((meaning, default)) => (meaning.to_owned(), Some(default.trim_end_matches('.'))),
            None => (help.clone(), None),
        };
        let default = match (defaults.is_empty(), computed, arg.get_action()) {
            (false, _, _) => format!("`{}`", defaults.join(",")),
            (true, Some(computed), _) => computed.to_owned(),
            (true, None, ArgAction::SetTrue) => String::new(),
            (true, None, _) => "(none)".to_owned(),
        };
        out.push_str(&format!(
            "| {} | {env} | {} | {} |\n",
            cell(&flag),
            cell(&default),
            cell(&meaning)
        ));
    }
    out
}

/// The value a flag takes, as the table shows it: its value name, or its possible values.
fn value_of(arg: &Arg) -> Option<String> {
    if matches!(arg.get_action(), ArgAction::SetTrue | ArgAction::SetFalse) {
        return None;
    }
    if let Some(names) = arg.get_value_names() {
        return Some(
            names
                .iter()
                .map(|n| n.as_str().to_owned())
                .collect::<Vec<_>>()
                .join(" "),
        );
    }
    let possible: Vec<String> = arg
        .get_possible_values()
        .iter()
        .map(|v| v.get_name().to_owned())
        .collect();
    if possible.is_empty() {
        Some(arg.get_id().as_str().to_uppercase())
    } else {
        Some(possible.join("|"))
    }
}

/// A doc comment's paragraphs as one line.
fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Text in a table cell: its pipes escaped.
fn cell(text: &str) -> String {
    text.replace('|', "\\|")
}

/// `doc` with the part between the markers replaced by `table` (None: a marker is missing).
pub fn replace(doc: &str, table: &str) -> Option<String> {
    let start = doc.find(BEGIN)? + BEGIN.len();
    let end = doc[start..].find(END)? + start;
    Some(format!("{}\n{table}{}", &doc[..start], &doc[end..]))
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory as _;

    use super::*;

    /// docs/flags.md holds the table the definitions give (`PROBE_UPDATE_DOCS=1` writes it:
    /// `cargo xtask docs`).
    #[test]
    fn docs_flags_md_is_generated_from_the_definitions() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/flags.md");
        let doc = std::fs::read_to_string(path).expect("docs/flags.md");
        let generated = table(&crate::config::Cli::command());
        let want = replace(&doc, &generated).expect("docs/flags.md has the markers");
        if std::env::var_os("PROBE_UPDATE_DOCS").is_some() {
            std::fs::write(path, &want).expect("writing docs/flags.md");
            return;
        }
        assert!(
            doc == want,
            "docs/flags.md differs from the flag definitions: run `cargo xtask docs`"
        );
    }

    #[test]
    fn every_flag_has_a_row_with_its_env_and_meaning() {
        let t = table(&crate::config::Cli::command());
        let rows: Vec<&str> = t.lines().skip(2).collect();
        // One row per flag declared in the definitions.
        assert_eq!(rows.len(), include_str!("mod.rs").matches("#[arg(").count());
        for row in rows {
            let cells: Vec<&str> = row.split(" | ").collect();
            assert!(cells[1].starts_with('`'), "no env: {row}");
            assert!(cells[3].len() > 12, "no meaning: {row}");
        }
        assert!(t.contains("| `--queue-size N` | `PROBE_QUEUE_SIZE` | `65536` |"));
        assert!(t.contains("| `--check-kernel` | `PROBE_CHECK_KERNEL` |  |"));
        assert!(t.contains("| `--node-name NAME` | `NODE_NAME` | the kernel's hostname | The `node` key of every record. |"));
    }
}

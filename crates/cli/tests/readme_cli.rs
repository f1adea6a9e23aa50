//! The README's commands exist as written: every `dualbus ...` (or `cargo run --release -- ...`)
//! line of its code blocks and every row of its CLI table names a verb the binary has, and every
//! `--flag` it uses is one that verb's `--help` lists; every verb of `dualbus --help` has a row in
//! the table; the top-level help says first how to run the trading system.

use std::collections::BTreeSet;
use std::process::Command;

fn help(args: &[&str]) -> Option<String> {
    let out = Command::new(env!("CARGO_BIN_EXE_dualbus"))
        .args(args)
        .arg("--help")
        .env("NO_COLOR", "1")
        .output()
        .expect("runs");
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The names under "Commands:" in a help text (without `help`).
fn subcommands(help: &str) -> BTreeSet<String> {
    help.lines()
        .skip_while(|l| !l.starts_with("Commands:"))
        .skip(1)
        .take_while(|l| l.starts_with("  "))
        .filter_map(|l| l.split_whitespace().next())
        .filter(|c| *c != "help")
        .map(str::to_string)
        .collect()
}

fn readme() -> String {
    std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../README.md")).unwrap()
}

/// The command lines of the README's code blocks, continuation lines joined, comments and
/// prompts removed, `cargo run --release --` spelt `dualbus`.
fn code_block_commands(readme: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut in_block = false;
    let mut pending = String::new();
    for line in readme.lines() {
        if line.trim_start().starts_with("```") {
            in_block = !in_block;
            pending.clear();
            continue;
        }
        if !in_block {
            continue;
        }
        let line = line.trim().trim_start_matches("$ ");
        let joined = format!("{pending}{line}");
        if let Some(head) = joined.strip_suffix('\\') {
            pending = head.to_string();
            continue;
        }
        pending.clear();
        let cmd = joined.split(" #").next().unwrap().trim().replacen(
            "cargo run --release -- ",
            "dualbus ",
            1,
        );
        if cmd.starts_with("dualbus ") {
            out.push(cmd);
        }
    }
    out
}

/// Checks one command line: its verb (and sub-verb) exist and its flags are in their help.
/// Returns a problem to report, if any.
fn check(cmd: &str, verbs: &BTreeSet<String>) -> Option<String> {
    let words: Vec<&str> = cmd.split_whitespace().collect();
    let verb = words.get(1)?;
    if verb.starts_with('-') {
        // `dualbus --help` and the like.
        return help(&[])
            .is_none()
            .then(|| format!("{cmd}: top-level help fails"));
    }
    if !verbs.contains(*verb) {
        return Some(format!("{cmd}: no verb {verb:?}"));
    }
    let verb_help = help(&[verb]).unwrap();
    let subs = subcommands(&verb_help);
    let mut text = verb_help;
    // A sub-verb (`bench latency`, `redis up`); `a|b` alternatives in the table each checked.
    if let Some(sub) = words
        .get(2)
        .filter(|w| !w.starts_with('-') && !subs.is_empty())
    {
        for s in sub.split(['|', '\\']).filter(|s| !s.is_empty()) {
            match help(&[verb, s]) {
                Some(h) => text.push_str(&h),
                None => return Some(format!("{cmd}: no sub-command {verb} {s}")),
            }
        }
    }
    for w in &words[2..] {
        let w = w.trim_matches(|c| matches!(c, '[' | ']' | '`' | ',' | '(' | ')'));
        if !w.starts_with("--") || w == "--" {
            continue;
        }
        let flag = w.split(['=', '|']).next().unwrap();
        let listed = text.match_indices(flag).any(|(i, _)| {
            !text[i + flag.len()..]
                .starts_with(|c: char| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        });
        if !listed {
            return Some(format!("{cmd}: `{verb}` has no flag {flag}"));
        }
    }
    None
}

#[test]
fn the_readme_commands_exist_as_written() {
    let top = help(&[]).expect("dualbus --help");
    let verbs = subcommands(&top);
    assert!(verbs.contains("run") && verbs.contains("bench"), "{top}");
    let readme = readme();
    let cmds = code_block_commands(&readme);
    assert!(cmds.len() >= 15, "found only {cmds:?}");
    let problems: Vec<String> = cmds.iter().filter_map(|c| check(c, &verbs)).collect();
    assert!(problems.is_empty(), "{problems:#?}");
}

#[test]
fn the_readme_cli_table_has_every_verb_and_only_real_flags() {
    let top = help(&[]).expect("dualbus --help");
    let verbs = subcommands(&top);
    let readme = readme();
    let table: Vec<&str> = readme
        .lines()
        .skip_while(|l| *l != "## CLI")
        .take_while(|l| !l.starts_with("## Layout"))
        .filter(|l| l.starts_with("| `dualbus "))
        .collect();
    let mut listed = BTreeSet::new();
    let mut problems = Vec::new();
    for row in &table {
        let cells: Vec<&str> = row.split(" | ").collect();
        // The command cell, then the flags named in the description.
        let command = cells[0].trim_start_matches("| ");
        let first = command.split('`').nth(1).unwrap();
        listed.insert(first.split_whitespace().nth(1).unwrap().to_string());
        let flags: Vec<&str> = row
            .split(['`', ' ', ','])
            .filter(|w| w.starts_with("--"))
            .collect();
        let line = format!("{first} {}", flags.join(" "));
        if let Some(p) = check(&line, &verbs) {
            problems.push(p);
        }
    }
    for v in &verbs {
        if !listed.contains(v) {
            problems.push(format!("the CLI table has no row for `dualbus {v}`"));
        }
    }
    assert!(problems.is_empty(), "{problems:#?}");
}

#[test]
fn the_top_level_help_says_first_how_to_run_the_system() {
    let top = help(&[]).expect("dualbus --help");
    let first_para: String = top.split("\n\n").take(2).collect::<Vec<_>>().join("\n");
    assert!(
        first_para.contains("`dualbus run` runs the trading system"),
        "{top}"
    );
}

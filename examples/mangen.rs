//! Writes the man page xen-block-hotplug(8) to the path given (or stdout): the command line
//! from clap (`cli::command()`, so every subcommand added later appears without editing
//! this file), between the written sections in `man/` that clap cannot know (the hotplug
//! interface: environment, files, xenstore nodes, exit status).
//!
//! An example rather than `build.rs`, so clap_mangen stays out of the production build
//! (clap_mangen's docs suggest a separate step for the same reason). Run by `make man`.

use std::io::Write;

const DESCRIPTION: &str = include_str!("../man/description.roff");
const SECTIONS: &str = include_str!("../man/sections.roff");

fn main() -> std::io::Result<()> {
    let cmd = xen_block_hotplug::cli::command();
    let man = clap_mangen::Man::new(cmd.clone())
        .title("XEN-BLOCK-HOTPLUG")
        .section("8")
        .manual("System Administration")
        .source(format!("xen-block-hotplug {}", env!("CARGO_PKG_VERSION")));
    let mut page = Vec::new();
    man.render_title(&mut page)?;
    man.render_name_section(&mut page)?;
    man.render_synopsis_section(&mut page)?;
    page.write_all(DESCRIPTION.as_bytes())?;
    man.render_options_section(&mut page)?;
    commands(&cmd, &mut page)?;
    page.write_all(SECTIONS.as_bytes())?;
    man.render_version_section(&mut page)?;
    // clap_mangen copies help text as is: `code` in argument help would show its backticks.
    let page = code_as_bold(&String::from_utf8_lossy(&page)).into_bytes();
    match std::env::args_os().nth(1) {
        Some(path) => std::fs::write(path, page),
        None => std::io::stdout().write_all(&page),
    }
}

/// COMMANDS: each subcommand in this one page (clap_mangen would refer to a page per
/// subcommand): its usage, its long help and its options as clap_mangen renders them.
fn commands(cmd: &clap::Command, page: &mut Vec<u8>) -> std::io::Result<()> {
    let mut cmd = cmd.clone();
    cmd.build();
    let subs = visible(&cmd);
    if subs.is_empty() {
        return Ok(());
    }
    writeln!(page, ".SH COMMANDS")?;
    for sub in subs {
        command(sub, page)?;
    }
    Ok(())
}

/// The subcommands shown: not hidden, not clap's `help`.
fn visible(cmd: &clap::Command) -> Vec<clap::Command> {
    cmd.get_subcommands()
        .filter(|s| !s.is_hide_set() && s.get_name() != "help")
        .cloned()
        .collect()
}

/// One command's subsection; a group of commands (`lease`) is followed by one subsection
/// per command in it.
fn command(mut sub: clap::Command, page: &mut Vec<u8>) -> std::io::Result<()> {
    let usage = sub.render_usage().to_string();
    let usage = usage.trim_start_matches("Usage: ");
    writeln!(page, ".SS \"{}\"", roff_escape(usage))?;
    let about = sub
        .get_long_about()
        .or_else(|| sub.get_about())
        .map(|a| a.to_string())
        .unwrap_or_default();
    for para in about.split("\n\n") {
        writeln!(page, ".PP\n{}", roff_escape(para.trim()))?;
    }
    let mut opts = Vec::new();
    clap_mangen::Man::new(sub.clone()).render_options_section(&mut opts)?;
    // clap_mangen heads them `.SH OPTIONS`; here they belong to the command's subsection.
    let opts = String::from_utf8_lossy(&opts).replace(".SH OPTIONS\n", "");
    page.write_all(opts.as_bytes())?;
    for nested in visible(&sub) {
        command(nested, page)?;
    }
    Ok(())
}

/// Text for a roff line: backslashes, hyphens (so they stay ASCII in the output), a
/// leading control character; `code` in clap's help becomes bold.
fn roff_escape(s: &str) -> String {
    let t = s.replace('\\', "\\e").replace('-', "\\-");
    let t: String = t
        .split('`')
        .enumerate()
        .map(|(i, part)| {
            if i % 2 == 1 {
                format!("\\fB{part}\\fR")
            } else {
                part.to_string()
            }
        })
        .collect();
    t.lines()
        .map(|l| {
            if l.starts_with('.') || l.starts_with('\'') {
                format!("\\&{l}")
            } else {
                l.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Each line's paired backticks (`code` in clap's help) as bold; a line with an odd count is
/// left as it is (a literal backtick).
fn code_as_bold(page: &str) -> String {
    let mut out = String::with_capacity(page.len());
    for line in page.split_inclusive('\n') {
        if line.matches('`').count() % 2 == 1 {
            out.push_str(line);
            continue;
        }
        for (i, part) in line.split('`').enumerate() {
            if i % 2 == 1 {
                out.push_str("\\fB");
                out.push_str(part);
                out.push_str("\\fR");
            } else {
                out.push_str(part);
            }
        }
    }
    out
}

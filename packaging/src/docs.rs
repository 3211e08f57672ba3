//! Man pages (clap_mangen, one page per command and subcommand, section 8)
//! and shell completions (clap_complete: bash, zsh, fish) for the three
//! binaries, rendered from their clap definitions.

use std::path::Path;

use clap::{Command, CommandFactory};
use clap_complete::Shell;

use crate::error::Error;

/// A binary, its command line and what its top-level page adds to it.
struct Binary {
    name: &'static str,
    command: fn() -> Command,
    files: &'static str,
}

const BINARIES: &[Binary] = &[
    Binary {
        name: "mctc-agent",
        command: mctc_agent::cli::Cli::command,
        files: "/etc/mctc/agent.toml\n    Configuration: seeded on first install from /usr/share/mctc-agent/agent.toml\n    (also in /usr/share/doc/mctc-agent/examples/), never overwritten.\n/var/lib/mctc\n    State: the AK blob, the lineage log, the revocation marker (0700).\n/run/mctc/gate.sock\n    The gate socket (0660, group mctc-gate).",
    },
    Binary {
        name: "mctc-authority",
        command: mctc_authority::cli::Cli::command,
        files: "/etc/mctc/authority.toml, /etc/mctc/policy.toml\n    Configuration and device-class policy: seeded on first install from\n    /usr/share/mctc-authority/ (also in /usr/share/doc/mctc-authority/examples/),\n    never overwritten.\n/var/lib/mctc-authority\n    The signing key (0600) and the SQLite database.",
    },
    Binary {
        name: "mctc-collector",
        command: mctc_collector::cli::Cli::command,
        files: "/etc/mctc/collector.toml\n    Configuration: seeded on first install from /usr/share/mctc-collector/collector.toml\n    (also in /usr/share/doc/mctc-collector/examples/), never overwritten.\n/var/lib/mctc-collector\n    The SQLite database of verified lineage.",
    },
];

pub const SECTION: &str = "8";

/// Writes `out/man/NAME[-SUB…].8` and `out/completions/{bash,zsh,fish}/…`
/// for every binary; returns the man pages written.
pub fn generate(out: &Path) -> Result<Vec<String>, Error> {
    let man = out.join("man");
    create_dir(&man)?;
    let mut pages = Vec::new();
    for binary in BINARIES {
        let mut command = (binary.command)();
        command.build();
        // build(): every subcommand gets its display name (mctc-agent-run,
        // the page's name) and bin name (`mctc-agent run`, its synopsis).
        man_pages(&command, Some(binary), &man, &mut pages)?;
        for (shell, dir, file) in [
            (Shell::Bash, "bash", binary.name.to_owned()),
            (Shell::Zsh, "zsh", format!("_{}", binary.name)),
            (Shell::Fish, "fish", format!("{}.fish", binary.name)),
        ] {
            let dir = out.join("completions").join(dir);
            create_dir(&dir)?;
            let mut text = Vec::new();
            clap_complete::generate(shell, &mut (binary.command)(), binary.name, &mut text);
            write(&dir.join(file), &text)?;
        }
    }
    Ok(pages)
}

/// The page of `command` and, recursively, of each visible subcommand
/// (`mctc-agent-run`, git style).
fn man_pages(
    command: &Command,
    top: Option<&Binary>,
    dir: &Path,
    pages: &mut Vec<String>,
) -> Result<(), Error> {
    let name = command.get_display_name().unwrap_or(command.get_name());
    let invoked = command.get_bin_name().unwrap_or(name);
    let man = clap_mangen::Man::new(command.clone())
        .section(SECTION)
        .manual("System Administration")
        .source(format!("mctc {}", env!("CARGO_PKG_VERSION")));
    let mut page = Vec::new();
    man.render(&mut page).map_err(|source| Error::Io {
        path: dir.join(name),
        source,
    })?;
    let mut see_also: Vec<String> = BINARIES
        .iter()
        .filter(|b| Some(b.name) != invoked.split(' ').next())
        .map(|b| b.name.to_owned())
        .collect();
    if let Some(binary) = top {
        page.extend_from_slice(
            format!(
                ".SH FILES\n.nf\n{}\n.fi\n.SH \"EXIT STATUS\"\n0 success (permit, gate open), 1 refused or denied, 2 usage, configuration or environment error (a deny).\n",
                roff(binary.files)
            )
            .as_bytes(),
        );
    } else if let Some((parent, _)) = invoked.rsplit_once(' ') {
        see_also.insert(0, parent.replace(' ', "-"));
    }
    let refs: Vec<String> = see_also
        .iter()
        .map(|n| format!(".BR {n} ({SECTION})"))
        .collect();
    page.extend_from_slice(format!(".SH \"SEE ALSO\"\n{}\n", refs.join(",\n")).as_bytes());
    write(&dir.join(format!("{name}.{SECTION}")), &page)?;
    pages.push(format!("{name}.{SECTION}"));
    for sub in command.get_subcommands() {
        if sub.is_hide_set() || sub.get_name() == "help" {
            continue;
        }
        man_pages(sub, None, dir, pages)?;
    }
    Ok(())
}

/// roff escaping for text inside a no-fill block.
fn roff(text: &str) -> String {
    text.lines()
        .map(|line| {
            let escaped = line.replace('\\', "\\e");
            if escaped.starts_with('.') || escaped.starts_with('\'') {
                format!("\\&{escaped}")
            } else {
                escaped
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn create_dir(dir: &Path) -> Result<(), Error> {
    std::fs::create_dir_all(dir).map_err(|source| Error::Io {
        path: dir.to_owned(),
        source,
    })
}

fn write(path: &Path, bytes: &[u8]) -> Result<(), Error> {
    std::fs::write(path, bytes).map_err(|source| Error::Io {
        path: path.to_owned(),
        source,
    })
}

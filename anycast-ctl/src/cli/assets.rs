//! What the Debian package ships beside the binary, generated from the clap definitions so it
//! can never disagree with them: a man page per command (section 8,
//! `DIR/man8/anycast-ctl-member-add.8`, ...) and completions for bash, zsh and fish
//! (`DIR/completions/`). `cargo xtask dist` runs it through the `anycast-ctl-assets` binary
//! (src/bin/assets.rs), which the package does not ship: it is for packagers, not a verb of
//! the operator's tool.
use std::path::Path;

use clap::CommandFactory as _;
use clap_complete::Shell;

use super::Cli;
use crate::{Error, Result};

/// The man section: system administration commands (the binary is in /usr/sbin).
const SECTION: &str = "8";
const BIN: &str = "anycast-ctl";

/// Writes `dir/man8/` and `dir/completions/` (created if missing); says what it wrote.
pub fn write(dir: &Path) -> Result<String> {
    let man = dir.join("man8");
    let completions = dir.join("completions");
    for dir in [&man, &completions] {
        std::fs::create_dir_all(dir)
            .map_err(|e| Error::io(format!("creating {}", dir.display()), e))?;
    }
    let mut cmd = Cli::command().disable_help_subcommand(true);
    cmd.build();
    let pages = man_pages(&cmd, &man)?;
    for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
        clap_complete::generate_to(shell, &mut Cli::command(), BIN, &completions)
            .map_err(|e| Error::io(format!("writing the {shell} completions"), e))?;
    }
    Ok(format!(
        "wrote {pages} man pages to {} and bash, zsh and fish completions to {}\n",
        man.display(),
        completions.display()
    ))
}

/// One page for `cmd` and each of its visible subcommands, recursively; returns the count.
fn man_pages(cmd: &clap::Command, dir: &Path) -> Result<usize> {
    let mut pages = 0;
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        pages += man_pages(sub, dir)?;
    }
    let man = clap_mangen::Man::new(cmd.clone())
        .section(SECTION)
        .source(format!("{BIN} {}", env!("CARGO_PKG_VERSION")))
        .manual("anycast");
    man.generate_to(dir)
        .map_err(|e| Error::io(format!("writing the man page of {}", cmd.get_name()), e))?;
    Ok(pages + 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_a_page_per_visible_command_and_the_completions() {
        let dir = std::env::temp_dir().join(format!("anycast-assets-{}", std::process::id()));
        let out = write(&dir).unwrap();
        let page = |name: &str| dir.join("man8").join(format!("{name}.8"));
        for name in [
            "anycast-ctl",
            "anycast-ctl-attach",
            "anycast-ctl-member-add",
            "anycast-ctl-upgrade",
            "anycast-ctl-probe",
        ] {
            let text =
                std::fs::read_to_string(page(name)).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert!(text.contains(".TH"), "{name} is not a man page");
        }
        assert!(
            !page("anycast-ctl-assets").exists(),
            "the hidden verb has a page"
        );
        let bash = std::fs::read_to_string(dir.join("completions/anycast-ctl.bash")).unwrap();
        assert!(
            bash.contains("upgrade") && !bash.contains("assets"),
            "bash completions"
        );
        assert!(dir.join("completions/_anycast-ctl").exists());
        assert!(dir.join("completions/anycast-ctl.fish").exists());
        assert!(out.contains("man pages"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

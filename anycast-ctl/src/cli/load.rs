//! `anycast-ctl load FILE`: many static memberships from a TOML file (see [`crate::load`]).
use std::path::{Path, PathBuf};

use super::Router;
use crate::{Error, Result, dataplane::Maps};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The file, or `-` for stdin.
    #[arg(value_name = "FILE")]
    pub file: PathBuf,
}

pub async fn run(router: &Router, args: Args) -> Result<String> {
    let (name, text) = read_input(&args.file)?;
    let list = crate::load::parse(&name, &text)?;
    let mut maps = Maps::open(&router.pin)?;
    let placements = crate::load::locate_all(&maps, &router.nl, &list).await?;
    let _lock = router.pin.lock(false)?;
    maps.ensure_live(&router.pin)?;
    let mut export = crate::export::Pending::new();
    export.note(&maps, list.iter().map(|m| m.anycast))?;
    let done = crate::load::apply(&mut maps, &list, &placements)?;
    crate::export::sync(&maps, &router.nl, &mut export).await?;
    crate::members::mode::forget_untracked_or_warn(&maps, &router.pin, &done.turned_tcp_only);
    Ok(format!(
        "loaded {} memberships ({} added, {} updated)\n",
        list.len(),
        done.added,
        done.updated
    ))
}

/// A file's name and text, or stdin's for `-`.
fn read_input(path: &Path) -> Result<(String, String)> {
    if path.as_os_str() == "-" {
        let text =
            std::io::read_to_string(std::io::stdin()).map_err(|e| Error::io("reading stdin", e))?;
        return Ok(("stdin".into(), text));
    }
    let name = path.display().to_string();
    let (_, text) =
        crate::textfile::read(path).map_err(|e| Error::io(format!("reading {name}"), e))?;
    Ok((name, text))
}

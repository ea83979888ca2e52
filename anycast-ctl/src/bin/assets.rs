//! `anycast-ctl-assets DIR`: writes the man pages and shell completions of `anycast-ctl` into
//! DIR for the Debian package (see `anycast_ctl::cli::assets`).
use std::process::ExitCode;

fn main() -> ExitCode {
    let Some(dir) = std::env::args_os().nth(1) else {
        eprintln!("usage: anycast-ctl-assets DIR");
        return ExitCode::from(2);
    };
    match anycast_ctl::cli::assets::write(std::path::Path::new(&dir)) {
        Ok(out) => {
            print!("{out}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("anycast-ctl-assets: error: {e}");
            ExitCode::FAILURE
        }
    }
}

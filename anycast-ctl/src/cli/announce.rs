//! `anycast-ctl announce`: on a member host, serve anycast addresses (see [`crate::announce`]).
//! It needs nothing of the router: no pin directory, no dataplane.
use crate::{Result, announce::Options};

pub async fn run(options: Options) -> Result<String> {
    crate::announce::run(options).await?;
    Ok(String::new())
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory as _;

    use crate::cli::Cli;

    /// Regression: `announce --help` said the highest key id signs; the first key signs.
    #[test]
    fn announce_help_says_the_first_key_signs() {
        let mut cmd = Cli::command();
        let announce = cmd.find_subcommand_mut("announce").unwrap();
        let help = announce.render_long_help().to_string();
        assert!(help.contains("first key"), "{help}");
        assert!(!help.contains("highest"), "{help}");
    }
}

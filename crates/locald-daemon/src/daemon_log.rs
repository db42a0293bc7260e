//! The daemon's log: `tracing` events, one line each with its time and level, on stderr — which
//! the CLI points at `<state dir>/daemon.log` when it starts the daemon, and which is the journal
//! under systemd. `LOCALD_LOG` (`error`, `warn`, `info`, `debug`, `trace`) sets how much.

use tracing_subscriber::filter::LevelFilter;

pub const LEVEL_VAR: &str = "LOCALD_LOG";

/// Installs the daemon's subscriber; a second call (tests) keeps the first.
pub fn init() {
    let level = level(std::env::var(LEVEL_VAR).ok().as_deref());
    let _ = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .with_target(false)
        .with_max_level(level)
        .try_init();
}

/// An unset or unreadable level is `info`: a typo must not silence the log.
fn level(value: Option<&str>) -> LevelFilter {
    value.and_then(|v| v.trim().parse().ok()).unwrap_or(LevelFilter::INFO)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_level_is_read_from_the_variable_and_defaults_to_info() {
        assert_eq!(level(Some("debug")), LevelFilter::DEBUG);
        assert_eq!(level(Some(" WARN ")), LevelFilter::WARN);
        assert_eq!(level(None), LevelFilter::INFO);
        assert_eq!(level(Some("loud")), LevelFilter::INFO);
    }
}

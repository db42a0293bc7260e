//! What the libraries the CLI calls have to tell the user (the CA crate replacing a CA with
//! wider constraints, say) arrives as `tracing` warnings; the CLI shows them as the one-line
//! `locald: …` notices its own errors are, without times or levels. The daemon (`server start`)
//! installs its own log instead.

use std::fmt;

use tracing::{Event, Level, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

struct Notice;

impl<S, N> FormatEvent<S, N> for Notice
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        write!(writer, "locald: ")?;
        ctx.field_format().format_fields(writer.by_ref(), event)?;
        writeln!(writer)
    }
}

pub fn init() {
    let _ = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .with_max_level(Level::WARN)
        .event_format(Notice)
        .try_init();
}

//! `${services.<name>.<field>}` substitution in commands and string values, with errors that
//! point at the reference in the file.

use toml::Spanned;

use super::Ctx;
use crate::config::Command;
use crate::config::ConfigError;
use crate::config::raw::RawCommand;

pub(super) type Lookup<'a> = dyn Fn(&str, &str) -> Result<String, String> + 'a;

pub(super) fn interpolate_command(
    ctx: &Ctx,
    command: &Spanned<RawCommand>,
    lookup: &Lookup,
) -> Result<Command, ConfigError> {
    let at = command.span().start;
    let sub = |text: &str| substitute(text, lookup).map_err(|(_, m)| ctx.err(at, m));
    Ok(match command.get_ref() {
        RawCommand::Shell(line) => {
            let spanned = Spanned::new(command.span(), line.clone());
            Command::Shell(interpolate(ctx, &spanned, lookup)?)
        }
        RawCommand::Argv(argv) => Command::Argv(argv.iter().map(|a| sub(a)).collect::<Result<_, _>>()?),
    })
}

/// Substitutes in a string value; an error points at its `${` when the value is written as a
/// plain string (no escapes before it), else at the value.
pub(super) fn interpolate(
    ctx: &Ctx,
    value: &Spanned<String>,
    lookup: &Lookup,
) -> Result<String, ConfigError> {
    substitute(value.get_ref(), lookup).map_err(|(index, message)| {
        let span = value.span();
        let written = &ctx.text[span.start..span.end];
        let quote_len = if written.starts_with("\"\"\"") || written.starts_with("'''") { 3 } else { 1 };
        let body = written.get(quote_len..).unwrap_or("");
        let exact = body.get(..index) == value.get_ref().get(..index);
        ctx.err(if exact { span.start + quote_len + index } else { span.start }, message)
    })
}

/// Replaces every `${services.<name>.<field>}`; other `${...}` are left for the shell.
pub(super) fn substitute(text: &str, lookup: &Lookup) -> Result<String, (usize, String)> {
    const OPEN: &str = "${services.";
    let mut out = String::new();
    let mut rest = text;
    let mut consumed = 0;
    while let Some(start) = rest.find(OPEN) {
        out.push_str(&rest[..start]);
        let after = &rest[start + OPEN.len()..];
        let end = after.find('}').ok_or((consumed + start, "unclosed ${services.…}".to_owned()))?;
        let reference = &after[..end];
        let (service, field) = reference.split_once('.').ok_or((
            consumed + start,
            format!("expected ${{services.<name>.<field>}}, found ${{services.{reference}}}"),
        ))?;
        out.push_str(&lookup(service, field).map_err(|m| (consumed + start, m))?);
        let advance = start + OPEN.len() + end + 1;
        consumed += advance;
        rest = &rest[advance..];
    }
    out.push_str(rest);
    Ok(out)
}

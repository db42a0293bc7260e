//! A service's `watch`, `ignore` and `on_change`: globs checked here, where a bad one can be
//! pointed at in the file, so the daemon's watcher only ever gets patterns that compile.

use toml::Spanned;

use super::Ctx;
use super::interpolate::{Lookup, interpolate_command};
use crate::config::raw::RawService;
use crate::config::{ConfigError, Watch};

pub(super) fn resolve(ctx: &Ctx, s: &RawService, lookup: &Lookup) -> Result<Option<Watch>, ConfigError> {
    let Some(paths) = &s.watch else {
        if let Some(stray) = s.ignore.as_ref().and_then(|i| i.first()) {
            return Err(ctx.err(stray.span().start, "ignore needs watch = [...] on the same service"));
        }
        if let Some(stray) = &s.on_change {
            return Err(ctx.err(stray.span().start, "on_change needs watch = [...] on the same service"));
        }
        return Ok(None);
    };
    if paths.is_empty() {
        return Err(ctx.err(0, "watch is empty: give at least one path or glob, e.g. watch = [\"src/**\"]"));
    }
    let globs = |list: &[Spanned<String>]| -> Result<Vec<String>, ConfigError> {
        list.iter()
            .map(|g| {
                check_glob(g.get_ref()).map(|()| g.get_ref().clone()).map_err(|m| ctx.err(g.span().start, m))
            })
            .collect()
    };
    Ok(Some(Watch {
        paths: globs(paths)?,
        ignore: globs(s.ignore.as_deref().unwrap_or_default())?,
        on_change: s.on_change.as_ref().map(|c| interpolate_command(ctx, c, lookup)).transpose()?,
    }))
}

/// A glob relative to the project directory that stays inside it.
pub fn check_glob(glob: &str) -> Result<(), String> {
    if glob.is_empty() {
        return Err("an empty watch pattern".into());
    }
    if glob.starts_with('/') {
        return Err(format!(
            "watch pattern {glob:?} is absolute: write it relative to the project directory"
        ));
    }
    if glob.split('/').any(|part| part == "..") {
        return Err(format!("watch pattern {glob:?} leaves the project directory"));
    }
    globset::GlobBuilder::new(glob)
        .literal_separator(true)
        .build()
        .map(|_| ())
        .map_err(|e| format!("watch pattern {glob:?}: {}", e.kind()))
}

//! The start order of a file's services, with unknown names, self-dependencies and cycles
//! refused where they are written.

use std::collections::{BTreeMap, HashMap};

use toml::Spanned;

use super::Ctx;
use crate::config::ConfigError;
use crate::config::raw::RawService;

/// Topological order (dependencies first, otherwise by name); rejects missing names and cycles.
pub(super) fn start_order<'a>(
    ctx: &Ctx,
    services: &BTreeMap<&'a str, &Spanned<RawService>>,
) -> Result<Vec<&'a str>, ConfigError> {
    for (name, service) in services {
        for (dep, _) in service.get_ref().depends_on.iter().flat_map(|d| d.0.iter()) {
            if !services.contains_key(dep.get_ref().as_str()) {
                return Err(ctx.err(
                    dep.span().start,
                    format!("{name:?} depends on unknown service {:?}", dep.get_ref()),
                ));
            }
            if dep.get_ref() == name {
                return Err(ctx.err(dep.span().start, format!("{name:?} depends on itself")));
            }
        }
    }
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        New,
        Visiting,
        Done,
    }
    fn visit<'a>(
        ctx: &Ctx,
        services: &BTreeMap<&'a str, &Spanned<RawService>>,
        name: &'a str,
        marks: &mut HashMap<&'a str, Mark>,
        path: &mut Vec<&'a str>,
        order: &mut Vec<&'a str>,
    ) -> Result<(), ConfigError> {
        marks.insert(name, Mark::Visiting);
        path.push(name);
        for (dep, _) in services[name].get_ref().depends_on.iter().flat_map(|d| d.0.iter()) {
            let (dep_name, _) = services.get_key_value(dep.get_ref().as_str()).expect("checked above");
            match marks[dep_name] {
                Mark::Done => {}
                Mark::Visiting => {
                    let start = path.iter().position(|n| n == dep_name).unwrap_or(0);
                    let mut cycle: Vec<&str> = path[start..].to_vec();
                    cycle.push(dep_name);
                    return Err(
                        ctx.err(dep.span().start, format!("dependency cycle: {}", cycle.join(" -> ")))
                    );
                }
                Mark::New => visit(ctx, services, dep_name, marks, path, order)?,
            }
        }
        path.pop();
        marks.insert(name, Mark::Done);
        order.push(name);
        Ok(())
    }
    let mut marks: HashMap<&str, Mark> = services.keys().map(|k| (*k, Mark::New)).collect();
    let mut order = Vec::new();
    for name in services.keys() {
        if marks[name] == Mark::New {
            visit(ctx, services, name, &mut marks, &mut Vec::new(), &mut order)?;
        }
    }
    Ok(order)
}

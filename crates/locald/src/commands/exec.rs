//! `locald exec SERVICE -- CMD...` runs a command as the service would be run — its environment
//! (interpolated ports and URLs, `env_file`, the `trust_local_ca` variables) in its working
//! directory — for migrations and consoles; `locald env SERVICE` prints that environment with
//! the layer that set each variable.

use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::ExitCode;

use locald_core::ipc::{EnvVar, Request, Response, ServiceEnv};

use super::client::{Client, project_dir};

fn service_env(dir: &Path, service: &str) -> anyhow::Result<ServiceEnv> {
    let dir = project_dir(Some(dir.to_owned()))?;
    match Client::call(&Request::Env { dir, service: service.to_owned() })? {
        Response::Env(env) => Ok(env),
        other => anyhow::bail!("unexpected answer from the daemon: {other:?}"),
    }
}

/// Replaces this process with `command`: its exit status, signals and terminal are the
/// command's own.
pub fn exec(dir: &Path, service: &str, command: &[String]) -> anyhow::Result<ExitCode> {
    let Some((program, args)) = command.split_first() else {
        anyhow::bail!("no command given: locald exec {service} -- COMMAND [ARGS...]");
    };
    let env = service_env(dir, service)?;
    if env.not_running {
        eprintln!(
            "locald: the project is not up; {service}'s ports are the ones `locald up` would assign now"
        );
    }
    let error = std::process::Command::new(program)
        .args(args)
        .current_dir(&env.cwd)
        .envs(env.vars.iter().map(|v| (&v.name, &v.value)))
        .exec();
    eprintln!("locald: cannot run {program}: {error}");
    // The shell's convention: 127 not found, 126 found but not runnable.
    Ok(ExitCode::from(if error.kind() == std::io::ErrorKind::NotFound { 127 } else { 126 }))
}

/// One `NAME=value  # layer` line per variable as it ends up (a later one of a name wins),
/// quoted for a POSIX shell where needed so that `eval "$(locald env web)"` works.
pub fn print(dir: &Path, service: &str) -> anyhow::Result<ExitCode> {
    let env = service_env(dir, service)?;
    if env.not_running {
        println!("# the project is not up: ports as `locald up` would assign them now");
    }
    println!("# cwd: {}", env.cwd.display());
    for var in effective(&env.vars) {
        println!("{}={}  # {}", var.name, quoted(&var.value), var.layer);
    }
    Ok(ExitCode::SUCCESS)
}

/// The last setting of each name, where its first one was.
fn effective(vars: &[EnvVar]) -> Vec<&EnvVar> {
    let mut out: Vec<&EnvVar> = Vec::new();
    for var in vars {
        match out.iter_mut().find(|v| v.name == var.name) {
            Some(slot) => *slot = var,
            None => out.push(var),
        }
    }
    out
}

fn quoted(value: &str) -> String {
    let plain =
        !value.is_empty() && value.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_./:@%+=,".contains(&b));
    if plain { value.to_owned() } else { format!("'{}'", value.replace('\'', r"'\''")) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_quoted_only_when_a_shell_needs_it() {
        assert_eq!(quoted("http://127.0.0.1:4000"), "http://127.0.0.1:4000");
        assert_eq!(quoted("a b"), "'a b'");
        assert_eq!(quoted("it's"), r"'it'\''s'");
        assert_eq!(quoted(""), "''");
    }

    #[test]
    fn a_later_setting_wins_with_its_layer() {
        let var = |name: &str, value: &str, layer: &str| EnvVar {
            name: name.into(),
            value: value.into(),
            layer: layer.into(),
        };
        let vars = [var("A", "1", "env_file"), var("B", "2", "env_file"), var("A", "3", "env")];
        let got: Vec<_> = effective(&vars).into_iter().map(|v| (&*v.name, &*v.value, &*v.layer)).collect();
        assert_eq!(got, [("A", "3", "env"), ("B", "2", "env_file")]);
    }
}

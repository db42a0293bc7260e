//! locald as root (devcontainers, WSL, CI): `up` works without any opt-in, binds 80/443 and
//! keeps `/etc/hosts` itself; and a bind-mounted `/etc/hosts` (as in every Docker/Podman
//! container), which rename cannot replace, is rewritten in place — by the shim for a user, and
//! by a root daemon. Each runs in a private mount (and network) namespace whose `/etc/hosts` is a
//! scratch file bind-mounted over it: the host's real one is never touched (asserted).

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output};

use locald_tests::daemon::{Daemon, pids_with_env};
use locald_tests::{privileged, text};

const BASE: &str = "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost\n";

/// `program args…` in a new mount and network namespace (loopback up) where `hosts` is
/// bind-mounted over /etc/hosts.
fn with_mounted_hosts(hosts: &Path, program: &Path, args: &[&str]) -> Command {
    let mut command = Command::new("unshare");
    command
        .args(["--mount", "--net", "--propagation", "private", "sh", "-c"])
        .arg("ip link set lo up && mount --bind \"$0\" /etc/hosts && exec \"$@\"")
        .arg(hosts)
        .arg(program)
        .args(args);
    command
}

fn real_hosts() -> Vec<u8> {
    fs::read("/etc/hosts").unwrap_or_default()
}

#[test]
fn the_shim_rewrites_a_bind_mounted_hosts_file_in_place() {
    let Some(p) = privileged() else { return };
    let real = real_hosts();
    let dir = p.scratch_dir("hosts-bind-mounted");
    let hosts = dir.join("hosts");
    fs::write(&hosts, BASE).unwrap();
    fs::set_permissions(&hosts, fs::Permissions::from_mode(0o644)).unwrap();
    let shim = p.shim();
    let uid = p.user.uid.to_string();
    let gid = p.user.gid.to_string();
    // The shim as the throwaway user (setpriv drops to it after the mounts are made).
    let setpriv = Path::new("/usr/bin/setpriv");
    let args = [
        "--reuid",
        uid.as_str(),
        "--regid",
        gid.as_str(),
        "--clear-groups",
        shim.to_str().unwrap(),
        "admin",
        "sync-hosts",
        "--",
        "shop.test",
    ];
    let out = with_mounted_hosts(&hosts, setpriv, &args).env_clear().output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let content = fs::read_to_string(&hosts).unwrap();
    assert!(content.starts_with(BASE), "{content}");
    assert!(
        content.contains(&format!("# BEGIN locald uid={uid}\n127.0.0.1\tshop.test\n::1\tshop.test\n")),
        "{content}"
    );
    let out = with_mounted_hosts(&hosts, setpriv, &args[..args.len() - 1]).env_clear().output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(fs::read_to_string(&hosts).unwrap(), BASE, "the block went, nothing else");
    assert_eq!(real_hosts(), real, "the host's /etc/hosts changed");
}

fn run(daemon: &Daemon, command: &mut Command) -> Output {
    // As a root user's shell would: no opt-in variable, the daemon's root jobs on.
    command.env_clear();
    for (key, value) in daemon.cmd().get_envs() {
        if let Some(value) = value.filter(|_| key != "LOCALD_ROOT_JOBS") {
            command.env(key, value);
        }
    }
    command.output().unwrap()
}

#[test]
fn as_root_up_binds_443_writes_a_bind_mounted_hosts_and_down_leaves_nothing() {
    let Some(_) = privileged() else { return };
    let real = real_hosts();
    let daemon = Daemon::new();
    let hosts = daemon.root.join("hosts");
    fs::write(&hosts, BASE).unwrap();
    let dir = daemon.project(
        "rooty",
        "[project]\nname = \"rooty\"\ndomain = \"rooty.test\"\n\n[services.web]\n\
         command = \"exec python3 -m http.server --bind 127.0.0.1 $PORT\"\n",
    );
    let locald = locald_tests::built_bin("locald");
    let out = run(&daemon, &mut with_mounted_hosts(&hosts, &locald, &["up", dir.to_str().unwrap()]));
    assert!(out.status.success(), "{}", text(&out));
    let up = String::from_utf8_lossy(&out.stdout);
    assert!(up.starts_with("note: running as root, so the services run as root too\n"), "{up}");
    assert_eq!(up.lines().filter(|l| l.contains(" root")).count(), 1, "one line about root:\n{up}");
    assert!(up.contains("  web              https://rooty.test "), "on 443, no port in the URL:\n{up}");
    assert!(!up.contains("not 443/80"), "{up}");
    let content = fs::read_to_string(&hosts).unwrap();
    assert!(content.contains("# BEGIN locald uid=0\n127.0.0.1\trooty.test\n"), "{content}");

    let down = run(&daemon, daemon.cmd().args(["down", dir.to_str().unwrap()]));
    assert!(down.status.success(), "{}", text(&down));
    assert_eq!(fs::read_to_string(&hosts).unwrap(), BASE, "down takes the block away");
    let stop = run(&daemon, daemon.cmd().args(["server", "stop"]));
    assert!(stop.status.success(), "{}", text(&stop));
    let left = locald_tests::wait_for(std::time::Duration::from_secs(5), || {
        pids_with_env("XDG_STATE_HOME", &daemon.root.join("state")).is_empty().then_some(())
    });
    assert!(
        left.is_some(),
        "processes left: {:?}",
        pids_with_env("XDG_STATE_HOME", &daemon.root.join("state"))
    );
    assert_eq!(real_hosts(), real, "the host's /etc/hosts changed");
}

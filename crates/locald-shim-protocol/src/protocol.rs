//! Protocol v1 types: what the daemon may ask of the shim, as argv.

use std::ffi::OsString;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::ShimError;

/// Bumped whenever argv or the meaning of a request changes. The daemon refuses privileged work
/// when the installed shim reports another number.
pub const PROTOCOL_VERSION: u32 = 7;

/// The fd on which a subcommand that passes fds back (or takes control messages) finds its unix
/// socket. Passing a socket by fd, not by path, leaves nothing in the filesystem to race.
pub const CONTROL_FD: i32 = 3;

/// What `--shim-version` prints; the daemon parses it back with [`parse_version_line`].
pub fn version_line() -> String {
    format!("locald-shim {} protocol {}", env!("CARGO_PKG_VERSION"), PROTOCOL_VERSION)
}

/// How the shim holds its privilege, reported by `--shim-version` on its second line (protocol 5):
/// the shim judges it from what the process holds, not from its own file, so a NixOS wrapper
/// that passes the capability as an ambient one reads the same as a file capability.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShimMode {
    /// Effective uid 0 (installed setuid root): every request.
    Setuid,
    /// Only `cap_net_bind_service` (the `--ports-only` install): `bind` and `--shim-version`.
    Capabilities,
    /// Neither: a copy, a nosuid mount, an install that lost its bit or capability.
    Unprivileged,
}

impl ShimMode {
    pub const fn as_str(self) -> &'static str {
        match self {
            ShimMode::Setuid => "setuid",
            ShimMode::Capabilities => "capabilities",
            ShimMode::Unprivileged => "none",
        }
    }

    /// The second line of `--shim-version`.
    pub fn line(self) -> String {
        format!("mode {}", self.as_str())
    }

    pub fn parse_line(line: &str) -> Option<Self> {
        match line.trim().strip_prefix("mode ")? {
            "setuid" => Some(ShimMode::Setuid),
            "capabilities" => Some(ShimMode::Capabilities),
            "none" => Some(ShimMode::Unprivileged),
            _ => None,
        }
    }
}

impl std::fmt::Display for ShimMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The shim's crate version and protocol number, parsed from a `--shim-version` line.
pub fn parse_version_line(line: &str) -> Option<(String, u32)> {
    let mut words = line.split_whitespace();
    let (Some("locald-shim"), Some(version), Some("protocol"), Some(protocol), None) =
        (words.next(), words.next(), words.next(), words.next(), words.next())
    else {
        return None;
    };
    Some((version.to_owned(), protocol.parse().ok()?))
}

/// One request to the shim.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    /// `--shim-version`: the only request served without root.
    Version,
    /// `bind`: a listening TCP socket on a privileged port, sent back over [`CONTROL_FD`].
    Bind(BindRequest),
    /// `admin cleanup <ABS>`: remove a root-owned leftover inside a caller-owned `.locald`.
    Cleanup(CleanupRequest),
    /// `admin sync-hosts [DOMAIN...]`: rewrite the caller's block in `/etc/hosts`.
    SyncHosts(SyncHostsRequest),
    /// `admin mount-loop`: loop-mount a caller-owned image under `.locald/mounts/`.
    MountLoop(MountLoopRequest),
    /// `admin unmount-loop --target <ABS>`: undo a `mount-loop`.
    UnmountLoop(UnmountLoopRequest),
    /// `debug port <P>`: pid, uid and command name of whoever listens on port P.
    DebugPort(DebugPortRequest),
    /// `bundle run --bundle <ABS> --id <ID>`: run an OCI bundle confined to the caller.
    BundleRun(BundleRunRequest),
}

/// `bundle run --bundle <ABS> --id <ID>`
#[derive(Debug, Clone, PartialEq, Eq, Args)]
pub struct BundleRunRequest {
    /// The bundle directory (config.json + rootfs), owned by the caller.
    #[arg(long)]
    pub bundle: PathBuf,
    /// Container id, `[A-Za-z0-9_.-]{1,64}`, unique per caller.
    #[arg(long)]
    pub id: String,
    /// The caller's image cache: lowers may lie inside it (protocol 7).
    #[arg(long)]
    pub cache: Option<PathBuf>,
    /// Protocol 6: the root is an overlay of these directories (topmost first, see
    /// [`crate::overlay`]) with the bundle's `upper` and `work`, mounted onto `root.path`.
    #[arg(long = "lower")]
    pub lowers: Vec<PathBuf>,
}

/// `admin cleanup <PATH>`
#[derive(Debug, Clone, PartialEq, Eq, Args)]
pub struct CleanupRequest {
    /// Absolute path strictly inside a `.locald` directory owned by the caller.
    pub path: PathBuf,
}

/// `admin sync-hosts [DOMAIN...]`; no domains removes the caller's block.
#[derive(Debug, Clone, PartialEq, Eq, Args)]
pub struct SyncHostsRequest {
    /// Lowercase hostnames to map to 127.0.0.1 and ::1.
    pub domains: Vec<String>,
}

/// `admin mount-loop --image <ABS> --target <ABS> [--fstype T] [--read-write]`
#[derive(Debug, Clone, PartialEq, Eq, Args)]
pub struct MountLoopRequest {
    /// A regular file owned by the caller.
    #[arg(long)]
    pub image: PathBuf,
    /// An existing empty directory under a caller-owned `<project>/.locald/mounts/`.
    #[arg(long)]
    pub target: PathBuf,
    /// Filesystem type, from a short allow-list.
    #[arg(long, default_value = "ext4")]
    pub fstype: String,
    /// Mount writable (read-only otherwise).
    #[arg(long)]
    pub read_write: bool,
}

/// `admin unmount-loop --target <ABS>`
#[derive(Debug, Clone, PartialEq, Eq, Args)]
pub struct UnmountLoopRequest {
    #[arg(long)]
    pub target: PathBuf,
}

/// `debug port <PORT>`
#[derive(Debug, Clone, PartialEq, Eq, Args)]
pub struct DebugPortRequest {
    pub port: u16,
}

/// `bind --port <P> [--address <IP>]`: loopback only. Nothing in locald listens elsewhere (Lima
/// forwards the guest's loopback ports), and a privileged port on every interface is not
/// something any local user should get.
#[derive(Debug, Clone, PartialEq, Eq, Args)]
pub struct BindRequest {
    /// The privileged port to listen on (1-1023).
    #[arg(long)]
    pub port: u16,
    /// The address to listen on, a loopback one (127.0.0.0/8 or ::1); 127.0.0.1 unless given.
    #[arg(long)]
    pub address: Option<IpAddr>,
}

impl BindRequest {
    pub const DEFAULT_ADDRESS: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

    /// The socket address this request may bind, or why not.
    pub fn validate(&self) -> Result<SocketAddr, ShimError> {
        if !(1..=1023).contains(&self.port) {
            return Err(ShimError::refused(format!(
                "port {} is not a privileged port (1-1023); bind it without the shim",
                self.port
            )));
        }
        let address = self.address.unwrap_or(Self::DEFAULT_ADDRESS);
        // `Ipv6Addr::is_loopback` is true only for ::1, so an IPv4-mapped address and the
        // unspecified address are both refused.
        if !address.is_loopback() {
            return Err(ShimError::refused(format!(
                "address {address} is not loopback (127.0.0.0/8 or ::1); the shim binds nothing else"
            )));
        }
        Ok(SocketAddr::new(address, self.port))
    }
}

#[derive(Debug, Parser)]
#[command(
    name = "locald-shim",
    about = "Privileged helper of locald; invoked only by locald, its argv is a private protocol",
    disable_help_subcommand = true,
    args_conflicts_with_subcommands = true
)]
struct Cli {
    /// Print `locald-shim <version> protocol <N>` and exit.
    #[arg(long)]
    shim_version: bool,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Bind a privileged TCP port and pass the listener back over fd 3.
    Bind(BindRequest),
    /// Filesystem and host-configuration primitives.
    #[command(subcommand)]
    Admin(AdminCommand),
    /// Read-only diagnostics.
    #[command(subcommand)]
    Debug(DebugCommand),
    /// OCI bundles.
    #[command(subcommand)]
    Bundle(BundleCommand),
}

#[derive(Debug, Subcommand)]
enum BundleCommand {
    /// Run an OCI bundle in a user namespace mapped to the caller; stays its parent.
    Run(BundleRunRequest),
}

#[derive(Debug, Subcommand)]
enum AdminCommand {
    /// Remove a root-owned leftover inside a caller-owned .locald directory.
    Cleanup(CleanupRequest),
    /// Rewrite the caller's block in /etc/hosts.
    SyncHosts(SyncHostsRequest),
    /// Loop-mount a caller-owned image under <project>/.locald/mounts/.
    MountLoop(MountLoopRequest),
    /// Unmount a loop mount made by mount-loop.
    UnmountLoop(UnmountLoopRequest),
}

#[derive(Debug, Subcommand)]
enum DebugCommand {
    /// Who listens on a TCP port: pid, uid and command name.
    Port(DebugPortRequest),
}

/// Parsing either gives a request, asks to print help, or fails with a usage error.
#[derive(Debug)]
pub enum Parsed {
    Request(Request),
    /// `--help`: the text to print on stdout; exit 0.
    Help(String),
}

impl Request {
    /// Parses a full argv (program name first).
    pub fn parse_from<I, T>(argv: I) -> Result<Parsed, ShimError>
    where
        I: IntoIterator<Item = T>,
        T: Into<OsString> + Clone,
    {
        let cli = match Cli::try_parse_from(argv) {
            Ok(cli) => cli,
            Err(err) if err.kind() == clap::error::ErrorKind::DisplayHelp => {
                return Ok(Parsed::Help(err.render().to_string()));
            }
            Err(err) => return Err(ShimError::usage(first_line(&err.render().to_string()))),
        };
        match (cli.shim_version, cli.command) {
            (true, None) => Ok(Parsed::Request(Request::Version)),
            (false, Some(command)) => Ok(Parsed::Request(match command {
                Command::Bind(r) => Request::Bind(r),
                Command::Admin(AdminCommand::Cleanup(r)) => Request::Cleanup(r),
                Command::Admin(AdminCommand::SyncHosts(r)) => Request::SyncHosts(r),
                Command::Admin(AdminCommand::MountLoop(r)) => Request::MountLoop(r),
                Command::Admin(AdminCommand::UnmountLoop(r)) => Request::UnmountLoop(r),
                Command::Debug(DebugCommand::Port(r)) => Request::DebugPort(r),
                Command::Bundle(BundleCommand::Run(r)) => Request::BundleRun(r),
            })),
            (false, None) => Err(ShimError::usage("no request given (see --help)")),
            (true, Some(_)) => Err(ShimError::usage("--shim-version takes no subcommand")),
        }
    }

    /// The argv (without program name) that [`Request::parse_from`] turns back into `self`.
    pub fn to_args(&self) -> Vec<OsString> {
        let mut args: Vec<OsString> = Vec::new();
        match self {
            Request::Version => args.push("--shim-version".into()),
            Request::Bind(bind) => {
                args.extend(["bind".into(), "--port".into(), bind.port.to_string().into()]);
                if let Some(address) = bind.address {
                    args.extend(["--address".into(), address.to_string().into()]);
                }
            }
            Request::Cleanup(r) => {
                args.extend(["admin".into(), "cleanup".into(), "--".into(), r.path.clone().into()]);
            }
            Request::SyncHosts(r) => {
                args.extend(["admin".into(), "sync-hosts".into(), "--".into()]);
                args.extend(r.domains.iter().map(OsString::from));
            }
            Request::MountLoop(r) => {
                args.extend(["admin".into(), "mount-loop".into(), "--image".into(), r.image.clone().into()]);
                args.extend([
                    "--target".into(),
                    r.target.clone().into(),
                    "--fstype".into(),
                    (&r.fstype).into(),
                ]);
                if r.read_write {
                    args.push("--read-write".into());
                }
            }
            Request::UnmountLoop(r) => {
                args.extend([
                    "admin".into(),
                    "unmount-loop".into(),
                    "--target".into(),
                    r.target.clone().into(),
                ]);
            }
            Request::DebugPort(r) => {
                args.extend(["debug".into(), "port".into(), r.port.to_string().into()]);
            }
            Request::BundleRun(r) => {
                args.extend(["bundle".into(), "run".into(), "--bundle".into(), r.bundle.clone().into()]);
                args.extend(["--id".into(), (&r.id).into()]);
                // `--name=value`, so a path starting with `-` stays a value.
                let joined = |name: &str, value: &PathBuf| {
                    let mut arg = OsString::from(name);
                    arg.push(value);
                    arg
                };
                args.extend(r.cache.iter().map(|cache| joined("--cache=", cache)));
                args.extend(r.lowers.iter().map(|lower| joined("--lower=", lower)));
            }
        }
        args
    }

    /// Whether the request keeps [`CONTROL_FD`] open; every other inherited fd is closed.
    pub fn takes_control_fd(&self) -> bool {
        // bind sends the listener on it; bundle run takes stop requests on it.
        matches!(self, Request::Bind(_) | Request::BundleRun(_))
    }

    /// Whether the request may run without root (only the version handshake).
    pub fn needs_root(&self) -> bool {
        !matches!(self, Request::Version)
    }

    /// Whether a shim holding only `cap_net_bind_service` serves it: the version handshake and
    /// `bind`; everything else needs root.
    pub fn served_with_bind_capability(&self) -> bool {
        matches!(self, Request::Version | Request::Bind(_))
    }

    /// The request's name as written on the command line, for messages.
    pub fn name(&self) -> &'static str {
        match self {
            Request::Version => "--shim-version",
            Request::Bind(_) => "bind",
            Request::Cleanup(_) => "admin cleanup",
            Request::SyncHosts(_) => "admin sync-hosts",
            Request::MountLoop(_) => "admin mount-loop",
            Request::UnmountLoop(_) => "admin unmount-loop",
            Request::DebugPort(_) => "debug port",
            Request::BundleRun(_) => "bundle run",
        }
    }
}

fn first_line(rendered: &str) -> String {
    let line = rendered.lines().find(|l| !l.trim().is_empty()).unwrap_or("invalid arguments");
    line.trim().trim_start_matches("error: ").to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Request, ShimError> {
        let argv = std::iter::once("locald-shim").chain(args.iter().copied());
        match Request::parse_from(argv)? {
            Parsed::Request(request) => Ok(request),
            Parsed::Help(_) => panic!("unexpected help"),
        }
    }

    fn round_trip(request: Request) {
        let mut argv = vec![OsString::from("locald-shim")];
        argv.extend(request.to_args());
        match Request::parse_from(argv).expect("argv built by to_args must parse") {
            Parsed::Request(parsed) => assert_eq!(parsed, request),
            Parsed::Help(_) => panic!("to_args produced a help request"),
        }
    }

    #[test]
    fn every_request_round_trips() {
        round_trip(Request::Version);
        round_trip(Request::Bind(BindRequest { port: 80, address: None }));
        round_trip(Request::Bind(BindRequest { port: 443, address: Some("::1".parse().unwrap()) }));
        round_trip(Request::Cleanup(CleanupRequest { path: "/p/.locald/x".into() }));
        // A leading dash must stay a path, not become an option.
        round_trip(Request::Cleanup(CleanupRequest { path: "-rf".into() }));
        round_trip(Request::SyncHosts(SyncHostsRequest { domains: vec![] }));
        round_trip(Request::SyncHosts(SyncHostsRequest { domains: vec!["a.localhost".into(), "-x".into()] }));
        round_trip(Request::MountLoop(MountLoopRequest {
            image: "/p/img.ext4".into(),
            target: "/p/.locald/mounts/m".into(),
            fstype: "ext4".into(),
            read_write: false,
        }));
        round_trip(Request::MountLoop(MountLoopRequest {
            image: "/p/img".into(),
            target: "/p/.locald/mounts/m".into(),
            fstype: "squashfs".into(),
            read_write: true,
        }));
        round_trip(Request::UnmountLoop(UnmountLoopRequest { target: "/p/.locald/mounts/m".into() }));
        round_trip(Request::DebugPort(DebugPortRequest { port: 5432 }));
        round_trip(Request::BundleRun(BundleRunRequest {
            bundle: "/p/.locald/bundles/web".into(),
            id: "web-1".into(),
            cache: None,
            lowers: vec![],
        }));
        round_trip(Request::BundleRun(BundleRunRequest {
            bundle: "/p/.locald/bundles/web".into(),
            id: "web-1".into(),
            cache: Some("/h/.cache/locald".into()),
            lowers: vec!["/h/.cache/locald/oci/layers/sha256/b".into(), "-a".into()],
        }));
    }

    #[test]
    fn version_line_parses_back() {
        let (version, protocol) = parse_version_line(&version_line()).unwrap();
        assert_eq!(version, env!("CARGO_PKG_VERSION"));
        assert_eq!(protocol, PROTOCOL_VERSION);
        assert_eq!(parse_version_line("locald-shim 1 protocol x"), None);
        assert_eq!(parse_version_line("evil 1 protocol 1"), None);
        assert_eq!(parse_version_line("locald-shim 1 protocol 1 extra"), None);
    }

    #[test]
    fn mode_lines_parse_back() {
        for mode in [ShimMode::Setuid, ShimMode::Capabilities, ShimMode::Unprivileged] {
            assert_eq!(ShimMode::parse_line(&mode.line()), Some(mode));
        }
        assert_eq!(ShimMode::parse_line("mode root"), None);
        assert_eq!(ShimMode::parse_line(""), None);
    }

    #[test]
    fn only_bind_and_the_handshake_are_served_with_the_bind_capability() {
        let served: Vec<&str> = [
            "--shim-version",
            "bind --port 80",
            "admin cleanup /p/.locald/x",
            "admin sync-hosts a.test",
            "admin mount-loop --image /i --target /t",
            "admin unmount-loop --target /t",
            "debug port 80",
            "bundle run --bundle /b --id x",
        ]
        .iter()
        .map(|argv| parse(&argv.split(' ').collect::<Vec<_>>()).unwrap())
        .filter(Request::served_with_bind_capability)
        .map(|r| r.name())
        .collect();
        assert_eq!(served, ["--shim-version", "bind"]);
    }

    #[test]
    fn empty_and_conflicting_argv_are_usage_errors() {
        let err = parse(&[]).unwrap_err();
        assert_eq!(err.class, crate::ExitClass::Usage);
        let err = parse(&["--shim-version", "bind", "--port", "80"]).unwrap_err();
        assert_eq!(err.class, crate::ExitClass::Usage);
        assert_eq!(parse(&["bind"]).unwrap_err().class, crate::ExitClass::Usage);
        assert_eq!(parse(&["bind", "--port", "65536"]).unwrap_err().class, crate::ExitClass::Usage);
        assert_eq!(parse(&["bind", "--port", "80", "/tmp/sock"]).unwrap_err().class, crate::ExitClass::Usage);
        assert_eq!(parse(&["frobnicate"]).unwrap_err().class, crate::ExitClass::Usage);
    }

    #[test]
    fn usage_errors_are_one_line() {
        let err = parse(&["bind", "--port", "eighty"]).unwrap_err();
        assert!(!err.to_string().contains('\n'), "{err}");
        assert!(err.to_string().contains("eighty"), "{err}");
    }

    fn bind(port: u16, address: Option<&str>) -> Result<SocketAddr, ShimError> {
        BindRequest { port, address: address.map(|a| a.parse().unwrap()) }.validate()
    }

    #[test]
    fn bind_allows_privileged_ports_on_loopback() {
        assert_eq!(bind(80, None).unwrap(), "127.0.0.1:80".parse().unwrap());
        assert_eq!(bind(443, Some("::1")).unwrap(), "[::1]:443".parse().unwrap());
        assert_eq!(bind(1, Some("127.0.0.2")).unwrap(), "127.0.0.2:1".parse().unwrap());
        assert_eq!(bind(1023, None).unwrap().port(), 1023);
    }

    #[test]
    fn bind_refuses_unprivileged_ports() {
        for port in [0, 1024, 8080, 65535] {
            let err = bind(port, None).unwrap_err();
            assert_eq!(err.class, crate::ExitClass::Refused, "port {port}");
        }
    }

    #[test]
    fn bind_refuses_every_non_loopback_address() {
        for address in ["0.0.0.0", "::", "192.0.2.1", "::ffff:127.0.0.1", "2001:db8::1"] {
            let err = bind(80, Some(address)).unwrap_err();
            assert_eq!(err.class, crate::ExitClass::Refused, "{address}");
        }
        // The flag that used to allow them is gone from the protocol.
        assert_eq!(
            parse(&["bind", "--port", "80", "--address", "0.0.0.0", "--non-loopback"]).unwrap_err().class,
            crate::ExitClass::Usage
        );
    }

    #[test]
    fn control_fd_and_root_requirements() {
        assert!(!Request::Version.takes_control_fd());
        assert!(!Request::Version.needs_root());
        let bind = Request::Bind(BindRequest { port: 80, address: None });
        assert!(bind.takes_control_fd());
        assert!(bind.needs_root());
    }
}

//! Argument types of `locald`.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(name = "locald", version, about = "Run a project's services at https://<name>.localhost")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Check this machine for what locald needs; exits non-zero when something blocks.
    Doctor {
        /// Print the findings as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Administrative tasks that need root.
    Admin {
        #[command(subcommand)]
        command: AdminCommand,
    },
    /// Loop-mount a filesystem image at <project>/.locald/mounts/<name> (read-only unless asked).
    Mount {
        /// The image file (ext4, which also mounts ext2/3 images, squashfs or erofs); you must own it.
        image: PathBuf,
        /// Mount name; defaults to the image's file stem.
        #[arg(long)]
        name: Option<String>,
        /// Filesystem type of the image.
        #[arg(long, default_value = "ext4")]
        fstype: String,
        /// Mount writable.
        #[arg(long)]
        read_write: bool,
    },
    /// Unmount a mount made by `locald mount`.
    Unmount {
        /// The mount name.
        name: String,
    },
    /// Start the project in DIR (default: here) and wait until its services are ready. On a
    /// running project, a changed locald.toml is applied first (what changed restarts).
    Up {
        /// `[DIR] [SERVICE...]`: only these services and what they depend on (default: every
        /// service outside a profile). A first argument with a `/`, or a directory holding a
        /// locald.toml or Procfile, is the project directory.
        args: Vec<String>,
        /// The project directory (instead of the first argument).
        #[arg(short = 'C', long = "dir")]
        dir: Option<PathBuf>,
        /// Also start the services with this profile (repeatable).
        #[arg(long = "profile")]
        profiles: Vec<String>,
        /// Then restart services when files their `watch` globs name change.
        #[arg(long)]
        watch: bool,
    },
    /// `up --watch`: start the project (or attach to it) and restart services when files their
    /// `watch` globs name change; `--stop` ends the watch and leaves the services running.
    Watch {
        dir: Option<PathBuf>,
        #[arg(long)]
        stop: bool,
    },
    /// Stop the project's services and forget it; what its containers wrote is kept for the next
    /// `up` unless `--volumes` is given.
    Down {
        dir: Option<PathBuf>,
        /// Also remove what the project's containers wrote (`.locald/containers/`), as
        /// `compose down --volumes` removes its volumes.
        #[arg(long, short = 'v')]
        volumes: bool,
    },
    /// Pull the registry images of the project's services (default: all) afresh and pin them;
    /// the next start of a service uses what was pulled.
    Pull {
        services: Vec<String>,
        #[command(flatten)]
        project: ProjectArg,
    },
    /// The registry images in your store: size and the projects that use them.
    Images {
        #[command(subcommand)]
        command: Option<ImagesCommand>,
    },
    /// Every project and service: state, pid, port, URL, health, restarts, uptime.
    Status {
        #[arg(long)]
        json: bool,
    },
    /// Show the logs of the project's services, interleaved by time.
    Logs {
        /// Only these services (default: all).
        services: Vec<String>,
        /// Keep printing new lines.
        #[arg(short, long)]
        follow: bool,
        /// Only the last N lines.
        #[arg(short = 'n', long)]
        tail: Option<usize>,
        /// Only lines since a time (RFC 3339) or for a duration back ("10m", "1h 30m").
        #[arg(long)]
        since: Option<String>,
        /// Print each line's time.
        #[arg(short, long)]
        timestamps: bool,
        #[command(flatten)]
        project: ProjectArg,
    },
    /// Start stopped services.
    Start {
        #[arg(required = true)]
        services: Vec<String>,
        #[command(flatten)]
        project: ProjectArg,
    },
    /// Stop services (stop signal, then SIGKILL after each one's stop_timeout), dependents first.
    Stop {
        #[arg(required = true)]
        services: Vec<String>,
        #[command(flatten)]
        project: ProjectArg,
    },
    /// Stop and start services.
    Restart {
        #[arg(required = true)]
        services: Vec<String>,
        #[command(flatten)]
        project: ProjectArg,
    },
    /// Run a command with a service's environment (ports, URLs, env_file, CA variables) in its
    /// working directory: `locald exec api -- python manage.py migrate`. Exits with its status.
    Exec {
        service: String,
        /// The command and its arguments.
        #[arg(last = true, required = true)]
        command: Vec<String>,
        #[command(flatten)]
        project: ProjectArg,
    },
    /// Print a service's environment, each variable with the layer that set it (env_file, env,
    /// locald).
    Env {
        service: String,
        #[command(flatten)]
        project: ProjectArg,
    },
    /// Configuration.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
    /// Open the dashboard (https://locald.localhost) in your browser, logged in; prints a one-time
    /// login URL instead when there is no display.
    Dashboard {
        /// Only print the login URL (valid once, for two minutes).
        #[arg(long)]
        print: bool,
    },
    /// Print the path of the local CA certificate (made on first use): `curl --cacert "$(locald ca)"`.
    Ca,
    /// Trust the local CA: the system store (through sudo) and your NSS databases (Chromium,
    /// Firefox) with certutil.
    Trust {
        #[command(flatten)]
        args: TrustArgs,
    },
    /// Remove the local CA from the system store and your NSS databases.
    Untrust {
        #[command(flatten)]
        args: TrustArgs,
    },
    /// Print a shell completion script.
    Completions { shell: clap_complete::Shell },
    /// The per-user daemon.
    Server {
        #[command(subcommand)]
        command: ServerCommand,
    },
    /// Diagnostics.
    Debug {
        #[command(subcommand)]
        command: DebugCommand,
    },
}

#[derive(Debug, Subcommand)]
pub enum DebugCommand {
    /// Show which process listens on a TCP port (pid, uid, command).
    Port { port: u16 },
}

#[derive(Debug, Subcommand)]
pub enum AdminCommand {
    /// Install the locald-shim built with this locald, root-owned and setuid (run with sudo).
    Setup {
        /// Directory to install into; it and its parents must be writable only by root.
        #[arg(long, default_value = locald_daemon::shim::DEFAULT_INSTALL_DIR)]
        dest: PathBuf,
        /// Not setuid: only the file capability cap_net_bind_service, for ports 80/443 and
        /// nothing else (no containers, loop mounts or /etc/hosts entries).
        #[arg(long)]
        ports_only: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum ImagesCommand {
    /// Remove the images no project uses, and their blobs.
    Prune,
}

#[derive(Debug, clap::Args)]
pub struct ProjectArg {
    /// The project directory.
    #[arg(short = 'C', long = "dir", default_value = ".")]
    pub dir: PathBuf,
}

#[derive(Debug, clap::Args)]
pub struct TrustArgs {
    /// The CA certificate (default: yours, or under sudo the invoking user's).
    #[arg(long)]
    pub ca: Option<PathBuf>,
    /// Only the system store, not the NSS databases.
    #[arg(long, conflicts_with = "user_only")]
    pub system_only: bool,
    /// Only your NSS databases, not the system store (no sudo).
    #[arg(long)]
    pub user_only: bool,
}

#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// The resolved configuration (assigned ports, environment, domains) as JSON.
    Show { dir: Option<PathBuf> },
}

#[derive(Debug, Subcommand)]
pub enum ServerCommand {
    /// Run the daemon in the foreground (the other commands start it on demand).
    Start,
    /// Stop every project and the daemon.
    Stop,
}

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
        /// The image file (ext2/3/4, squashfs, erofs, vfat); you must own it.
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
    },
}

//! Error classes of the shim and their exit codes.
//!
//! Each class has its own exit code so the daemon can tell "you asked wrong" from "policy said
//! no" from "the OS failed", without parsing the message.

use std::fmt;

/// Why the shim stopped without doing its job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitClass {
    /// The argv did not parse (sysexits `EX_USAGE`).
    Usage,
    /// The request parsed but is not allowed for this caller (sysexits `EX_NOPERM`).
    Refused,
    /// A system call failed (sysexits `EX_OSERR`).
    Os,
}

impl ExitClass {
    pub const fn code(self) -> i32 {
        match self {
            ExitClass::Usage => 64,
            ExitClass::Refused => 77,
            ExitClass::Os => 71,
        }
    }

    pub const fn from_code(code: i32) -> Option<Self> {
        match code {
            64 => Some(ExitClass::Usage),
            77 => Some(ExitClass::Refused),
            71 => Some(ExitClass::Os),
            _ => None,
        }
    }
}

/// One line for stderr and the class that picks the exit code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShimError {
    pub class: ExitClass,
    pub message: String,
}

impl ShimError {
    pub fn usage(message: impl Into<String>) -> Self {
        Self { class: ExitClass::Usage, message: message.into() }
    }

    pub fn refused(message: impl Into<String>) -> Self {
        Self { class: ExitClass::Refused, message: message.into() }
    }

    pub fn os(context: &str, err: impl fmt::Display) -> Self {
        Self { class: ExitClass::Os, message: format!("{context}: {err}") }
    }
}

impl fmt::Display for ShimError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let class = match self.class {
            ExitClass::Usage => "usage error",
            ExitClass::Refused => "refused",
            ExitClass::Os => "os error",
        };
        // Messages are single lines by construction; make sure of it, since callers print them.
        let message = self.message.replace(['\n', '\r'], " ");
        write!(f, "locald-shim: {class}: {message}")
    }
}

impl std::error::Error for ShimError {}

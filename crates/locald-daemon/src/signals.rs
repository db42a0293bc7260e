//! Signals the daemon was started with ignored. An ignored signal stays ignored across `exec`,
//! so a daemon started from a script's background job (SIGINT and SIGQUIT ignored), under
//! `nohup` (SIGHUP) or by a parent that ignores SIGCHLD would hand that on to every service: a
//! dev server that no longer stops on SIGINT, or one whose `waitpid` fails because its children
//! are reaped for it. The daemon gives every such signal its default action back once, at start,
//! for itself and so for everything it starts.

use nix::sys::signal::Signal;

/// Resets every ignored signal to its default action, except SIGPIPE (ignored by the Rust
/// runtime on purpose; both spawn paths give it back to the children). Returns those reset.
pub fn reset_ignored() -> Vec<Signal> {
    Signal::iterator()
        .filter(|&signal| !matches!(signal, Signal::SIGPIPE | Signal::SIGKILL | Signal::SIGSTOP))
        .filter(|&signal| ignored(signal) && set_default(signal))
        .collect()
}

fn ignored(signal: Signal) -> bool {
    let mut old = std::mem::MaybeUninit::<libc::sigaction>::uninit();
    // SAFETY: a null new action only reads the current one into `old`, which is initialised
    // when the call returns 0.
    let rc = unsafe { libc::sigaction(signal as libc::c_int, std::ptr::null(), old.as_mut_ptr()) };
    // SAFETY: initialised by the successful call above.
    rc == 0 && unsafe { old.assume_init() }.sa_sigaction == libc::SIG_IGN
}

fn set_default(signal: Signal) -> bool {
    // SAFETY: SIG_DFL installs no handler, so no code of ours runs on a signal.
    unsafe { libc::signal(signal as libc::c_int, libc::SIG_DFL) != libc::SIG_ERR }
}

#[cfg(test)]
mod tests {
    use std::process::Command;

    /// In a child of its own (the test process's dispositions stay as they are): signals it was
    /// started with ignored get their default back, SIGPIPE stays ignored.
    #[test]
    fn ignored_signals_get_their_default_back_but_sigpipe() {
        if std::env::var_os("LOCALD_SIGNALS_CHILD").is_some() {
            let reset = super::reset_ignored();
            for signal in [libc::SIGINT, libc::SIGQUIT, libc::SIGHUP, libc::SIGPIPE] {
                println!("{signal} ignored: {}", super::ignored(signal.try_into().unwrap()));
            }
            println!("reset: {reset:?}");
            return;
        }
        // sh's `trap ''` ignores them, and an ignored signal survives exec into the test binary.
        let me = std::env::current_exe().unwrap();
        let out = Command::new("sh")
            .arg("-c")
            .arg("trap '' INT QUIT HUP; exec \"$0\" --exact signals::tests::ignored_signals_get_their_default_back_but_sigpipe --nocapture")
            .arg(&me)
            .env("LOCALD_SIGNALS_CHILD", "1")
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
        for signal in [libc::SIGINT, libc::SIGQUIT, libc::SIGHUP] {
            assert!(stdout.contains(&format!("{signal} ignored: false")), "{signal}: {stdout}");
        }
        assert!(stdout.contains(&format!("{} ignored: true", libc::SIGPIPE)), "{stdout}");
        assert!(
            stdout.contains("SIGINT") && stdout.contains("SIGQUIT") && stdout.contains("SIGHUP"),
            "{stdout}"
        );
    }
}

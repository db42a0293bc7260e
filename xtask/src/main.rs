//! `cargo xtask <task>`: the project's automation, in Rust so it runs wherever cargo does.

mod checks;
mod deps;
mod util;
mod vm;

use anyhow::bail;

const USAGE: &str = "usage: cargo xtask <test|checks|vm [SCENARIO...]>
  test     the whole test suite: build, unit + black-box + privileged tests, shim checks, VM suite
  checks   only the static checks (which crate may depend on which, macOS build)
  vm       boot a real kernel under QEMU and run vm-tests/scenarios (all, or those named)";

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("test") => test(),
        Some("checks") => checks::run(),
        Some("vm") => vm::run(&args[1..]),
        _ => bail!("{USAGE}"),
    }
}

fn test() -> anyhow::Result<()> {
    deps::ensure(deps::TEST_PACKAGES)?;
    // Black-box tests drive the real binaries, so build them all first.
    util::cargo(&["build", "--workspace", "--bins"])?;
    util::cargo(&["test", "--workspace", "--no-fail-fast"])?;
    checks::run()?;
    vm::run(&[])?;
    println!("xtask test: all suites passed");
    Ok(())
}

//! Reading the guest's verdicts from its serial output. Only explicit marker lines count: a
//! missing line is a failure, never a pass.

use std::collections::BTreeMap;
use std::path::Path;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Pass,
    Fail(String),
}

#[derive(Debug, Default, PartialEq)]
pub struct Results {
    pub scenarios: BTreeMap<String, Outcome>,
    pub done: bool,
    pub panic: bool,
    pub timeout: bool,
    pub kernel: Option<String>,
    pub controllers: Option<String>,
    /// `LOCALD-VM-BENCH <name> <mean ms> <runs>` lines, in order.
    pub bench: Vec<Bench>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Bench {
    pub name: String,
    pub mean_ms: f64,
    pub runs: u32,
}

pub fn name(path: &Path) -> String {
    path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default()
}

pub fn parse(output: &str) -> Results {
    let mut results = Results::default();
    for line in output.lines() {
        // Console noise (escape sequences, kernel messages) may precede a marker on its line.
        let line = line.trim_end_matches('\r');
        let line = line.find("LOCALD-VM-").map_or(line, |at| &line[at..]);
        if let Some(rest) = line.strip_prefix("LOCALD-VM-RESULT ") {
            let mut words = rest.splitn(3, ' ');
            let (Some(name), Some(verdict)) = (words.next(), words.next()) else { continue };
            let outcome = if verdict == "PASS" {
                Outcome::Pass
            } else {
                Outcome::Fail(words.next().unwrap_or("").to_owned())
            };
            results.scenarios.insert(name.to_owned(), outcome);
        } else if line == "LOCALD-VM-DONE" {
            results.done = true;
        } else if line.contains("Kernel panic") {
            results.panic = true;
        } else if line.starts_with("LOCALD-VM-TIMEOUT") {
            results.timeout = true;
        } else if let Some(version) = line.strip_prefix("LOCALD-VM-KERNEL ") {
            results.kernel = Some(version.to_owned());
        } else if let Some(list) = line.strip_prefix("LOCALD-VM-CGROUP-CONTROLLERS ") {
            results.controllers = Some(list.to_owned());
        } else if let Some(rest) = line.strip_prefix("LOCALD-VM-BENCH ") {
            let words: Vec<&str> = rest.split_whitespace().collect();
            if let [name, mean, runs] = words[..]
                && let (Ok(mean_ms), Ok(runs)) = (mean.parse(), runs.parse())
            {
                results.bench.push(Bench { name: name.to_owned(), mean_ms, runs });
            }
        }
    }
    results
}

pub fn summary(results: &Results, expected: &[String]) -> String {
    let mut out = format!(
        "kernel: {}\ncgroup.controllers: {}\n",
        results.kernel.as_deref().unwrap_or("?"),
        results.controllers.as_deref().unwrap_or("?")
    );
    for name in expected {
        let verdict = match results.scenarios.get(name) {
            Some(Outcome::Pass) => "PASS".to_owned(),
            Some(Outcome::Fail(code)) => format!("FAIL {code}"),
            None => "MISSING".to_owned(),
        };
        out.push_str(&format!("  {name:<36} {verdict}\n"));
    }
    out.push_str(&bench_table(&results.bench));
    out
}

/// The benchmark lines as a table, with locald-shim's mean over each runtime's (below 1.00x the
/// shim is faster), as `bench/container-start/run.sh` prints it on the host.
fn bench_table(bench: &[Bench]) -> String {
    if bench.is_empty() {
        return String::new();
    }
    let shim = bench.iter().find(|b| b.name == "locald-shim").map(|b| b.mean_ms);
    let mut out = String::from("benchmark (guest timing, comparable only within this boot):\n");
    out.push_str(&format!("  {:<12} {:>9} {:>5} {:>15}\n", "runtime", "mean ms", "runs", "shim / runtime"));
    for b in bench {
        let ratio =
            shim.filter(|_| b.mean_ms > 0.0).map_or("n/a".to_owned(), |s| format!("{:.2}x", s / b.mean_ms));
        out.push_str(&format!("  {:<12} {:>9.1} {:>5} {:>15}\n", b.name, b.mean_ms, b.runs, ratio));
    }
    out
}

/// Ok only if the guest finished, every scenario passed, and the canary failed as it must.
pub fn verdict(results: &Results, expected: &[String], canary: &str) -> Result<(), String> {
    if results.panic {
        return Err("the guest kernel panicked".into());
    }
    if results.timeout {
        return Err("the guest did not finish in time".into());
    }
    if !results.done {
        return Err("the guest stopped before reporting all scenarios".into());
    }
    let mut failed = Vec::new();
    for name in expected {
        let outcome = results.scenarios.get(name);
        let ok = if name == canary {
            matches!(outcome, Some(Outcome::Fail(_)))
        } else {
            outcome == Some(&Outcome::Pass)
        };
        if !ok {
            failed.push(name.clone());
        }
    }
    if failed.is_empty() { Ok(()) } else { Err(format!("VM scenarios failed: {}", failed.join(", "))) }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CANARY: &str = "zz-canary";

    fn expected() -> Vec<String> {
        vec!["a".into(), "b".into(), CANARY.into()]
    }

    const GOOD: &str = "\x1b[2JLOCALD-VM-KERNEL 6.1.0\nLOCALD-VM-CGROUP-CONTROLLERS cpu memory pids\nLOCALD-VM-RESULT a PASS\r\nLOCALD-VM-RESULT b PASS\nLOCALD-VM-RESULT zz-canary FAIL 3\nLOCALD-VM-DONE\n";

    #[test]
    fn all_passing_with_a_failing_canary_is_a_pass() {
        let results = parse(GOOD);
        assert_eq!(verdict(&results, &expected(), CANARY), Ok(()));
        assert_eq!(results.controllers.as_deref(), Some("cpu memory pids"));
        assert_eq!(results.kernel.as_deref(), Some("6.1.0"), "a marker after console noise still counts");
        assert!(summary(&results, &expected()).contains("a                                    PASS"));
    }

    #[test]
    fn bench_lines_are_collected_and_tabled_with_ratios() {
        let output = format!(
            "{GOOD}LOCALD-VM-BENCH locald-shim 50.0 20\r\nnoise LOCALD-VM-BENCH runc 100.0 20\nLOCALD-VM-BENCH crun 40.0 20\nLOCALD-VM-BENCH broken x\n"
        );
        let results = parse(&output);
        let names: Vec<&str> = results.bench.iter().map(|b| b.name.as_str()).collect();
        assert_eq!(names, ["locald-shim", "runc", "crun"], "a malformed line is skipped");
        let table = summary(&results, &expected());
        assert!(table.contains("runc             100.0    20           0.50x"), "{table}");
        assert!(table.contains("crun              40.0    20           1.25x"), "{table}");
        assert!(!summary(&parse(GOOD), &expected()).contains("benchmark"), "no table without bench lines");
    }

    #[test]
    fn a_failing_scenario_fails_the_run() {
        let results = parse(&GOOD.replace("RESULT b PASS", "RESULT b FAIL 1"));
        assert_eq!(verdict(&results, &expected(), CANARY), Err("VM scenarios failed: b".into()));
    }

    #[test]
    fn a_missing_result_a_passing_canary_a_panic_or_a_timeout_fail_the_run() {
        assert!(
            verdict(&parse(&GOOD.replace("LOCALD-VM-RESULT a PASS\r\n", "")), &expected(), CANARY).is_err()
        );
        assert!(
            verdict(&parse(&GOOD.replace("zz-canary FAIL 3", "zz-canary PASS")), &expected(), CANARY)
                .is_err()
        );
        assert!(
            verdict(&parse(&format!("{GOOD}Kernel panic - not syncing\n")), &expected(), CANARY).is_err()
        );
        assert!(
            verdict(
                &parse(&GOOD.replace("LOCALD-VM-DONE", "LOCALD-VM-TIMEOUT after 600s")),
                &expected(),
                CANARY
            )
            .is_err()
        );
        assert!(verdict(&parse(""), &expected(), CANARY).is_err());
    }
}

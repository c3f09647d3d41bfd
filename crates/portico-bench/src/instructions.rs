//! Instructions per request, counted by callgrind: a figure that does not move with what
//! else the machine is doing, for comparisons too close for wall-clock runs to settle.
//!
//! A system runs under `valgrind --tool=callgrind`; after it is ready and warmed up, its
//! counters are zeroed (`callgrind_control -z`), a known number of requests is sent, and
//! the counters are dumped (`callgrind_control -d`). The dump's total, divided by the
//! requests, is what one request costs in user space, in every thread of the process.
//! Kernel work (system calls, the TCP stack) is not counted.

use anyhow::{Context, bail};
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Where one system's callgrind counts go.
pub(crate) struct Callgrind {
    out: PathBuf,
}

impl Callgrind {
    /// Counts for the system `name`, written into `dir`.
    pub(crate) fn new(dir: &Path, name: &str) -> Self {
        Self {
            out: dir.join(format!("callgrind.{}", name.replace('+', "-"))),
        }
    }

    /// The command line that runs a program under callgrind (the program follows).
    pub(crate) fn prefix(&self) -> Vec<OsString> {
        let mut file = OsString::from("--callgrind-out-file=");
        file.push(&self.out);
        vec![
            "valgrind".into(),
            "--tool=callgrind".into(),
            "--dump-instr=no".into(),
            "--dump-line=no".into(),
            file,
        ]
    }

    /// Zeroes the counters of the running process `pid`.
    pub(crate) fn zero(&self, pid: u32) -> anyhow::Result<()> {
        control("-z", pid)
    }

    /// Dumps the counters of `pid` and returns the instructions counted since they were
    /// zeroed.
    pub(crate) fn dump(&self, pid: u32) -> anyhow::Result<u64> {
        control("-d", pid)?;
        // Each dump is written as `FILE.N`; the newest is the one just asked for.
        let dir = self
            .out
            .parent()
            .context("callgrind output has no directory")?;
        let stem = self
            .out
            .file_name()
            .context("callgrind output has no name")?;
        let prefix = format!("{}.", stem.to_string_lossy());
        let newest = std::fs::read_dir(dir)?
            .filter_map(Result::ok)
            .filter_map(|e| {
                let name = e.file_name().to_string_lossy().into_owned();
                let part: u32 = name.strip_prefix(&prefix)?.parse().ok()?;
                Some((part, e.path()))
            })
            .max_by_key(|(part, _)| *part)
            .map(|(_, path)| path)
            .context("callgrind wrote no dump")?;
        let text = std::fs::read_to_string(&newest)
            .with_context(|| format!("reading {}", newest.display()))?;
        total(&text).with_context(|| format!("no totals in {}", newest.display()))
    }
}

fn control(flag: &str, pid: u32) -> anyhow::Result<()> {
    let out = Command::new("callgrind_control")
        .args([flag, &pid.to_string()])
        .output()
        .context("running callgrind_control (valgrind is needed for --instructions)")?;
    if !out.status.success() {
        bail!(
            "callgrind_control {flag} {pid} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

/// The `totals:` (or `summary:`) line of a callgrind dump: the instructions counted.
fn total(dump: &str) -> Option<u64> {
    let line = |key: &str| dump.lines().find_map(|l| l.strip_prefix(key));
    line("totals:")
        .or_else(|| line("summary:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_total_is_read_from_a_dump() {
        let dump = "version: 1\ncreator: callgrind-3.19.0\nevents: Ir\nsummary: 53025582\n\nfn=(1) main\n0 4\ntotals: 53026015\n";
        assert_eq!(total(dump), Some(53026015));
        assert_eq!(total("events: Ir\nsummary: 7\n"), Some(7));
        assert_eq!(total("events: Ir\n"), None);
        assert_eq!(total("totals: lots\n"), None);
    }
}

//! Output: tables, checked figures, the machine line, and the generated blocks of
//! BENCHMARKS.md (and of README.md's benchmark lines).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::{err, Opts, Section, MANIFEST_DIR, MIB, R};

/// A markdown table.
#[derive(Default)]
pub struct Table {
    head: Vec<String>,
    rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new(head: &[&str]) -> Table {
        Table {
            head: head.iter().map(|s| s.to_string()).collect(),
            rows: vec![],
        }
    }
    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }
    pub fn md(&self) -> String {
        let mut s = format!("| {} |\n", self.head.join(" | "));
        s += &format!("|{}\n", " --- |".repeat(self.head.len()));
        for r in &self.rows {
            s += &format!("| {} |\n", r.join(" | "));
        }
        s
    }
}

/// One checked figure: what was measured, the figure, the target and whether it is met
/// (`None`: reported without a target). A section's verdict table and its summary table are
/// both made of these rows, so they always agree.
pub struct Check {
    pub measure: String,
    pub figure: String,
    pub target: String,
    pub met: Option<bool>,
}

impl Check {
    fn verdict(&self) -> &'static str {
        match self.met {
            Some(true) => "**met**",
            Some(false) => "**MISSED**",
            None => "—",
        }
    }
}

/// One section's results: markdown for the terminal and BENCHMARKS.md, its checks, and its
/// sentence for README.md's benchmark lines.
pub struct Out {
    pub section: Section,
    title: String,
    pub md: String,
    pub checks: Vec<Check>,
    /// What README.md says of this section: figures of this run, each with its condition.
    pub headline: Option<String>,
}

impl Out {
    pub fn new(section: Section, title: &str, opts: &Opts) -> Out {
        let command = if opts.quick {
            format!("cargo bench --bench bench -- --quick {}", section.key())
        } else {
            format!("cargo bench --bench bench -- {}", section.key())
        };
        Out {
            section,
            title: title.to_string(),
            md: format!("### {title}\n\nReproduce: `{command}`\n\n"),
            checks: vec![],
            headline: None,
        }
    }
    pub fn para(&mut self, text: impl AsRef<str>) {
        self.md += text.as_ref();
        self.md += "\n\n";
    }
    pub fn table(&mut self, t: &Table) {
        self.md += &t.md();
        self.md += "\n";
    }
    /// A figure checked against its target.
    pub fn check(
        &mut self,
        measure: impl Into<String>,
        figure: impl Into<String>,
        target: impl Into<String>,
        met: bool,
    ) {
        self.checks.push(Check {
            measure: measure.into(),
            figure: figure.into(),
            target: target.into(),
            met: Some(met),
        });
    }
    /// A figure reported beside the checked ones, without a target of its own.
    pub fn report(&mut self, measure: impl Into<String>, figure: impl Into<String>) {
        self.checks.push(Check {
            measure: measure.into(),
            figure: figure.into(),
            target: "— (reported)".into(),
            met: None,
        });
    }
    /// The table of every check: measure, figure, target, verdict.
    fn checks_md(&self) -> String {
        let mut t = Table::new(&["measure", "figure", "target", "verdict"]);
        for c in &self.checks {
            t.row(vec![
                c.measure.clone(),
                c.figure.clone(),
                c.target.clone(),
                c.verdict().into(),
            ]);
        }
        t.md()
    }
    pub fn finish(&mut self) {
        if !self.checks.is_empty() {
            self.md += &self.checks_md();
        }
    }
    /// This section's part of the summary: its checks, from this run (`run` says when, and
    /// at which scale).
    fn summary_md(&self, run: &str) -> String {
        format!(
            "**{}** ({run}; details in its section below)\n\n{}",
            self.title,
            self.checks_md()
        )
    }
}

pub fn secs(d: Duration) -> String {
    format!("{:.2} s", d.as_secs_f64())
}

pub fn mib(bytes: f64) -> String {
    format!("{:.1} MiB", bytes / MIB)
}

/// `kib` KiB as MiB.
pub fn mib_k(kib: u64) -> String {
    mib(kib as f64 * 1024.0)
}

/// Model name, cores, memory, kernel, rustc, load.
pub fn machine() -> String {
    let read = |p: &str| std::fs::read_to_string(p).unwrap_or_default();
    let cpuinfo = read("/proc/cpuinfo");
    let model = cpuinfo
        .lines()
        .find_map(|l| {
            l.strip_prefix("model name")
                .map(|r| r.trim_start_matches([' ', '\t', ':']))
        })
        .unwrap_or("unknown CPU")
        .to_string();
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let mem_kib: u64 = read("/proc/meminfo")
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0);
    let kernel = read("/proc/sys/kernel/osrelease").trim().to_string();
    let rustc = Command::new("rustc")
        .arg("--version")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    let load = read("/proc/loadavg")
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ");
    format!(
        "{model}, {cores} cores available, {:.1} GiB RAM, Linux {kernel}, {rustc}; load average at start {load} (shared machine: other jobs run beside the benchmark)",
        mem_kib as f64 / 1024.0 / 1024.0
    )
}

/// Replaces (or appends) the block between `<!-- BEGIN key … -->` and `<!-- END key -->`.
pub fn replace_block(doc: &str, key: &str, body: &str) -> String {
    let (begin, end) = (
        format!("<!-- BEGIN {key} (generated by cargo bench --bench bench) -->"),
        format!("<!-- END {key} -->"),
    );
    let block = format!("{begin}\n{}\n{end}", body.trim_end());
    match (doc.find(&begin), doc.find(&end)) {
        (Some(a), Some(b)) if a < b => format!("{}{block}{}", &doc[..a], &doc[b + end.len()..]),
        _ => format!("{}\n\n{block}\n", doc.trim_end()),
    }
}

/// README.md's benchmark lines from this run's sections, each figure with its condition;
/// `None` when no section has one.
pub fn readme_snippet(outs: &[Out], started: &str, opts: &Opts) -> Option<String> {
    let lines: Vec<&str> = outs.iter().filter_map(|o| o.headline.as_deref()).collect();
    if lines.is_empty() {
        return None;
    }
    let scale = if opts.quick { ", quick scale" } else { "" };
    Some(format!(
        "Figures of the run of {started}{scale} (simulator on this machine; see \
         [`BENCHMARKS.md`](BENCHMARKS.md)):\n\n{}",
        lines
            .iter()
            .map(|l| format!("- {l}"))
            .collect::<Vec<_>>()
            .join("\n")
    ))
}

/// Writes the generated blocks of this run (machine, each section's results and its summary
/// table) into BENCHMARKS.md, or into `--out` (starting from that file if it exists, else
/// from BENCHMARKS.md). A full run written into BENCHMARKS.md also rewrites README.md's
/// benchmark lines.
pub fn write_benchmarks(outs: &[Out], machine: &str, started: &str, opts: &Opts) -> R<PathBuf> {
    let benchmarks = Path::new(MANIFEST_DIR).join("BENCHMARKS.md");
    let path = opts
        .out
        .as_deref()
        .map_or_else(|| benchmarks.clone(), Path::to_path_buf);
    let mut doc = std::fs::read_to_string(&path)
        .or_else(|_| std::fs::read_to_string(&benchmarks))
        .unwrap_or_else(|_| "# Benchmarks\n\nGenerated by `cargo bench --bench bench`.\n".into());
    let full = !opts.quick && opts.sections.len() == Section::ALL.len();
    let run = if opts.quick {
        format!("run {started}, quick scale")
    } else {
        format!("run {started}")
    };
    let sections: Vec<&str> = opts.sections.iter().map(|s| s.key()).collect();
    let last = if full {
        format!("Last full run: {started}.")
    } else {
        format!(
            "Last run: {started} ({}).",
            sections.join(", ") + if opts.quick { ", quick scale" } else { "" }
        )
    };
    doc = replace_block(&doc, "machine", &format!("Machine: {machine}.\n\n{last}"));
    for o in outs {
        doc = replace_block(
            &doc,
            &format!("summary-{}", o.section.key()),
            &o.summary_md(&run),
        );
        doc = replace_block(&doc, o.section.key(), &o.md);
    }
    std::fs::write(&path, doc).map_err(err)?;
    if full && opts.out.is_none() && outs.len() == Section::ALL.len() {
        if let Some(snippet) = readme_snippet(outs, started, opts) {
            let readme = Path::new(MANIFEST_DIR).join("README.md");
            let text = std::fs::read_to_string(&readme).map_err(err)?;
            std::fs::write(&readme, replace_block(&text, "readme", &snippet)).map_err(err)?;
        }
    }
    Ok(path)
}
